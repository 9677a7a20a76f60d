import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, type Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { inject } from 'vitest';
import { type GovConfig, loadConfig } from '../../config/load';
import { ClusterNode } from '../../config/schema';
import { SimulatedCluster } from '../../cluster/simulated/backend';
import { Db } from '../../ledger/db';
import type { IntentInput } from '../../governance/intent';
import { Intent } from '../../governance/intent';
import { createWorkers } from '../../workers/worker';
import { governedTask } from '../../workflows';
import { type TaskStatus, statusQuery } from '../../workflows/messages';

/** A fast config: simulated jobs run 2000x real time and are observed every 100 ms. */
export function testConfig(overrides: Partial<GovConfig['simulation']> = {}): GovConfig {
  const config = loadConfig();
  config.simulation = { ...config.simulation, speedup: 2000, pollMillis: 100, queueRetryMillis: 200, ...overrides };
  return config;
}

export interface Harness {
  db: Db;
  client: Client;
  connection: NativeConnection;
  config: GovConfig;
  backend: SimulatedCluster;
  controlQueue: string;
  dispatchQueue: string;
  workers: Worker[];
  /** A tenant name unique to this harness, so budgets and quotas of different files never meet. */
  tenant: string;
  startWorkers(): Promise<void>;
  stopWorkers(): Promise<void>;
  submit(intent: IntentInput, opts?: { taskId?: string; requester?: string }): Promise<{ taskId: string; result: () => Promise<TaskStatus> }>;
  /** The task's status query. */
  status(taskId: string): Promise<TaskStatus>;
  /** Polls the status query until `ok` holds; fails naming the state and reasons it saw last. */
  until(taskId: string, ok: (s: TaskStatus) => boolean, timeoutMs?: number): Promise<TaskStatus>;
  close(): Promise<void>;
}

let runtimeInstalled = false;

export async function createHarness(opts: { bundle: WorkflowBundleWithSourceMap; config?: GovConfig; clusterName?: string }): Promise<Harness> {
  if (!runtimeInstalled) {
    // Worker lifecycle chatter off; warnings and errors still show.
    Runtime.install({ logger: new DefaultLogger('WARN') });
    runtimeInstalled = true;
  }
  const suffix = randomUUID().slice(0, 8);
  const config = opts.config ?? testConfig();
  // Each harness gets its own simulated cluster, so tests never compete for GPUs.
  config.cluster = { ...config.cluster, name: opts.clusterName ?? `sim-${suffix}` };
  const db = new Db(inject('databaseUrl'), 10);
  const backend = new SimulatedCluster(db, config.cluster, config.simulation.speedup);
  await backend.sync();
  const address = inject('temporalAddress');
  const connection = await NativeConnection.connect({ address });
  const clientConnection = await Connection.connect({ address });
  const client = new Client({ connection: clientConnection, namespace: 'default' });
  const controlQueue = `govloop-control-${suffix}`;
  const dispatchQueue = `govloop-cluster-${config.cluster.name}`;
  // run() resolves only after the worker has released the connection; closing before that throws.
  let running: Promise<void>[] = [];
  const h: Harness = {
    db,
    client,
    connection,
    config,
    backend,
    controlQueue,
    dispatchQueue,
    workers: [],
    tenant: `t-${suffix}`,
    async startWorkers() {
      h.workers = await createWorkers({ connection, namespace: 'default', db, config, backend: h.backend, controlQueue, dispatchQueue, bundle: opts.bundle });
      running = h.workers.map((w) => w.run().catch(() => undefined));
    },
    async stopWorkers() {
      for (const w of h.workers) if (w.getState() === 'RUNNING') w.shutdown();
      await Promise.all(running);
      running = [];
      h.workers = [];
    },
    async submit(input, o = {}) {
      const intent = Intent.parse(input);
      const taskId = o.taskId ?? `${intent.name}-${randomUUID().slice(0, 8)}`;
      const handle = await client.workflow.start(governedTask, {
        taskQueue: controlQueue,
        workflowId: taskId,
        args: [{ taskId, intent, requester: o.requester ?? 'test' }],
      });
      return { taskId, result: () => handle.result() };
    },
    status: (taskId) => client.workflow.getHandle(taskId).query(statusQuery),
    async until(taskId, ok, timeoutMs = 30_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const s = await h.status(taskId);
        if (ok(s)) return s;
        if (Date.now() > end) throw new Error(`${taskId} did not get there: ${JSON.stringify({ state: s.state, reasons: s.reasons })}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async close() {
      await h.stopWorkers();
      await clientConnection.close();
      await connection.close();
      await db.close();
    },
  };
  return h;
}

/**
 * A harness for quota and preemption tests: a cluster of just `nodes`, a 200 ms preemption grace,
 * and teams a and b of the harness's tenant in one H100 cohort with `nominal` GPUs each (no
 * borrowing or lending limits). Workers are started; `more` may add quotas first.
 */
export async function cohortHarness(
  bundle: WorkflowBundleWithSourceMap,
  nodes: Record<string, unknown>[],
  nominal: number,
  more: (h: Harness) => void = () => {},
): Promise<Harness> {
  const config = testConfig();
  config.cluster = { ...config.cluster, nodes: nodes.map((n) => ClusterNode.parse(n)) };
  config.policies.preemption = { graceMillis: 200, minRunSeconds: 0 };
  const h = await createHarness({ bundle, config });
  h.config.policies.cohorts = [
    {
      name: `cohort-${h.tenant}`,
      gpuType: 'H100',
      teams: ['a', 'b'].map((team) => ({ tenant: h.tenant, team, nominal, borrowingLimit: null, lendingLimit: null, weight: 1 })),
    },
  ];
  more(h);
  await h.startWorkers();
  return h;
}

/** An intent with everything required filled in; override what the test is about. */
export function intent(tenant: string, over: Partial<IntentInput> = {}): IntentInput {
  return {
    kind: 'training',
    name: 'job',
    attribution: { tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' },
    caps: { maxUsd: 100, maxGpuHours: 10 },
    priority: 'normal',
    riskClass: 'low',
    resources: { gpus: 2, gpuType: 'H100', sharing: 'exclusive' },
    simulation: { durationSeconds: 600, tokensPerSecond: 100 },
    ...over,
  };
}
