/**
 * End to end through a real Temporal dev server and a real ledger: what a governed task costs
 * when every admission, reservation, step and settlement is a workflow task, an activity and a
 * ledger transaction.
 *
 *   (a) hosted agent tasks: N tasks, C at a time, each submitted, admitted, K steps through the
 *       `step` update (the step gate), `finish`, and the result awaited;
 *   (b) the step gate's round trip (update sent → answer back) from those steps;
 *   (c) a batch of short simulated GPU training jobs: admission, reservation, dispatch to the
 *       simulated cluster, observation until done, settlement.
 *
 *   npm run bench:e2e -- [--tasks 80] [--concurrency 8] [--steps 5] [--cluster-tasks 48]
 *                        [--database-url postgresql://…] [--json]
 *                        [--temporal dev|production] [--workers N] [--side-by-side]
 *                        [--kueue-tasks 15000] [--kueue-submitters 32] [--kueue-teams 20] [--kueue-sim-seconds 60]
 *
 *   (d) with --kueue-tasks N: the Kueue-shaped case (bench/e2e-kueue.ts), N small 1-GPU cluster
 *       tasks submitted at once, admitted per second, with no work lost.
 *
 * Ledger: DATABASE_URL / --database-url (a real PostgreSQL; the bench writes rows there under a
 * tenant and a simulated cluster of its own), else an embedded PGlite in a temp dir. The Temporal
 * dev server always runs headless in a temp dir; `--temporal production` runs temporal-server
 * v1.29.1 on PostgreSQL instead (bench/e2e-temporal.ts), `--workers N` runs N `govloop worker`
 * processes instead of the in-process workers, and `--side-by-side` runs dev/1, production/1 and
 * production/2 one after the other and prints them next to each other. Everything is stopped and
 * removed at the end.
 */
import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection, WithStartWorkflowOperation } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time';
import { DefaultLogger, NativeConnection, Runtime, type Worker } from '@temporalio/worker';
import { SimulatedCluster } from '../cluster/simulated/backend';
import { type GovConfig, loadConfig } from '../config/load';
import { Intent, type IntentInput } from '../governance/intent';
import { setBudget } from '../ledger/budgets';
import { Db } from '../ledger/db';
import { type EmbeddedLedger, startEmbeddedLedger } from '../ledger/embedded';
import { migrate } from '../ledger/migrate';
import type { DevServerTuning } from '../runtime/dev-server';
import { findTemporalCli } from '../runtime/temporal-cli';
import { GovloopClient } from '../sdk';
import { bundleWorkflows, createWorkers } from '../workers/worker';
import { governedTask } from '../workflows';
import {
  type StepAnswer,
  type TaskStatus,
  admissionUpdate,
  admissionWithRequestUpdate,
  clusterTaskQueue,
  finishSignal,
  stepUpdate,
} from '../workflows/messages';
import { type KueueReport, runKueueCase } from './e2e-kueue';
import { type TemporalKind, sideBySide, startBenchTemporal, startBenchWorkers } from './e2e-temporal';
import {
  type CpuSnapshot,
  type Summary,
  cpuPer,
  cpuSnapshot,
  descendants,
  describeMachine,
  fmt,
  machine,
  nowMs,
  parseFlags,
  round,
  summarize,
  table,
  threadCpu,
  busiestThreads,
} from './lib';

const usage = `usage: tsx bench/e2e.ts [--tasks N] [--concurrency C] [--steps K] [--cluster-tasks M] [--sim-seconds S]
                         [--database-url URL] [--ledger-pool P] [--timeout-seconds T] [--dev-server tuned|default] [--json]
                         [--temporal dev|production] [--workers N] [--side-by-side]
                         [--kueue-tasks N] [--kueue-submitters S] [--kueue-teams T] [--kueue-sim-seconds S]
  --tasks            hosted agent tasks (default 80)
  --concurrency      agent tasks in flight at once (default 8)
  --steps            step-gate updates per agent task, at most 150 (default 5)
  --cluster-tasks    simulated 1-GPU training jobs, all submitted at once (default 48)
  --sim-seconds      simulated duration of each training job; the simulation runs 3600x (default 1800)
  --database-url     a PostgreSQL ledger (default: $DATABASE_URL, else an embedded PGlite)
  --ledger-pool      connections in the workers' ledger pool (default 10, as govloop dev uses)
  --timeout-seconds  give up on a phase after this long (default 300)
  --dev-server       tuned (WAL, synchronous=NORMAL, eager activities: what govloop dev runs) or default (the CLI's own); default tuned
  --temporal         dev (the dev server, SQLite) or production (temporal-server v1.29.1 on PostgreSQL; build it with
                     test/temporal/build-temporal-server.sh); default dev
  --workers          N \`govloop worker\` processes on the bench's queues (default: the workers run in this process)
  --side-by-side     run dev/1 worker process, production/1 and production/2 one after the other, side by side
  --kueue-tasks      the Kueue-shaped case: N small 1-GPU cluster tasks submitted at once (default 0: skipped; Kueue's baseline is 15000)
  --kueue-submitters client lanes starting them (default 32)
  --kueue-teams      teams they are spread over, each with its GPU quota of each type (default 20: 320 GPUs, the simulated cluster's size)
  --kueue-sim-seconds simulated duration of each (default 60, 17 ms at 3600x)
  --gate             sync (each step one update to the task, the synchronous gate), leased (the SDK's leased gate: steps
                     decided in process, reported in one batch when the gate closes; decision 0030) or leased-at-submit
                     (the same, its first lease granted with the admission, as submit({leasedSteps}) asks); default sync
  --finish           signal (after the last step, the finish signal, as before) or last-step (the last step carries finish:
                     the task finishes in the same round trip; with --gate leased, the closing report does); default signal
  --think-ms         each agent's model call between two steps, simulated as a wait of this many ms (default 0: the
                     next step is sent at once, and the gate is measured with the cores saturated)
  --workflow-threads the control worker's workflow threads (default: the SDK's, 1 with its reused V8 context)
  --workflow-cache   workflows the control worker keeps cached (default: the SDK's, from the heap size)
  --submit           with-start (start + admission in one update-with-start, as the SDK submits) or two-calls (start, then the update); default with-start
  --show-history     print the event sequence of one agent task's and one training job's history (where the hops are)
  --json             print one JSON object instead of tables`;

const SPEEDUP = 3600;
const POLL_MILLIS = 100;

interface AgentRun {
  workflowId: string;
  ok: boolean;
  error: string | null;
  admissionMs: number;
  stepMs: number[];
  totalMs: number;
}

interface ClusterRun {
  workflowId: string;
  ok: boolean;
  error: string | null;
  state: string;
  totalMs: number;
  gpuSeconds: number;
  costUsd: number;
}

/** Runs `work(i)` for i in 0..n-1, at most `concurrency` at a time. */
async function pool<T>(n: number, concurrency: number, work: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array<T>(n);
  let next = 0;
  const lanes = Array.from({ length: Math.min(n, concurrency) }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = await work(i);
    }
  });
  await Promise.all(lanes);
  return out;
}

function withTimeout<T>(p: Promise<T>, seconds: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${seconds} s (--timeout-seconds)`)), seconds * 1000);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Where a step's time goes, from the server's own event times in the workflow histories. */
interface StepBreakdown {
  /** Update accepted → update completed, as the server recorded it. */
  updateMs: number[];
  /** gateStep activity scheduled → picked up by the worker (task-queue wait). */
  activityQueueMs: number[];
  /** gateStep activity started → completed (the gate and its ledger transaction). */
  activityRunMs: number[];
}

async function stepBreakdown(client: Client, workflowIds: string[]): Promise<StepBreakdown> {
  const out: StepBreakdown = { updateMs: [], activityQueueMs: [], activityRunMs: [] };
  for (const id of workflowIds) {
    const history = await client.workflow.getHandle(id).fetchHistory();
    const at = new Map<number, number>();
    const scheduledGate = new Set<number>();
    const startedAt = new Map<number, number>();
    const stepUpdates = new Set<number>();
    for (const e of history.events ?? []) {
      const eventId = Number(e.eventId);
      const t = tsToMs(e.eventTime);
      at.set(eventId, t);
      if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'gateStep') scheduledGate.add(eventId);
      const started = e.activityTaskStartedEventAttributes;
      if (started && scheduledGate.has(Number(started.scheduledEventId))) {
        startedAt.set(Number(started.scheduledEventId), t);
        out.activityQueueMs.push(t - at.get(Number(started.scheduledEventId))!);
      }
      const completed = e.activityTaskCompletedEventAttributes;
      if (completed && startedAt.has(Number(completed.scheduledEventId))) out.activityRunMs.push(t - startedAt.get(Number(completed.scheduledEventId))!);
      if (e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name === 'step') stepUpdates.add(eventId);
      const done = e.workflowExecutionUpdateCompletedEventAttributes;
      if (done && stepUpdates.has(Number(done.acceptedEventId))) out.updateMs.push(t - at.get(Number(done.acceptedEventId))!);
    }
  }
  return out;
}

/** Retries and timeouts Temporal absorbed, and where the slowest task spent its longest wait. */
interface Trouble {
  workflowTaskTimeouts: number;
  workflowTaskFailures: number;
  activityTimeouts: number;
  activityFailures: number;
  /** Activity attempts after the first (a retry of a failed or timed-out attempt). */
  activityRetries: number;
  /** Per task: workflow tasks completed (each one a worker activation and a server round trip). */
  workflowTasks: Summary;
  /** Per task: events in its history (its latest run). */
  historyEvents: Summary;
  /** Per task: activities scheduled through the server's queues (local activities are not among them). */
  activitiesScheduled: Summary;
  /** Per task: local activities run (each one recorded as a marker). */
  localActivities: Summary;
  slowest: { workflowId: string; ms: number; longestGapMs: number; gapFrom: string; gapTo: string } | null;
}

const eventName = (e: object): string => {
  const key = Object.keys(e).find((k) => k.endsWith('EventAttributes') && (e as Record<string, unknown>)[k] != null);
  return key ? key.replace(/EventAttributes$/, '') : '?';
};

async function historyTrouble(client: Client, runs: { workflowId: string; totalMs: number }[]): Promise<Trouble> {
  const none = summarize([], 1);
  const t: Trouble = {
    workflowTaskTimeouts: 0,
    workflowTaskFailures: 0,
    activityTimeouts: 0,
    activityFailures: 0,
    activityRetries: 0,
    workflowTasks: none,
    historyEvents: none,
    activitiesScheduled: none,
    localActivities: none,
    slowest: null,
  };
  const perTask = { workflowTasks: [] as number[], historyEvents: [] as number[], activitiesScheduled: [] as number[], localActivities: [] as number[] };
  const slowest = runs.reduce<{ workflowId: string; totalMs: number } | null>((a, r) => (a === null || r.totalMs > a.totalMs ? r : a), null);
  for (const r of runs) {
    const events = (await client.workflow.getHandle(r.workflowId).fetchHistory()).events ?? [];
    let prev: { at: number; name: string } | null = null;
    let gap = { ms: -1, from: '', to: '' };
    let wfts = 0;
    let scheduled = 0;
    let locals = 0;
    for (const e of events) {
      if (e.workflowTaskCompletedEventAttributes) wfts++;
      if (e.activityTaskScheduledEventAttributes) scheduled++;
      if (e.markerRecordedEventAttributes?.markerName === 'core_local_activity') locals++;
      if (e.workflowTaskTimedOutEventAttributes) t.workflowTaskTimeouts++;
      if (e.workflowTaskFailedEventAttributes) t.workflowTaskFailures++;
      if (e.activityTaskTimedOutEventAttributes) t.activityTimeouts++;
      if (e.activityTaskFailedEventAttributes) t.activityFailures++;
      if ((e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1) t.activityRetries++;
      const at = tsToMs(e.eventTime);
      const name = eventName(e);
      if (prev && at - prev.at > gap.ms) gap = { ms: at - prev.at, from: prev.name, to: name };
      prev = { at, name };
    }
    perTask.workflowTasks.push(wfts);
    perTask.historyEvents.push(events.length);
    perTask.activitiesScheduled.push(scheduled);
    perTask.localActivities.push(locals);
    if (r === slowest) t.slowest = { workflowId: r.workflowId, ms: Math.round(r.totalMs), longestGapMs: Math.round(gap.ms), gapFrom: gap.from, gapTo: gap.to };
  }
  t.workflowTasks = summarize(perTask.workflowTasks, 0);
  t.historyEvents = summarize(perTask.historyEvents, 0);
  t.activitiesScheduled = summarize(perTask.activitiesScheduled, 0);
  t.localActivities = summarize(perTask.localActivities, 0);
  return t;
}

const errText = (err: unknown) => {
  const e = err as { message?: string; cause?: { message?: string } };
  return [e.message, e.cause?.message].filter(Boolean).join(': ') || String(err);
};

async function main() {
  const flags = parseFlags(
    {
      tasks: 80,
      concurrency: 8,
      steps: 5,
      'cluster-tasks': 48,
      'sim-seconds': 1800,
      'database-url': undefined as string | undefined,
      'ledger-pool': 10,
      'timeout-seconds': 300,
      'dev-server': 'tuned',
      temporal: 'dev',
      workers: undefined as string | undefined,
      'side-by-side': false,
      'show-history': false,
      submit: 'with-start',
      gate: 'sync',
      finish: 'signal',
      'kueue-tasks': 0,
      'kueue-submitters': 32,
      'kueue-teams': 20,
      'kueue-sim-seconds': 60,
      'workflow-threads': undefined as string | undefined,
      'workflow-cache': undefined as string | undefined,
      'think-ms': 0,
      json: false,
    },
    usage,
  );
  const tasks = Math.round(flags.tasks);
  const concurrency = Math.round(flags.concurrency);
  const steps = Math.round(flags.steps);
  const clusterTasks = Math.round(flags['cluster-tasks']);
  const timeoutS = flags['timeout-seconds'];
  if (flags['side-by-side']) return sideBySide(process.argv[1]!, process.argv.slice(2), flags.json);
  const temporalKind = flags.temporal as TemporalKind;
  if (temporalKind !== 'dev' && temporalKind !== 'production') throw new Error('--temporal is dev or production');
  const workerProcesses = flags.workers === undefined ? 0 : Number(flags.workers);
  if (flags.workers !== undefined && !(Number.isInteger(workerProcesses) && workerProcesses > 0))
    throw new Error(`--workers must be a whole number of processes, at least 1, got "${flags.workers}"`);
  const submitMode = flags.submit;
  if (submitMode !== 'with-start' && submitMode !== 'two-calls') throw new Error('--submit is with-start or two-calls');
  const gateMode = flags.gate;
  if (gateMode !== 'sync' && gateMode !== 'leased' && gateMode !== 'leased-at-submit') throw new Error('--gate is sync, leased or leased-at-submit');
  if (gateMode === 'leased-at-submit' && flags.submit !== 'with-start') throw new Error('--gate leased-at-submit goes with --submit with-start');
  const finishMode = flags.finish;
  if (finishMode !== 'signal' && finishMode !== 'last-step') throw new Error('--finish is signal or last-step');
  const wholeFlag = (name: string, v: string | undefined, min: number) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be a whole number ≥ ${min}, got "${v}"`);
    return n;
  };
  const tuning = {
    workflowThreads: wholeFlag('workflow-threads', flags['workflow-threads'], 1),
    maxCachedWorkflows: wholeFlag('workflow-cache', flags['workflow-cache'], 2),
  };
  if (workerProcesses > 0 && (tuning.workflowThreads !== undefined || tuning.maxCachedWorkflows !== undefined))
    throw new Error('--workflow-threads and --workflow-cache tune the in-process workers; leave out --workers');
  const thinkMs = flags['think-ms'];
  if (!(thinkMs >= 0)) throw new Error('--think-ms is a number of milliseconds ≥ 0');
  const devServerTuning = flags['dev-server'] as DevServerTuning;
  if (devServerTuning !== 'tuned' && devServerTuning !== 'default') throw new Error('--dev-server is tuned or default');
  if (steps > 150) throw new Error('--steps is at most 150 (the agent maxSteps ceiling in config/policies.yaml is 200)');
  const m = machine();
  const log = (msg: string) => {
    if (!flags.json) console.log(msg);
  };
  log(`machine:    ${describeMachine(m)}`);

  const suffix = randomUUID().slice(0, 8);
  const tenant = `bench-${suffix}`;
  const dataDir = mkdtempSync(join(tmpdir(), 'govloop-bench-'));
  const databaseUrl = flags['database-url'] ?? process.env.DATABASE_URL;
  const cleanups: { what: string; run: () => Promise<void> }[] = [];
  const setup: Record<string, number> = {};
  /** "activityType: error message" → attempts that failed (and were retried). */
  const activityFailures = new Map<string, number>();
  const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    const t0 = nowMs();
    const r = await fn();
    setup[what] = Math.round(nowMs() - t0);
    return r;
  };

  // Every client call of a task runs under this signal: a phase that times out aborts its calls
  // before the connection closes under them.
  const abort = new AbortController();
  setMaxListeners(0, abort.signal);
  let failuresShown = false;
  const showActivityFailures = (print: (line: string) => void) => {
    if (failuresShown || activityFailures.size === 0) return;
    failuresShown = true;
    print('\nactivity attempts that failed and were retried (should be none):');
    for (const [k, n] of activityFailures) print(`  ${n} x ${k}`);
  };
  let cleaning: Promise<void> | null = null;
  const cleanup = () =>
    (cleaning ??= (async () => {
      abort.abort();
      showActivityFailures((l) => console.error(l));
      for (const c of cleanups.reverse()) {
        try {
          await c.run();
        } catch (err) {
          console.error(`cleanup: ${c.what}: ${errText(err)}`);
        }
      }
      rmSync(dataDir, { recursive: true, force: true });
    })());
  const onSignal = (sig: NodeJS.Signals) => {
    console.error(`\n${sig}: stopping workers, server and ledger ...`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    // Worker lifecycle chatter off. A failed activity attempt (Temporal retries it) is counted and
    // summarized at the end instead of printing its stack; other warnings and errors still show.
    Runtime.install({
      logger: new DefaultLogger('WARN', (entry) => {
        const meta = entry.meta as { activityType?: string; error?: { message?: string }; taskQueue?: string } | undefined;
        if (entry.message === 'Activity failed') {
          const key = `${meta?.activityType ?? '?'}: ${meta?.error?.message ?? '?'}`;
          activityFailures.set(key, (activityFailures.get(key) ?? 0) + 1);
        } else if (!entry.message.startsWith('No workflows registered')) {
          console.error(`[${entry.level}] ${entry.message}`, meta ?? '');
        }
      }),
      // The Rust core's warnings (a slow workflow task, TMPRL1104) through the logger above, to
      // stderr: printed by the core itself they went to stdout, into --json's output.
      telemetryOptions: { logging: { filter: { core: 'WARN', other: 'WARN' }, forward: {} } },
    });
    // The dev server is the temporal CLI; the production server needs none (found only to report it).
    const cli = temporalKind === 'dev' ? findTemporalCli({ onProgress: log }) : findTemporalCli({ build: false });
    if (!cli && temporalKind === 'dev') throw new Error('no temporal CLI: set TEMPORAL_CLI, put `temporal` on PATH, or install Go (see README)');

    // Ledger first (the dev server takes a while; the ledger is quick).
    let ledger: EmbeddedLedger | undefined;
    let url = databaseUrl;
    if (!url) {
      ledger = await timed('ledgerStartMs', () => startEmbeddedLedger({ dataDir: join(dataDir, 'ledger') }));
      cleanups.push({ what: 'embedded ledger', run: () => ledger!.stop() });
      url = ledger.url;
    }
    // 10 connections, as govloop dev and govloop worker use. On the embedded ledger this is also
    // a concurrency check of ledger/embedded.ts: many connections share one PGlite session there.
    const ledgerPool = Math.round(flags['ledger-pool']);
    const db = new Db(url, ledgerPool);
    cleanups.push({ what: 'ledger pool', run: () => db.close() });
    await timed('migrateMs', () => migrate(db));

    const server = await timed('temporalStartMs', () => startBenchTemporal(temporalKind, { dataDir, tuning: devServerTuning, log }));
    cleanups.push({ what: server.describe, run: () => server.stop() });

    const config: GovConfig = loadConfig();
    config.simulation = { ...config.simulation, speedup: SPEEDUP, pollMillis: POLL_MILLIS, queueRetryMillis: 200 };
    // A simulated cluster of the bench's own: its GPUs are not shared with anything else in the ledger.
    config.cluster = { ...config.cluster, name: `bench-${suffix}` };
    const backend = new SimulatedCluster(db, config.cluster, config.simulation.speedup);
    await backend.sync();
    // A large budget, so reservation (locking the tenant's budget window) is on the path as in production.
    await setBudget(db, { tenant }, 'month', 1_000_000, 'bench');

    const connection = await NativeConnection.connect({ address: server.address });
    cleanups.push({ what: 'worker connection', run: () => connection.close() });
    const clientConnection = await Connection.connect({ address: server.address });
    cleanups.push({ what: 'client connection', run: () => clientConnection.close() });
    const client = new Client({ connection: clientConnection, namespace: server.namespace });

    const bundle = await timed('bundleMs', () => bundleWorkflows());
    const controlQueue = `govloop-control-bench-${suffix}`;
    const gov = new GovloopClient(client, controlQueue);
    if (workerProcesses > 0) {
      const procs = await timed('workersStartMs', () =>
        startBenchWorkers(workerProcesses, {
          dataDir,
          config,
          bundleCode: bundle.code,
          taskQueue: controlQueue,
          temporalAddress: server.address,
          namespace: server.namespace,
          databaseUrl: url,
        }),
      );
      cleanups.push({ what: 'worker processes', run: () => procs.stop() });
    } else {
      const workers: Worker[] = await createWorkers({
        connection,
        namespace: server.namespace,
        db,
        config,
        backend,
        controlQueue,
        dispatchQueue: clusterTaskQueue(config.cluster.name),
        bundle,
        tuning,
      });
      const running = Promise.all(workers.map((w) => w.run()));
      cleanups.push({
        what: 'workers',
        run: async () => {
          for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
          await running;
        },
      });
    }
    log(
      `ledger:     ${ledger ? 'embedded PGlite (in this process)' : 'PostgreSQL'}, pool of ${ledgerPool}; ${server.describe}${cli && temporalKind === 'dev' ? ` (${cli.source} ${cli.path})` : ''}; workers ${workerProcesses > 0 ? `in ${workerProcesses} govloop worker process(es)` : 'in this process'}`,
    );
    log(
      `setup:      ${Object.entries(setup)
        .map(([k, v]) => `${k.replace(/Ms$/, '')} ${v} ms`)
        .join(', ')}`,
    );
    log(
      `parameters: ${tasks} agent tasks, ${concurrency} at a time, ${steps} steps each${thinkMs > 0 ? `, ${thinkMs} ms of model call between two` : ''}; ${clusterTasks} simulated training jobs of ${flags['sim-seconds']} s at ${SPEEDUP}x, polled every ${POLL_MILLIS} ms`,
    );

    const start = async (input: IntentInput, name: string) => {
      const intent = Intent.parse(input);
      const taskId = `${name}-${randomUUID().slice(0, 8)}`;
      return client.workflow.start(governedTask, { taskQueue: controlQueue, workflowId: taskId, args: [{ taskId, intent, requester: 'bench' }] });
    };

    const agentIntent = (i: number): IntentInput => ({
      kind: 'agent',
      name: 'bench-agent',
      attribution: { tenant, team: `team-${i % 4}`, project: 'helpdesk', model: 'llama-3-70b', useCase: 'ticket-triage' },
      caps: { maxContextTokens: 16000, maxSteps: steps + 1, maxToolCalls: steps, maxTokens: 1_000_000, maxUsd: 50 },
      priority: 'high',
      riskClass: 'medium',
      tools: ['search.web'],
      resources: { gpus: 0 },
    });
    // Every fourth step calls a (read-only, low-risk) tool; the rest are model calls.
    const step = (k: number) => ({ tokensIn: 1200 + 100 * k, tokensOut: 250, contextTokens: 2000 + 300 * k, ...(k % 4 === 3 ? { tool: 'search.web' } : {}) });

    const runAgent = (i: number): Promise<AgentRun> => client.withAbortSignal(abort.signal, () => agentTask(i));
    const agentTask = async (i: number): Promise<AgentRun> => {
      const t0 = nowMs();
      const stepMs: number[] = [];
      let admissionMs = Number.NaN;
      let workflowId = '';
      try {
        // Start and admission in one call, as the SDK's submit does (update-with-start); or, with
        // --submit two-calls, start and then the admission update, as it did before (issue 13).
        const taskId = `bench-agent-${randomUUID().slice(0, 8)}`;
        workflowId = taskId;
        const args = [{ taskId, intent: Intent.parse(agentIntent(i)), requester: 'bench' }] as const;
        // --gate leased: the first step takes the lease (one update), the others are decided in
        // process, and closing the gate reports them all and returns the rest (one more update; its
        // batch size is one more than the steps, so no report goes out before the close).
        // --gate leased-at-submit: the first lease comes with the admission's answer instead.
        const gate = gateMode !== 'sync' ? gov.leasedSteps(taskId, { as: 'bench', steps, batchSize: steps + 1, flushMs: 60_000 }) : null;
        const request = gateMode === 'leased-at-submit' ? { stepLease: gate!.leaseRequest() } : {};
        const admission =
          submitMode === 'with-start'
            ? await client.workflow.executeUpdateWithStart(admissionWithRequestUpdate, {
                updateId: `admission-${taskId}`,
                args: [request],
                startWorkflowOperation: new WithStartWorkflowOperation(governedTask, {
                  taskQueue: controlQueue,
                  workflowId: taskId,
                  args,
                  workflowIdConflictPolicy: 'FAIL',
                }),
              })
            : await (await client.workflow.start(governedTask, { taskQueue: controlQueue, workflowId: taskId, args })).executeUpdate(admissionUpdate);
        const handle = client.workflow.getHandle<typeof governedTask>(taskId);
        admissionMs = nowMs() - t0;
        if (admission.decision !== 'admitted') throw new Error(`admission ${admission.decision}: ${admission.reasons.map((r) => r.code).join(' ')}`);
        if (gateMode === 'leased-at-submit') {
          if (!admission.stepLease?.granted) throw new Error(`no step lease with the admission: ${JSON.stringify(admission.stepLease)}`);
          gate!.adopt(admission.stepLease);
        }
        for (let k = 0; k < steps; k++) {
          const s0 = nowMs();
          const last = finishMode === 'last-step' && gate === null && k === steps - 1;
          const a: StepAnswer = gate
            ? await gate.step(step(k))
            : await handle.executeUpdate(stepUpdate, { args: [last ? { ...step(k), as: 'bench', finish: true } : step(k)] });
          stepMs.push(nowMs() - s0);
          if (a.answer !== 'allow') throw new Error(`step ${k + 1} denied: ${a.reason?.code ?? '?'} ${a.reason?.message ?? ''}`);
          if (last && a.finished !== true) throw new Error(`the last step did not finish the task: ${JSON.stringify(a.finished)}`);
          // --think-ms: the model call (or tool) the step let through, before the agent's next step.
          if (thinkMs > 0 && k < steps - 1) await new Promise((r) => setTimeout(r, thinkMs));
        }
        if (gate) {
          // --finish last-step: the closing report finishes the task too (one round trip).
          if (finishMode === 'last-step') {
            const c = await gate.close({ finish: true });
            if (c.finished !== true) throw new Error(`the closing report did not finish the task: ${JSON.stringify(c.finished)}`);
          } else await gate.close();
          if (gate.stats.synchronous > 0) throw new Error(`${gate.stats.synchronous} of ${steps} steps went synchronous under the lease`);
        }
        if (finishMode === 'signal') await handle.signal(finishSignal, { by: 'bench' });
        const result: TaskStatus = await handle.result();
        if (result.state !== 'Succeeded') throw new Error(`ended ${result.state}: ${result.reasons.map((r) => r.code).join(' ')}`);
        return { workflowId, ok: true, error: null, admissionMs, stepMs, totalMs: nowMs() - t0 };
      } catch (err) {
        return { workflowId, ok: false, error: errText(err), admissionMs, stepMs, totalMs: nowMs() - t0 };
      }
    };

    const trainingIntent = (i: number): IntentInput => ({
      kind: 'training',
      name: 'bench-train',
      // Four teams over two GPU types: 8 GPUs of quota each (policies defaultGpuQuota), 64 in all.
      attribution: { tenant, team: `team-${i % 4}`, project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' },
      // Room for the whole simulated run, so no job stops at a cap.
      caps: { maxUsd: 1000, maxGpuHours: Math.ceil(flags['sim-seconds'] / 3600) + 1 },
      priority: 'normal',
      riskClass: 'low',
      resources: { gpus: 1, gpuType: i % 8 < 4 ? 'H100' : 'A100', sharing: 'exclusive' },
      simulation: { durationSeconds: flags['sim-seconds'], tokensPerSecond: 500 },
    });

    const runTraining = (i: number): Promise<ClusterRun> => client.withAbortSignal(abort.signal, () => trainingTask(i));
    const trainingTask = async (i: number): Promise<ClusterRun> => {
      const t0 = nowMs();
      let workflowId = '';
      try {
        const handle = await start(trainingIntent(i), 'bench-train');
        workflowId = handle.workflowId;
        const result: TaskStatus = await handle.result();
        const ok = result.state === 'Succeeded';
        return {
          workflowId,
          ok,
          error: ok ? null : `ended ${result.state}: ${result.reasons.map((r) => `${r.code} ${r.message}`).join('; ')}`,
          state: result.state,
          totalMs: nowMs() - t0,
          gpuSeconds: result.usage.gpuSeconds,
          costUsd: result.costUsd,
        };
      } catch (err) {
        return { workflowId, ok: false, error: errText(err), state: 'error', totalMs: nowMs() - t0, gpuSeconds: 0, costUsd: 0 };
      }
    };

    // Warm-up: one of each, so the first measured tasks do not pay for cold caches and connections.
    const w0 = nowMs();
    const [wa, wt] = await withTimeout(Promise.all([runAgent(0), runTraining(0)]), timeoutS, 'warm-up');
    if (!wa.ok || !wt.ok) throw new Error(`warm-up failed: ${wa.error ?? ''} ${wt.error ?? ''}`.trim());
    setup.warmupMs = Math.round(nowMs() - w0);
    log(`warm-up:    one agent task and one training job in ${setup.warmupMs} ms`);

    // CPU per task, which a busy machine does not distort the way it distorts rates: this process
    // (client and in-process workers), the processes it started (the Temporal server, worker
    // processes) and the PostgreSQL backends serving the bench's database (an embedded PGlite is
    // part of this process).
    const backends = async () =>
      ledger ? [] : (await db.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database()')).rows.map((r) => r.pid);
    const cpuNow = async (): Promise<CpuSnapshot> => cpuSnapshot({ started: descendants(process.pid), postgres: await backends() });

    // (a) + (b): agent tasks through the step gate.
    const a0 = nowMs();
    const agentCpu0 = await cpuNow();
    const agentThreads0 = threadCpu();
    const agents = await withTimeout(pool(tasks, concurrency, runAgent), timeoutS, 'agent phase');
    const agentCpuMs = cpuPer(agentCpu0, await cpuNow(), agents.filter((r) => r.ok).length);
    const agentThreads = busiestThreads(agentThreads0, threadCpu(), agents.filter((r) => r.ok).length);
    const agentWallS = (nowMs() - a0) / 1000;

    // (c): simulated training jobs, all submitted at once.
    const c0 = nowMs();
    const clusterCpu0 = await cpuNow();
    const trainings = await withTimeout(pool(clusterTasks, clusterTasks, runTraining), timeoutS, 'cluster phase');
    const clusterCpuMs = cpuPer(clusterCpu0, await cpuNow(), trainings.filter((r) => r.ok).length);
    const clusterWallS = (nowMs() - c0) / 1000;

    // (d): the Kueue-shaped case, when asked for.
    const kueueTasks = Math.round(flags['kueue-tasks']);
    const kueueCpu0 = await cpuNow();
    const kueueThreads0 = threadCpu();
    const kueueRun: KueueReport | null =
      kueueTasks > 0
        ? await runKueueCase({
            db,
            tenant,
            tasks: kueueTasks,
            submitters: Math.round(flags['kueue-submitters']),
            teams: Math.round(flags['kueue-teams']),
            simSeconds: flags['kueue-sim-seconds'],
            timeoutS,
            start: (input, name) => client.withAbortSignal(abort.signal, () => start(input, name)),
            log,
          })
        : null;
    const kueue = kueueRun && {
      ...kueueRun,
      cpuMsPerTask: cpuPer(kueueCpu0, await cpuNow(), kueueRun.submitted),
      threadsMsPerTask: busiestThreads(kueueThreads0, threadCpu(), kueueRun.submitted),
    };

    const okAgents = agents.filter((r) => r.ok);
    // Server-side view of the step path, from the histories of (at most) 20 measured agent tasks.
    const breakdown = await stepBreakdown(
      client,
      okAgents.slice(0, 20).map((r) => r.workflowId),
    );
    const agentTrouble = await historyTrouble(
      client,
      agents.filter((r) => r.workflowId !== ''),
    );
    const clusterTrouble = await historyTrouble(
      client,
      trainings.filter((r) => r.workflowId !== ''),
    );
    const okTrainings = trainings.filter((r) => r.ok);
    const stepsAll = okAgents.flatMap((r) => r.stepMs);
    const failures = [
      ...agents.filter((r) => !r.ok).map((r) => `agent: ${r.error}`),
      ...trainings.filter((r) => !r.ok).map((r) => `training: ${r.error}`),
      ...(kueue && !kueue.noWorkLost
        ? [
            `kueue: ${kueue.finalStates.Succeeded ?? 0} of ${kueue.tasks} succeeded, ${kueue.unfinished} unfinished, ${kueue.gpuSecondsMetered} of ${kueue.gpuSecondsExpected} GPU-seconds metered; ${kueue.submitFailures[0] ?? ''}`,
          ]
        : []),
    ];
    const s = (xs: number[]): Summary => summarize(xs, 1);
    const report = {
      benchmark: 'e2e',
      machine: m,
      parameters: {
        tasks,
        concurrency,
        steps,
        clusterTasks,
        simSeconds: flags['sim-seconds'],
        speedup: SPEEDUP,
        pollMillis: POLL_MILLIS,
        ledger: ledger ? 'embedded-pglite' : 'postgresql',
        ledgerPool,
        devServer: devServerTuning,
        submit: submitMode,
        gate: gateMode,
        finish: finishMode,
        thinkMs,
        workflowThreads: tuning.workflowThreads ?? null,
        workflowCache: tuning.maxCachedWorkflows ?? null,
        temporal: temporalKind,
        workerProcesses,
        temporalCli: temporalKind === 'dev' ? (cli?.source ?? null) : null,
      },
      setupMs: setup,
      agents: {
        completed: okAgents.length,
        failed: agents.length - okAgents.length,
        wallSeconds: round(agentWallS, 2),
        tasksPerSecond: round(okAgents.length / agentWallS, 2),
        stepsPerSecond: round(stepsAll.length / agentWallS, 1),
        admissionMs: s(okAgents.map((r) => r.admissionMs)),
        /** CPU milliseconds per completed agent task: worker = this process, started = the Temporal server (and worker processes), postgres = its backends. */
        cpuMsPerTask: agentCpuMs,
        threadsMsPerTask: agentThreads,
        taskMs: s(okAgents.map((r) => r.totalMs)),
      },
      stepGate: {
        steps: stepsAll.length,
        roundTripMs: s(stepsAll),
        fromHistories: { updateMs: s(breakdown.updateMs), gateActivityQueueMs: s(breakdown.activityQueueMs), gateActivityRunMs: s(breakdown.activityRunMs) },
      },
      cluster: {
        completed: okTrainings.length,
        failed: trainings.length - okTrainings.length,
        wallSeconds: round(clusterWallS, 2),
        tasksPerSecond: round(okTrainings.length / clusterWallS, 2),
        taskMs: s(okTrainings.map((r) => r.totalMs)),
        cpuMsPerTask: clusterCpuMs,
        /** What one job would take if it only ran its simulated time: the rest is control-plane overhead. */
        simulatedRunMs: Math.round((flags['sim-seconds'] / SPEEDUP) * 1000),
        gpuSecondsMetered: round(
          okTrainings.reduce((a, r) => a + r.gpuSeconds, 0),
          0,
        ),
        costUsd: round(
          okTrainings.reduce((a, r) => a + r.costUsd, 0),
          2,
        ),
      },
      kueue,
      /** From the workflow histories: what Temporal retried, and the slowest task's longest wait. */
      histories: { agents: agentTrouble, cluster: clusterTrouble },
      failures: failures.slice(0, 20),
      /** Activity attempts that failed and were retried by Temporal: should be none. */
      retriedActivityFailures: Object.fromEntries(activityFailures),
    };

    if (flags.json) {
      console.log(JSON.stringify(report));
    } else {
      const row = (name: string, x: Summary) => [name, x.n, fmt(x.p50), fmt(x.p90), fmt(x.p99), fmt(x.max)];
      console.log();
      console.log(
        table(
          ['throughput', 'done', 'failed', 'wall s', 'per second'],
          [
            [
              `agent tasks (submit → admit → ${gateMode !== 'sync' ? 'leased ' : ''}steps → finish → result)`,
              report.agents.completed,
              report.agents.failed,
              report.agents.wallSeconds.toFixed(2),
              report.agents.tasksPerSecond.toFixed(2),
            ],
            [
              'step-gate updates (during the agent phase)',
              report.stepGate.steps,
              '',
              report.agents.wallSeconds.toFixed(2),
              report.agents.stepsPerSecond.toFixed(1),
            ],
            [
              'simulated training jobs (submit → run → settle)',
              report.cluster.completed,
              report.cluster.failed,
              report.cluster.wallSeconds.toFixed(2),
              report.cluster.tasksPerSecond.toFixed(2),
            ],
          ],
        ),
      );
      console.log(
        table(
          ['latency, ms', 'n', 'p50', 'p90', 'p99', 'max'],
          [
            row('step-gate round trip (update → answer)', report.stepGate.roundTripMs),
            row('  server: step update accepted → completed', report.stepGate.fromHistories.updateMs),
            row('  server: gateStep activity queued → started', report.stepGate.fromHistories.gateActivityQueueMs),
            row('  server: gateStep activity started → done', report.stepGate.fromHistories.gateActivityRunMs),
            row('agent: start → admission answer', report.agents.admissionMs),
            row('agent: whole task', report.agents.taskMs),
            row(`training job: whole task (simulated run ${report.cluster.simulatedRunMs} ms)`, report.cluster.taskMs),
          ],
        ),
      );
      const cpuLine = (c: Record<string, number>) =>
        `${c.total} ms (this process ${c.worker}, the Temporal server${workerProcesses > 0 ? ' and worker processes' : ''} ${c.started}, PostgreSQL ${c.postgres})`;
      console.log(`CPU per agent task: ${cpuLine(agentCpuMs)}; per training job: ${cpuLine(clusterCpuMs)}`);
      console.log(`busiest threads of this process, ms per agent task: ${agentThreads.map((t) => `${t.thread} ${t.msPerUnit}`).join(', ')}`);
      console.log(
        `metered: ${fmt(report.cluster.gpuSecondsMetered, 0)} GPU-seconds, $${report.cluster.costUsd.toFixed(2)} over ${report.cluster.completed} training jobs`,
      );
      for (const [what, t] of [
        ['agent tasks', agentTrouble],
        ['training jobs', clusterTrouble],
      ] as const) {
        console.log(
          `histories, ${what}: ${t.workflowTaskTimeouts} workflow-task timeouts, ${t.workflowTaskFailures} workflow-task failures, ${t.activityTimeouts} activity timeouts, ${t.activityFailures} activity failures, ${t.activityRetries} activity retries` +
            (t.slowest
              ? `; slowest ${t.slowest.workflowId} ${fmt(t.slowest.ms, 0)} ms, longest wait ${fmt(t.slowest.longestGapMs, 0)} ms (${t.slowest.gapFrom} → ${t.slowest.gapTo})`
              : ''),
        );
        console.log(
          `history shape, ${what} (per task, p50 / max): ${fmt(t.workflowTasks.p50, 0)} / ${fmt(t.workflowTasks.max, 0)} workflow tasks, ${fmt(t.historyEvents.p50, 0)} / ${fmt(t.historyEvents.max, 0)} events, ${fmt(t.activitiesScheduled.p50, 0)} / ${fmt(t.activitiesScheduled.max, 0)} queued activities, ${fmt(t.localActivities.p50, 0)} / ${fmt(t.localActivities.max, 0)} local activities`,
        );
      }
      if (kueue) {
        console.log(
          `\nkueue-shaped case: ${kueue.submitted} small cluster tasks submitted in ${kueue.submitSeconds} s (${kueue.submittedPerSecond}/s); ` +
            `${kueue.admitted} admitted, ${kueue.admittedPerSecond} per second (first submit → last admission); ` +
            `submit → admitted p50 ${fmt(kueue.submitToAdmitMs.p50, 0)} ms, p99 ${fmt(kueue.submitToAdmitMs.p99, 0)} ms; ` +
            `ended ${JSON.stringify(kueue.finalStates)}, ${kueue.unfinished} unfinished after ${kueue.wallSeconds} s; ` +
            `${kueue.gpuSecondsMetered} of ${kueue.gpuSecondsExpected} GPU-seconds metered; no work lost: ${kueue.noWorkLost ? 'yes' : 'NO'}; CPU per task ${cpuLine(kueue.cpuMsPerTask)}; busiest threads, ms per task: ${kueue.threadsMsPerTask.map((t) => `${t.thread} ${t.msPerUnit}`).join(', ')}`,
        );
      }
      if (flags['show-history']) {
        for (const [what, id] of [
          ['agent task', okAgents[0]?.workflowId],
          ['training job', okTrainings[0]?.workflowId],
        ] as const) {
          if (!id) continue;
          const events = (await client.workflow.getHandle(id).fetchHistory()).events ?? [];
          const t0 = tsToMs(events[0]?.eventTime);
          console.log(`\n${what} ${id}: ${events.length} events`);
          for (const e of events) {
            const detail =
              e.activityTaskScheduledEventAttributes?.activityType?.name ??
              e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name ??
              e.workflowExecutionSignaledEventAttributes?.signalName ??
              e.markerRecordedEventAttributes?.markerName ??
              '';
            console.log(`  ${String(tsToMs(e.eventTime) - t0).padStart(6)} ms  ${eventName(e)} ${detail}`);
          }
        }
      }
      showActivityFailures((l) => console.log(l));
      if (failures.length > 0) {
        console.log(`\n${failures.length} task(s) failed; first ones:`);
        for (const f of failures.slice(0, 5)) console.log(`  ${f}`);
      }
    }
    if (failures.length > 0) process.exitCode = 1;
  } finally {
    await cleanup();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

main().catch((err: unknown) => {
  console.error(`bench/e2e failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});
