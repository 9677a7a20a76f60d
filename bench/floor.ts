/**
 * The floor under a governed task (issue 13): what a workflow of a given shape costs on this
 * Temporal server and worker with none of govloop's work in it — no-op activities, no ledger.
 * Each shape runs N workflows started by client lanes, as the Kueue-shaped case starts its tasks,
 * and the CPU of this process (client and worker, as in bench/e2e.ts) and of the server is read
 * before and after. Shapes run in rounds, alternating, so drift falls on all of them alike.
 *
 *   empty         start and complete
 *   local         one local activity
 *   timer         one timer
 *   activity      one activity on another task queue (a cluster call on the dispatch queue)
 *   cluster-task  a governed cluster task's skeleton (bench/floor-workflows.ts): 2 local
 *                 activities, 2 activities on the dispatch queue, the poll timer, 3 upserts of a
 *                 search attribute and the memo; 4 workflow tasks, as the real one
 *   cluster-task-local  the same with the two cluster calls as local activities: 2 workflow tasks
 *   agent-task    a governed agent task's skeleton: update-with-start (admission), 5 step updates
 *                 (a local activity each), the finish signal, settle; 7 workflow tasks, as the real one
 *
 *   npm run -s bench:floor -- [--workflows 600] [--rounds 2] [--submitters 32] [--dev-server tuned|default] [--json]
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection, WithStartWorkflowOperation } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker, bundleWorkflowCode } from '@temporalio/worker';
import { type DevServerTuning, startDevServer } from '../runtime/dev-server';
import { quietBundlerLogger } from '../workers/worker';
import { type FloorActivities, floorAdmission, floorAgentTask, floorFinish, floorStep } from './floor-workflows';
import { type Summary, cpuPer, cpuSnapshot, describeMachine, descendants, fmt, machine, median, nowMs, parseFlags, round, summarize, table } from './lib';

const usage = `usage: tsx bench/floor.ts [--workflows N] [--rounds R] [--submitters S] [--dev-server tuned|default] [--json]
  --workflows   workflows of each shape per round (default 600)
  --rounds      rounds; each runs every shape once, in turn (default 2)
  --submitters  client lanes starting workflows (default 32)
  --agent-lanes client lanes running agent-task skeletons, each one task at a time (default: --submitters);
                with 8, the skeleton's step round trip is measured at issue 13's concurrency`;

const SHAPES = ['empty', 'local', 'timer', 'activity', 'cluster-task', 'cluster-task-local', 'agent-task'] as const;
type Shape = (typeof SHAPES)[number];
const WORKFLOW: Record<Shape, string> = {
  empty: 'floorEmpty',
  local: 'floorLocal',
  timer: 'floorTimer',
  activity: 'floorActivity',
  'cluster-task': 'floorClusterTask',
  'cluster-task-local': 'floorClusterTask',
  'agent-task': 'floorAgentTask',
};
const AGENT_STEPS = 5;

interface ShapeRun {
  shape: Shape;
  workflows: number;
  perSecond: number;
  cpuMs: Record<string, number>;
  /** agent-task: each step update's round trip (sent → answered), ms. */
  stepMs?: Summary;
}

async function main() {
  const flags = parseFlags({ workflows: 600, rounds: 2, submitters: 32, 'agent-lanes': 0, 'dev-server': 'tuned', json: false }, usage);
  const agentLanes = flags['agent-lanes'] > 0 ? Math.round(flags['agent-lanes']) : flags.submitters;
  const n = Math.round(flags.workflows);
  const log = (s: string) => {
    if (!flags.json) console.log(s);
  };
  const m = machine();
  log(`machine: ${describeMachine(m)}`);
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const dataDir = mkdtempSync(join(tmpdir(), 'govloop-bench-floor-'));
  const server = await startDevServer({ dataDir, headless: true, tuning: flags['dev-server'] as DevServerTuning, onProgress: log });
  const suffix = randomUUID().slice(0, 8);
  const controlQueue = `floor-control-${suffix}`;
  const dispatchQueue = `floor-dispatch-${suffix}`;
  const connection = await NativeConnection.connect({ address: server.address });
  const clientConnection = await Connection.connect({ address: server.address });
  const client = new Client({ connection: clientConnection, namespace: server.namespace });
  const activities: FloorActivities = { noop: async ({ n: k }) => ({ n: k }) };
  const workflowBundle = await bundleWorkflowCode({
    workflowsPath: fileURLToPath(new URL('./floor-workflows.ts', import.meta.url)),
    logger: quietBundlerLogger,
  });
  const workers = [
    await Worker.create({ connection, namespace: server.namespace, taskQueue: controlQueue, workflowBundle, activities }),
    await Worker.create({ connection, namespace: server.namespace, taskQueue: dispatchQueue, activities }),
  ];
  const running = Promise.all(workers.map((w) => w.run()));
  const argsOf = (shape: Shape): unknown[] =>
    shape === 'activity'
      ? [{ queue: dispatchQueue }]
      : shape === 'cluster-task'
        ? [{ queue: dispatchQueue, pollMillis: 100 }]
        : shape === 'cluster-task-local'
          ? [{ queue: null, pollMillis: 100 }]
          : [];
  const runs: ShapeRun[] = [];
  try {
    const cpuNow = () => cpuSnapshot({ server: descendants(process.pid) });
    let stepMs: number[] = [];
    const runOne = async (shape: Shape, workflowId: string): Promise<void> => {
      if (shape !== 'agent-task') {
        await client.workflow.execute(WORKFLOW[shape], { taskQueue: controlQueue, workflowId, args: argsOf(shape) });
        return;
      }
      await client.workflow.executeUpdateWithStart(floorAdmission, {
        startWorkflowOperation: new WithStartWorkflowOperation(floorAgentTask, { taskQueue: controlQueue, workflowId, workflowIdConflictPolicy: 'FAIL' }),
      });
      const h = client.workflow.getHandle(workflowId);
      for (let k = 1; k <= AGENT_STEPS; k++) {
        const s0 = nowMs();
        await h.executeUpdate(floorStep, { args: [k] });
        stepMs.push(nowMs() - s0);
      }
      await h.signal(floorFinish);
      await h.result();
    };
    const runShape = async (shape: Shape): Promise<ShapeRun> => {
      const cpu0 = cpuNow();
      const t0 = nowMs();
      let next = 0;
      stepMs = [];
      await Promise.all(
        Array.from({ length: Math.min(shape === 'agent-task' ? agentLanes : flags.submitters, n) }, async () => {
          while (next < n) {
            next++;
            await runOne(shape, `floor-${shape}-${randomUUID()}`);
          }
        }),
      );
      const seconds = (nowMs() - t0) / 1000;
      return {
        shape,
        workflows: n,
        perSecond: round(n / seconds),
        cpuMs: cpuPer(cpu0, cpuNow(), n),
        ...(shape === 'agent-task' ? { stepMs: summarize(stepMs) } : {}),
      };
    };
    // Warm up every shape (bundle loaded, connections open), then the measured rounds.
    for (const shape of SHAPES) await runOne(shape, `floor-warm-${shape}-${suffix}`);
    for (let r = 0; r < flags.rounds; r++) {
      const order = r % 2 === 0 ? SHAPES : [...SHAPES].reverse();
      for (const shape of order) {
        const run = await runShape(shape);
        runs.push(run);
        log(
          `round ${r + 1}: ${shape}: ${run.perSecond}/s, CPU per workflow ${JSON.stringify(run.cpuMs)} ms${run.stepMs ? `; step p50 ${fmt(run.stepMs.p50)} ms, p99 ${fmt(run.stepMs.p99)} ms (${agentLanes} lanes)` : ''}`,
        );
      }
    }
    // Each shape's history, from its warm-up run: events and workflow tasks.
    const histories: Record<string, { events: number; workflowTasks: number }> = {};
    for (const shape of SHAPES) {
      const { events } = await client.workflow.getHandle(`floor-warm-${shape}-${suffix}`).fetchHistory();
      histories[shape] = { events: events?.length ?? 0, workflowTasks: (events ?? []).filter((e) => e.workflowTaskCompletedEventAttributes).length };
    }
    const byShape = SHAPES.map((shape) => {
      const mine = runs.filter((r) => r.shape === shape);
      const med = (k: string) => median(mine.map((r) => r.cpuMs[k] ?? 0));
      return {
        shape,
        ...histories[shape]!,
        perSecond: median(mine.map((r) => r.perSecond)),
        cpuMs: { worker: med('worker'), server: med('server'), total: med('total') },
        ...(shape === 'agent-task' ? { stepP50Ms: median(mine.map((r) => r.stepMs!.p50)), stepP99Ms: median(mine.map((r) => r.stepMs!.p99)) } : {}),
      };
    });
    if (flags.json) {
      console.log(
        JSON.stringify(
          { machine: m, devServer: flags['dev-server'], workflows: n, rounds: flags.rounds, submitters: flags.submitters, agentLanes, byShape, runs },
          null,
          2,
        ),
      );
    } else {
      log(
        `\n${n} workflows of each shape per round, ${flags.rounds} rounds, ${flags.submitters} client lanes (agent-task: ${agentLanes}); medians over the rounds`,
      );
      log(
        table(
          ['shape', 'events', 'workflow tasks', 'workflows/s', 'CPU ms/workflow: worker+client', 'server', 'total'],
          byShape.map((s) => [s.shape, s.events, s.workflowTasks, fmt(s.perSecond), fmt(s.cpuMs.worker, 0), fmt(s.cpuMs.server, 0), fmt(s.cpuMs.total, 0)]),
        ),
      );
      const agent = byShape.find((s) => s.shape === 'agent-task')!;
      log(`agent-task skeleton, step update round trip at ${agentLanes} lanes: p50 ${fmt(agent.stepP50Ms!)} ms, p99 ${fmt(agent.stepP99Ms!)} ms`);
    }
  } finally {
    for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    await running.catch(() => undefined);
    await connection.close();
    await clientConnection.close();
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
