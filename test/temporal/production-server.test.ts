/**
 * govloop on a production-shaped Temporal (issue 13, decision 0029): temporal-server v1.29.1 on
 * PostgreSQL (runtime/temporal-server.ts), not the dev server, and two `govloop worker` processes
 * polling the same task queues, as a deployment scales out. One of them is killed with SIGKILL
 * while it holds every task; the other finishes them all, and each GPU-second is charged exactly
 * once. Skipped, with the reason printed, where the temporal-server binaries are absent (build them
 * with test/temporal/build-temporal-server.sh).
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { Db } from '../../ledger/db';
import { taskUsage } from '../../ledger/usage';
import { type TemporalServer, startTemporalServer, temporalServerSkipReason } from '../../runtime/temporal-server';
import { GovloopClient } from '../../sdk';
import { clusterTaskQueue } from '../../workflows/messages';
import { intent } from '../support/harness';
import { type LedgerTask, type WorkerProcess, describeTasks, ledgerTasks, startWorkerProcess, waitFor } from '../support/worker-process';

const skipReason = temporalServerSkipReason();
if (skipReason) console.warn(`[production-server.test] skipped: ${skipReason}`);

const suffix = randomUUID().slice(0, 8);
const tenant = `t-prod-${suffix}`;
const taskQueue = `govloop-control-prod-${suffix}`;
const cluster = `sim-prod-${suffix}`;
const TASKS = 6;
/**
 * As in test/e2e/worker-restart.test.ts: the first worker runs the simulation at real time, so no
 * job can end before the kill (6000 simulated seconds take 100 minutes there) however loaded the
 * machine is; the second runs it SPEEDUP times faster, so the jobs end in seconds once it holds them.
 */
const DURATION_S = 6000;
const SPEEDUP = 600;

describe.skipIf(!!skipReason)('production-shaped Temporal (temporal-server on PostgreSQL), two worker processes', () => {
  let server: TemporalServer;
  let dataDir: string;
  let db: Db;
  let connection: Connection;
  let gov: GovloopClient;

  const worker = (speedup: number): WorkerProcess =>
    startWorkerProcess({
      taskQueue,
      cluster,
      temporalAddress: server.address,
      databaseUrl: inject('databaseUrl'),
      speedup,
      env: { TEMPORAL_NAMESPACE: server.namespace },
    });

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'govloop-temporal-server-'));
    server = await startTemporalServer({ dataDir });
    db = new Db(inject('databaseUrl'), 4);
    connection = await Connection.connect({ address: server.address });
    gov = new GovloopClient(new Client({ connection, namespace: server.namespace }), taskQueue);
  });

  afterAll(async () => {
    await connection?.close();
    await db?.close();
    await server?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('runs on PostgreSQL: the server is temporal-server, not the dev server, and its namespace has govloop search attributes', async () => {
    const info = await connection.workflowService.getSystemInfo({});
    expect(info.serverVersion).toBe('1.29.1');
    const sas = await connection.operatorService.listSearchAttributes({ namespace: server.namespace });
    expect(Object.keys(sas.customAttributes ?? {})).toEqual(expect.arrayContaining(['GovTenant', 'GovState', 'GovCostUsd', 'ProgramDay', 'ProgramBlocked']));
    // Its state is in the PostgreSQL databases it was given: the namespace is a row there.
    const url = new URL(inject('databaseUrl'));
    url.pathname = `/${server.databases.persistence}`;
    const persistence = new Db(url.toString(), 1);
    try {
      const { rows } = await persistence.query<{ name: string }>('SELECT name FROM namespaces');
      expect(rows.map((r) => r.name)).toContain(server.namespace);
    } finally {
      await persistence.close();
    }
  });

  it('finishes every task on the surviving worker after the other is SIGKILLed, and charges each GPU-second exactly once', async () => {
    await setBudget(db, { tenant }, 'month', 1000, 'test');
    const slow = worker(1);
    let fast: WorkerProcess | undefined;
    const ids: string[] = [];
    try {
      await slow.ready;
      for (let i = 0; i < TASKS; i++) {
        const a = await gov.submit(
          intent(tenant, {
            name: `prod-${i}`,
            attribution: { tenant, team: `team-${i}`, project: 'p', model: 'llama-3-8b', useCase: 'u' },
            resources: { gpus: 2, gpuType: i % 2 ? 'A100' : 'H100', sharing: 'exclusive' },
            simulation: { durationSeconds: DURATION_S, tokensPerSecond: 7 },
          }),
          { requester: 'test' },
        );
        expect(a.decision).toBe('admitted');
        ids.push(a.taskId);
      }
      let seen: LedgerTask[] = [];
      await waitFor(
        'every job running and metered',
        async () => {
          seen = await ledgerTasks(db, cluster, ids);
          return seen.length === ids.length && seen.every((t) => t.state === 'Running' && t.jobs === 1 && t.jobPhase === 'Running' && t.gpuSeconds > 0)
            ? true
            : undefined;
        },
        240_000,
        () => describeTasks(seen),
      );
      // The second worker process joins the same queues; both poll them before the first is killed.
      fast = worker(SPEEDUP);
      await fast.ready;
      const pollers = async (queue: string, taskQueueType: number) =>
        new Set(
          ((await connection.workflowService.describeTaskQueue({ namespace: server.namespace, taskQueue: { name: queue }, taskQueueType })).pollers ?? []).map(
            (p) => p.identity,
          ),
        );
      let polling = '';
      await waitFor(
        'both worker processes polling the control (workflow + activity) and dispatch queues',
        async () => {
          const sets = [await pollers(taskQueue, 1), await pollers(taskQueue, 2), await pollers(clusterTaskQueue(cluster), 2)];
          polling = sets.map((s) => [...s].join(',')).join(' | ');
          return sets.every((s) => [slow, fast!].every((w) => [...s].some((id) => id?.startsWith(`${w.child.pid}@`)))) ? true : undefined;
        },
        60_000,
        () => polling,
      );
      await slow.kill();
      const atKill = await ledgerTasks(db, cluster, ids);
      expect(
        atKill.map((t) => t.state),
        describeTasks(atKill),
      ).toEqual(ids.map(() => 'Running'));

      const results = await Promise.all(ids.map((id) => gov.result(id)));
      for (const [i, r] of results.entries()) {
        expect(r.state, `${ids[i]}: ${JSON.stringify(r.reasons)}`).toBe('Succeeded');
        const usage = await taskUsage(db, ids[i]!);
        expect(usage.gpuSeconds).toBe(2 * DURATION_S);
        expect(usage.tokensProcessed).toBe(7 * DURATION_S);
        const price = i % 2 ? 2 : 4;
        expect(usage.costMicros).toBe(Math.round(2 * (DURATION_S / 3600) * price * 1e6));
        expect(r.costUsd).toBeCloseTo(usage.costMicros / 1e6, 6);
      }
      const after = await ledgerTasks(db, cluster, ids);
      expect(after.map((t) => t.jobs)).toEqual(ids.map(() => 1));
      const [budget] = await showBudgets(db, { tenant }, new Date());
      const total = (await Promise.all(ids.map((id) => taskUsage(db, id)))).reduce((s, u) => s + u.costMicros, 0);
      expect(budget!.spentUsd).toBeCloseTo(total / 1e6, 6);
      expect(budget!.reservedUsd).toBe(0);
      // The survivor is still up: it was not restarted, it took the work over.
      expect(fast.child.exitCode).toBeNull();
      // Visibility on PostgreSQL: the tenant's tasks are listed by their search attribute, all closed.
      let listed = 0;
      await waitFor(
        'the tasks listed as completed by GovTenant',
        async () => {
          const r = await connection.workflowService.countWorkflowExecutions({
            namespace: server.namespace,
            query: `GovTenant = '${tenant}' AND ExecutionStatus = 'Completed'`,
          });
          listed = Number(r.count);
          return listed === TASKS ? true : undefined;
        },
        30_000,
        () => `${listed} listed`,
      );
    } finally {
      await slow.stop();
      await fast?.stop();
    }
  }, 480_000);
});
