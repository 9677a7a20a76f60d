import { randomInt } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection, WorkflowUpdateRPCTimeoutOrCancelledError } from '@temporalio/client';
import { decodeTimeoutType } from '@temporalio/common';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { z } from 'zod';
import { Db } from '../../ledger/db';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { taskUsage } from '../../ledger/usage';
import { GovloopClient, GovloopStateError } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import type { TaskStatus } from '../../workflows/messages';
import { repoRoot } from '../support/cli';
import { intent } from '../support/harness';
import { type LedgerTask, type WorkerProcess, describeTasks, ledgerTasks, startWorkerProcess, waitFor } from '../support/worker-process';

/**
 * The worker killed 20 times at random points of dispatch (issue 11): a `govloop worker` process,
 * SIGKILLed and started again while cluster tasks are submitted, admitted, dispatched, run,
 * cancelled and preempted. Then, counted directly in the ledger and on the simulated cluster:
 * no task lost, no usage row that meters a second twice, no task with two Jobs, and every task
 * charged exactly what its job ran.
 *
 * The plan (when each task arrives, its size, how long each worker lives) comes from a seeded
 * random: the seed is printed, and GOVLOOP_CHAOS_SEED=<seed> replays the same plan.
 */
const Env = z.object({ GOVLOOP_CHAOS_SEED: z.coerce.number({ error: 'must be an integer' }).int('must be an integer').min(0).optional() });
const env = Env.safeParse(process.env);
if (!env.success) throw new Error(`worker-kills: ${env.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
const seed = env.data.GOVLOOP_CHAOS_SEED ?? randomInt(2 ** 31);

const suffix = seed.toString(36) + '-' + randomInt(2 ** 24).toString(36);
const tenant = `t-kills-${suffix}`;
const taskQueue = `govloop-control-kills-${suffix}`;
const cluster = `sim-kills-${suffix}`;

const KILLS = 20;
/** Simulated seconds per real second: a 2,000–6,000 s job runs 10–30 s, across several kills. */
const SPEEDUP = 200;
/**
 * A worker lives from "running" for 0 to this many ms before it is killed. Each round's task is
 * submitted as the worker comes up, and admission and dispatch take about this long here, so
 * the kills fall at random points of them (and of the runs, cancels and preemptions under way).
 */
const MAX_LIFE_MS = 3000;
/** One plain task arrives in each round. */
const PLAIN = KILLS;
/** Each task's cost cap: the most its reservation can hold. */
const TASK_MAX_USD = 1000;
/** Tasks cancelled once running; their jobs could not finish on their own within the test. */
const CANCELLED = 2;
/** Waiting for every task to end after the last restart: far above what it takes, only a hang reaches it. */
const DRAIN_MS = 420_000;
const GPU_HOUR_USD = { H100: 4, A100: 2 } as const;

const plan = fc.sample(
  fc.record({
    // Uniform (fast-check leans towards small numbers unless told not to).
    lifeMs: fc.array(fc.noBias(fc.integer({ min: 0, max: MAX_LIFE_MS })), { minLength: KILLS, maxLength: KILLS }),
    plain: fc.array(
      fc.record({
        gpus: fc.integer({ min: 1, max: 4 }),
        gpuType: fc.constantFrom('H100' as const, 'A100' as const),
        durationS: fc.integer({ min: 2000, max: 6000 }),
      }),
      { minLength: PLAIN, maxLength: PLAIN },
    ),
    cancelRound: fc.array(fc.noBias(fc.integer({ min: 0, max: KILLS / 2 })), { minLength: CANCELLED, maxLength: CANCELLED }),
    preemptRound: fc.noBias(fc.integer({ min: 0, max: KILLS / 2 })),
  }),
  { seed, numRuns: 1 },
)[0]!;

interface Planned {
  taskId: string;
  round: number;
  gpus: number;
  gpuType: 'H100' | 'A100';
  durationS: number;
  /** Its own team, so the default per-team GPU quota never queues one task behind another. */
  team: string;
  /** What the test does to it once it runs, and the state it must end in. */
  role: 'plain' | 'cancel' | 'preempt';
  want: 'Succeeded' | 'Cancelled';
}

const tasks: Planned[] = [
  ...plan.plain.map((p, i): Planned => ({ taskId: `kills-${suffix}-plain-${i}`, team: `plain-${i}`, round: i, ...p, role: 'plain', want: 'Succeeded' })),
  ...plan.cancelRound.map((round, i): Planned => ({
    taskId: `kills-${suffix}-cancel-${i}`,
    team: `cancel-${i}`,
    round,
    gpus: 1,
    gpuType: 'H100',
    durationS: 100_000,
    role: 'cancel',
    want: 'Cancelled',
  })),
  // Long enough that it still runs when the preemption arrives; it finishes after its requeue.
  {
    taskId: `kills-${suffix}-preempt`,
    team: 'preempt',
    round: plan.preemptRound,
    gpus: 2,
    gpuType: 'A100',
    durationS: 8000,
    role: 'preempt',
    want: 'Succeeded',
  },
];
const ids = tasks.map((t) => t.taskId);

let db: Db;
let connection: Connection;
let gov: GovloopClient;
let configDir: string;
let bundlePath: string;

const startWorker = (): WorkerProcess =>
  startWorkerProcess({
    taskQueue,
    cluster,
    temporalAddress: inject('temporalAddress'),
    databaseUrl: inject('databaseUrl'),
    speedup: SPEEDUP,
    env: { GOVLOOP_CONFIG_DIR: configDir, GOVLOOP_WORKFLOW_BUNDLE: bundlePath },
  });

/**
 * An update waits for a worker to take it; with workers coming and going the client's long poll
 * may give up first (WorkflowUpdateRPCTimeoutOrCancelledError). Asking again is what a user does.
 * A refusal after such a timeout may only mean the first ask got through (a task already
 * preempted is not preemptible again): the ledger, checked at the end, says whether it did.
 */
async function patiently(what: string, call: () => Promise<unknown>): Promise<'answered' | 'refused after a timeout'> {
  for (let attempt = 1; ; attempt++) {
    try {
      await call();
      return 'answered';
    } catch (err) {
      if (attempt > 1 && err instanceof GovloopStateError) return 'refused after a timeout';
      if (!(err instanceof WorkflowUpdateRPCTimeoutOrCancelledError) || attempt >= 20) throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** `from` and `to` of a usage row's key, `<task>:<meter>:<from>-<to>` (numbers as JavaScript prints them). */
const meteredRange = (key: string): { from: number; to: number } => {
  const num = '(\\d+(?:\\.\\d+)?(?:e[+-]\\d+)?)';
  const m = new RegExp(`:${num}-${num}$`).exec(key);
  if (!m) throw new Error(`usage row ${key}: no <from>-<to> range at the end of its key`);
  return { from: Number(m[1]), to: Number(m[2]) };
};

/**
 * What the kills cut off, from the tasks' histories (every run of each, found by workflow id):
 * activity attempts that never reported back (a started event with attempt n means n - 1 tries
 * were lost, each to a killed worker here) by activity, and workflow tasks that timed out while
 * a worker held them.
 */
async function cutOff(client: Client, taskIds: readonly string[]): Promise<{ attempts: Record<string, number>; workflowTasks: number }> {
  const attempts: Record<string, number> = {};
  let workflowTasks = 0;
  for (const id of taskIds) {
    for await (const run of client.workflow.list({ query: `WorkflowId = '${id}'` })) {
      const history = await client.workflow.getHandle(id, run.runId).fetchHistory();
      const scheduled = new Map<string, string>();
      for (const e of history.events ?? []) {
        const a = e.activityTaskScheduledEventAttributes;
        if (a) scheduled.set(String(e.eventId), a.activityType?.name ?? '?');
        const started = e.activityTaskStartedEventAttributes;
        if (started && (started.attempt ?? 1) > 1) {
          const name = scheduled.get(String(started.scheduledEventId)) ?? '?';
          attempts[name] = (attempts[name] ?? 0) + (started.attempt! - 1);
        }
        // START_TO_CLOSE: a worker took the task and never answered.
        if (decodeTimeoutType(e.workflowTaskTimedOutEventAttributes?.timeoutType) === 'START_TO_CLOSE') workflowTasks++;
      }
    }
  }
  return { attempts, workflowTasks };
}

const running = async (taskId: string): Promise<LedgerTask | undefined> => {
  const [t] = await ledgerTasks(db, cluster, [taskId]);
  return t && t.state === 'Running' && t.jobPhase === 'Running' && t.gpuSeconds > 0 ? t : undefined;
};

beforeAll(async () => {
  console.log(`worker-kills: seed ${seed} (GOVLOOP_CHAOS_SEED=${seed} replays this plan)`);
  // The shipped config, with a 1 s preemption grace (30 s in production) so the preempted task
  // is suspended while the kills go on, not after them.
  const dir = mkdtempSync(join(tmpdir(), 'govloop-kills-'));
  configDir = join(dir, 'config');
  cpSync(join(repoRoot, 'config'), configDir, { recursive: true });
  const policies = join(configDir, 'policies.yaml');
  writeFileSync(policies, readFileSync(policies, 'utf8').replace(/^preemption: .*$/m, 'preemption: { graceMillis: 1000, minRunSeconds: 0 }'));
  // One workflow bundle for the 21 workers, as a deployment ships it: each then starts in
  // seconds instead of bundling workflows/ again (`govloop worker --workflow-bundle`).
  bundlePath = join(dir, 'workflow-bundle.js');
  writeFileSync(bundlePath, (await bundleWorkflows()).code);
  db = new Db(inject('databaseUrl'), 4);
  connection = await Connection.connect({ address: inject('temporalAddress') });
  gov = new GovloopClient(new Client({ connection }), taskQueue);
  // Room for every task's reservation at once: with the worker down, tasks keep theirs for longer, and a
  // budget short of that (it was $10,000 for 24 tasks of up to $1,000) rejected a plain task (seed 610318127).
  await setBudget(db, { tenant }, 'month', tasks.length * TASK_MAX_USD, 'test');
});

afterAll(async () => {
  await connection?.close();
  await db?.close();
  if (configDir) rmSync(join(configDir, '..'), { recursive: true, force: true });
});

describe('chaos: the worker killed at random points of dispatch', () => {
  it(`loses no task, meters no second twice, creates no Job twice, and charges exactly, across ${KILLS} SIGKILLs`, async () => {
    const started = Date.now();
    // Each call's outcome is kept as a value at once, so a failure waits for the checks below
    // instead of surfacing as an unhandled rejection in the middle of the kills.
    const outcome = <T>(what: string, p: Promise<T>) =>
      p.then(
        (value) => ({ ok: true as const, value }),
        (err: unknown) => ({ ok: false as const, error: `${what}: ${String(err)}` }),
      );
    const submits: Promise<{ ok: boolean; error?: string }>[] = [];
    const actions: ReturnType<typeof outcome<'answered' | 'refused after a timeout' | 'ended first'>>[] = [];
    let preemptAct: (typeof actions)[number] | undefined;
    const submitted = new Set<string>();
    const submit = (t: Planned) =>
      gov.submit(
        intent(tenant, {
          name: t.taskId,
          attribution: { tenant, team: t.team, project: 'chaos', model: 'llama-3-8b', useCase: 'kills' },
          caps: { maxUsd: TASK_MAX_USD, maxGpuHours: 200 },
          resources: { gpus: t.gpus, gpuType: t.gpuType, sharing: 'exclusive' },
          simulation: { durationSeconds: t.durationS, tokensPerSecond: 7 },
        }),
        { requester: 'test', taskId: t.taskId },
      );
    // Cancel and preempt go the user's way (the SDK's updates), once the ledger shows the job running.
    // A task can also end before the ledger ever shows it running and metered (its job may run
    // out while no worker is up to observe it): then there is nothing left to cancel or preempt,
    // and the task must still end as planned ('ended first' is counted and printed).
    const act = (t: Planned): Promise<'answered' | 'refused after a timeout' | 'ended first'> => {
      const why = `chaos ${t.role}`;
      let last = '';
      return waitFor(
        `${t.taskId} running before its ${t.role}`,
        async () => {
          const [seen] = await ledgerTasks(db, cluster, [t.taskId]);
          last = seen ? describeTasks([seen]) : 'not in the ledger yet';
          return (await running(t.taskId)) ? ('running' as const) : seen?.final ? ('ended' as const) : undefined;
        },
        DRAIN_MS,
        () => last,
      ).then((s) =>
        s === 'ended'
          ? ('ended first' as const)
          : patiently(`${t.role} ${t.taskId}`, () =>
              t.role === 'cancel' ? gov.cancel(t.taskId, 'test', why) : gov.preempt(t.taskId, { reason: why, as: 'test' }),
            ),
      );
    };

    let w = startWorker();
    /** At each kill: how many tasks were on their way to the cluster (admitting, reserved, queued, preempted) and how many running. */
    const atKills: { dispatching: number; running: number }[] = [];
    try {
      for (let round = 0; round < KILLS; round++) {
        const born = Date.now();
        await w.ready;
        const readyMs = Date.now() - born;
        for (const t of tasks.filter((x) => x.round === round)) {
          submits.push(outcome(`submit ${t.taskId}`, submit(t)));
          submitted.add(t.taskId);
          if (t.role !== 'plain') {
            const o = outcome(`${t.role} ${t.taskId}`, act(t));
            actions.push(o);
            if (t.role === 'preempt') preemptAct = o;
          }
        }
        await new Promise((r) => setTimeout(r, plan.lifeMs[round]));
        await w.kill();
        // No worker now: the ledger holds still, and shows what the kill interrupted.
        const seen = await ledgerTasks(db, cluster, [...submitted]);
        const settledOrRunning = seen.filter((s) => s.final || s.state === 'Running').length;
        atKills.push({ dispatching: submitted.size - settledOrRunning, running: seen.filter((s) => s.state === 'Running').length });
        console.log(
          `worker-kills: kill ${round + 1}/${KILLS}: worker ready after ${readyMs} ms, killed ${plan.lifeMs[round]} ms later; ${atKills.at(-1)!.dispatching} on their way to the cluster, ${atKills.at(-1)!.running} running, ${seen.filter((x) => x.final).length} ended`,
        );
        w = startWorker();
      }
      await w.ready;

      // Every task ends: read from the ledger, which a task's every run (continue-as-new or not) writes.
      let seen: LedgerTask[] = [];
      await waitFor(
        'every task in a final state',
        async () => {
          seen = await ledgerTasks(db, cluster, ids);
          return seen.length === ids.length && seen.every((t) => t.final) ? true : undefined;
        },
        DRAIN_MS,
        () => `${describeTasks(seen.filter((t) => !t.final))}; worker: ${w.tail().slice(-1500)}`,
      );
      const answers = await Promise.all([...submits, ...actions]);
      const unanswered = answers.flatMap((a) => (a.ok ? [] : [a.error]));
      // The message names each error: the diff alone prints `[ Array(1) ]`.
      expect(unanswered, `every submit, cancel and preempt was answered; not: ${JSON.stringify(unanswered)}`).toEqual([]);
      const ambiguous = (await Promise.all(actions)).filter((a) => a.ok && a.value === 'refused after a timeout').length;
      const endedFirst = (await Promise.all(actions)).filter((a) => a.ok && a.value === 'ended first').length;
      // The workflow's own answer, from the last run of each task (followed by workflow id).
      const results = new Map<string, TaskStatus>();
      for (const id of ids) results.set(id, await gov.result(id));

      // 0 lost: every task ended as it should.
      for (const t of tasks)
        expect(`${t.taskId} ${results.get(t.taskId)!.state}`, JSON.stringify(results.get(t.taskId)!.reasons)).toBe(`${t.taskId} ${t.want}`);
      const final = await ledgerTasks(db, cluster, ids);
      const lost = final.filter((t) => !t.final || t.state !== tasks.find((p) => p.taskId === t.taskId)!.want).length;

      // 0 duplicated Jobs: the simulated cluster's own table, one row per Job.
      const jobs = await db.query<{ task_id: string; jobs: number; ran_s: number; gpus: number; lost_s: number; phase: string }>(
        'SELECT task_id, count(*) OVER (PARTITION BY task_id)::int AS jobs, ran_s, gpus, lost_s, phase FROM sim_jobs WHERE cluster = $1',
        [cluster],
      );
      const jobsOf = (id: string) => jobs.rows.filter((j) => j.task_id === id);
      const duplicatedJobs = jobs.rows.length - new Set(jobs.rows.map((j) => j.task_id)).size;
      expect(ids.map((id) => `${id} ${jobsOf(id).length}`)).toEqual(ids.map((id) => `${id} 1`));
      expect(jobs.rows).toHaveLength(ids.length);

      // 0 duplicated usage rows: usage_events is idempotent by key (`task:meter:from-to`, the
      // meter's cumulative before and after); per task and meter the rows must tile [0, total]
      // with no overlap (a second metered twice) and no gap (a second never metered).
      const usage = await db.query<{ task_id: string; meter: string; idempotency_key: string; quantity: number }>(
        'SELECT task_id, meter, idempotency_key, quantity FROM usage_events WHERE task_id = ANY($1::text[])',
        [ids],
      );
      let duplicatedRows = 0;
      let gaps = 0;
      const meteredTo = new Map<string, number>();
      for (const id of ids) {
        for (const meter of ['gpu_seconds', 'tokens_processed']) {
          const parts = usage.rows
            .filter((u) => u.task_id === id && u.meter === meter)
            .map((u) => meteredRange(u.idempotency_key))
            .sort((a, b) => a.from - b.from || a.to - b.to);
          let end = 0;
          for (const p of parts) {
            if (p.from < end) duplicatedRows++;
            else if (p.from > end) gaps++;
            end = Math.max(end, p.to);
          }
          meteredTo.set(`${id}:${meter}`, end);
        }
      }
      const fmt = (x: number) => Math.round(x * 1e6) / 1e6;

      // Charges exact: each task is charged for exactly what its job ran (every GPU-second,
      // once, at its price), and a plain task's job ran exactly its duration.
      let totalMicros = 0;
      for (const t of tasks) {
        const [job] = jobsOf(t.taskId);
        const u = await taskUsage(db, t.taskId);
        const ranGpuSeconds = job!.ran_s * job!.gpus;
        expect(u.gpuSeconds, `${t.taskId} GPU-seconds`).toBe(fmt(ranGpuSeconds));
        expect(fmt(meteredTo.get(`${t.taskId}:gpu_seconds`)!)).toBe(fmt(ranGpuSeconds));
        expect(u.tokensProcessed, `${t.taskId} tokens`).toBe(Math.floor(job!.ran_s * 7));
        expect(u.costMicros, `${t.taskId} cost`).toBe(Math.round(ranGpuSeconds * (GPU_HOUR_USD[t.gpuType] / 3600) * 1e6));
        if (t.role === 'plain') {
          expect(u.gpuSeconds).toBe(t.gpus * t.durationS);
          expect(u.costMicros).toBe(Math.round(t.gpus * (t.durationS / 3600) * GPU_HOUR_USD[t.gpuType] * 1e6));
        }
        if (t.role === 'preempt') expect(job!.ran_s, 'the preempted job ran its duration plus what it lost').toBeCloseTo(t.durationS + job!.lost_s, 6);
        const ledgerCost = await db.query<{ cost_micros: string }>('SELECT cost_micros FROM tasks WHERE task_id = $1', [t.taskId]);
        expect(Number(ledgerCost.rows[0]!.cost_micros)).toBe(u.costMicros);
        expect(results.get(t.taskId)!.costUsd).toBeCloseTo(u.costMicros / 1e6, 6);
        totalMicros += u.costMicros;
      }
      const [budget] = await showBudgets(db, { tenant }, new Date());
      expect(budget!.spentUsd).toBeCloseTo(totalMicros / 1e6, 6);
      expect(budget!.reservedUsd).toBe(0);
      const preemptions = await db.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM preemptions WHERE victim_task_id = ANY($1::text[]) AND suspended_at IS NOT NULL',
        [ids],
      );
      // A preempt task whose job ran out before the ledger showed it running had nothing to preempt;
      // nor had one whose job ran out after the preempt was accepted (with the workers killed, its
      // 40 s of wall time can pass unobserved): that task ends Succeeded and says PREEMPT_TOO_LATE.
      const preemptOutcome = preemptAct ? await preemptAct : undefined;
      const preemptTask = tasks.find((t) => t.role === 'preempt')!;
      const tooLate = results.get(preemptTask.taskId)!.reasons.some((r) => r.code === 'PREEMPT_TOO_LATE');
      const preemptedOnce = (preemptOutcome?.ok && preemptOutcome.value === 'ended first') || tooLate ? 0 : 1;
      expect(
        preemptions.rows[0]!.n,
        `the preempted task was preempted, once (its preempt call: ${JSON.stringify(preemptOutcome)}; reasons: ${JSON.stringify(results.get(preemptTask.taskId)!.reasons)})`,
      ).toBe(preemptedOnce);
      if (preemptedOnce === 0) expect(jobsOf(preemptTask.taskId)[0]!.lost_s, 'nothing preempted, nothing lost').toBe(0);
      expect({ lost, duplicatedRows, gaps, duplicatedJobs }).toEqual({ lost: 0, duplicatedRows: 0, gaps: 0, duplicatedJobs: 0 });

      const wallS = Math.round((Date.now() - started) / 1000);
      const cut = await cutOff(gov.client, ids);
      const lostAttempts = Object.entries(cut.attempts)
        .sort((a, b) => b[1] - a[1])
        .map(([name, n]) => `${name} ${n}`)
        .join(', ');
      const duringDispatch = atKills.filter((k) => k.dispatching > 0).length;
      console.log(
        `worker-kills: seed ${seed}; ${KILLS} SIGKILLs (${duringDispatch} with a task on its way to the cluster, ${atKills.filter((k) => k.running > 0).length} with jobs running; ` +
          `cut off: ${cut.workflowTasks} workflow tasks, activity attempts ${lostAttempts || 'none'}); ` +
          `${tasks.length} tasks (${PLAIN} plain, ${CANCELLED} cancelled, 1 preempted${preemptedOnce === 0 ? ` (it ended first${tooLate ? ': PREEMPT_TOO_LATE' : ''})` : ''}; ${ambiguous} of those calls asked twice, ${endedFirst} ended before the call could be made): ${lost} lost; ${usage.rows.length} usage rows, ${duplicatedRows} duplicated, ${gaps} gaps; ` +
          `${jobs.rows.length} Jobs, ${duplicatedJobs} duplicated; charges exact; ${wallS} s wall`,
      );
    } finally {
      await w.stop();
    }
  });
});
