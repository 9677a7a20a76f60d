import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { setBudget } from '../../ledger/budgets';
import { teamGpusInUse } from '../../ledger/tasks';
import { taskUsage } from '../../ledger/usage';
import { RECONCILE_SCHEDULE, ensureReconcileSchedule } from '../../runtime/schedules';
import { startStack } from '../../runtime/stack';
import { GovloopClient } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { type ReconcileInput, type ReconcileReport, reconciler } from '../../workflows/reconciler';
import { govloop } from '../support/cli';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';

let bundle: WorkflowBundleWithSourceMap;
let h: Harness;
let gov: GovloopClient;
const scheduleId = `reconcile-test-${randomUUID().slice(0, 8)}`;

beforeAll(async () => {
  bundle = await bundleWorkflows();
  // Slow enough that a cluster job is still running (and metering) when it is terminated.
  h = await createHarness({ bundle, config: testConfig({ speedup: 20 }) });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
  await setBudget(h.db, { tenant: h.tenant }, 'month', 10_000, 'test');
});

afterAll(async () => {
  await h.client.schedule
    .getHandle(scheduleId)
    .delete()
    .catch(() => undefined);
  await h.close();
});

/** One pass, run by the workers like a scheduled one; kept to this file's tenant (the ledger is shared by the test files). */
const pass = (input: ReconcileInput = {}): Promise<ReconcileReport> =>
  h.client.workflow.execute(reconciler, {
    taskQueue: h.controlQueue,
    workflowId: `reconcile-pass-${randomUUID().slice(0, 8)}`,
    args: [{ tenant: h.tenant, ...input }],
  });

const cluster = (name: string) => intent(h.tenant, { name, simulation: { durationSeconds: 1_000_000, tokensPerSecond: 10 } });
const agent = (name: string) =>
  intent(h.tenant, { kind: 'agent', name, resources: { gpus: 0 }, simulation: undefined, tools: ['search.web'], caps: { maxUsd: 5 } });

/** What a user checks of a task in the ledger: its row, its reservation, its audit trail. */
async function ledgerOf(taskId: string) {
  const t = (
    await h.db.query<{ state: string; finished_at: Date | null; reasons: { code: string; message: string; requested: string }[]; cost_micros: number }>(
      'SELECT state, finished_at, reasons, cost_micros FROM tasks WHERE task_id = $1',
      [taskId],
    )
  ).rows[0]!;
  const r = (
    await h.db.query<{ state: string; amount_micros: number; remaining_micros: number }>(
      'SELECT state, amount_micros, remaining_micros FROM reservations WHERE task_id = $1',
      [taskId],
    )
  ).rows[0]!;
  const audit = (
    await h.db.query<{ action: string; decision: string; actor: string; detail: any }>(
      'SELECT action, decision, actor, detail FROM audit_log WHERE task_id = $1 ORDER BY id',
      [taskId],
    )
  ).rows;
  return { ...t, reservation: r, audit };
}

async function windowOf(): Promise<{ reserved: number; spent: number }> {
  const { rows } = await h.db.query<{ reserved_micros: number; spent_micros: number }>(
    `SELECT w.reserved_micros, w.spent_micros FROM budget_windows w JOIN budgets b ON b.id = w.budget_id WHERE b.tenant = $1 AND b.period = 'month'`,
    [h.tenant],
  );
  expect(rows).toHaveLength(1);
  return { reserved: rows[0]!.reserved_micros, spent: rows[0]!.spent_micros };
}

/** The job a cluster task was dispatched as (its dispatch audit row). */
const jobOf = async (taskId: string) => (await ledgerOf(taskId)).audit.find((a) => a.action === 'dispatch')!.detail.job as string;

/** Waits until a terminated workflow is closed, as Temporal reports it. */
async function terminate(taskId: string): Promise<void> {
  const handle = h.client.workflow.getHandle(taskId);
  await handle.terminate('test: terminated by hand');
  expect((await handle.describe()).status.name).toBe('TERMINATED');
}

describe('the reconciler', () => {
  it('settles and releases the tasks whose workflow was terminated, leaves the running one alone, and a second pass changes nothing', async () => {
    const clusterTask = (await gov.submit(cluster('orphan-job'), { requester: 'carol' })).taskId;
    const agentTask = (await gov.submit(agent('orphan-agent'), { requester: 'carol' })).taskId;
    const running = (await gov.submit(agent('alive-agent'), { requester: 'carol' })).taskId;
    // The cluster job runs and has been metered; the agent has taken a step (metered and charged).
    await h.until(clusterTask, (s) => s.state === 'Running' && s.usage.gpuSeconds > 0);
    expect((await gov.step(agentTask, { tokensIn: 1000, tokensOut: 500, contextTokens: 1000, model: 'llama-3-8b' }, { as: 'carol' })).answer).toBe('allow');
    await h.until(running, (s) => s.state === 'Running');
    const job = await jobOf(clusterTask);
    expect(await teamGpusInUse(h.db, h.tenant, 'search', 'H100', '-')).toBe(2);

    await terminate(clusterTask);
    await terminate(agentTask);

    // Within the grace (policies.reconcile.graceSeconds, 120 s): nothing is touched.
    const early = await pass();
    expect(early.settled).toEqual([]);
    expect((await ledgerOf(clusterTask)).reservation.state).toBe('held');

    // Metering stopped with the workflow: what the ledger holds now is what gets charged.
    const before = { cluster: await ledgerOf(clusterTask), agent: await ledgerOf(agentTask), running: await ledgerOf(running), window: await windowOf() };
    expect(before.cluster.reservation).toMatchObject({ state: 'held' });
    expect(before.cluster.cost_micros).toBeGreaterThan(0);
    expect(before.agent.cost_micros).toBeGreaterThan(0);
    expect((await h.backend.status(job))?.phase).toBe('Running');

    const r = await pass({ graceSeconds: 0 });
    expect(r.skipped).toEqual([]);
    expect(r.left).toMatchObject({ running: 1 });
    expect(r.settled.map((s) => s.taskId).sort()).toEqual([agentTask, clusterTask].sort());
    const settledCluster = r.settled.find((s) => s.taskId === clusterTask)!;
    expect(settledCluster).toMatchObject({
      kind: 'training',
      previousState: 'Running',
      state: 'Failed',
      workflowStatus: 'TERMINATED',
      job,
      releasedUsd: before.cluster.reservation.remaining_micros / 1e6,
    });

    // The ledger's state of a hosted task stays Reserved while it runs (docs/architecture.md).
    for (const [taskId, was, wasState] of [
      [clusterTask, before.cluster, 'Running'],
      [agentTask, before.agent, 'Reserved'],
    ] as const) {
      const after = await ledgerOf(taskId);
      // Settled Failed with the reason; charged what was metered and not a cent more; the rest released.
      expect(after.state).toBe('Failed');
      expect(after.finished_at).not.toBeNull();
      expect(after.reasons).toEqual([expect.objectContaining({ code: 'RECONCILED', requested: 'TERMINATED' })]);
      expect(after.reasons[0]!.message).toContain('terminated');
      expect(after.cost_micros).toBe(was.cost_micros);
      expect((await taskUsage(h.db, taskId)).costMicros).toBe(was.cost_micros);
      expect(after.reservation).toMatchObject({ state: 'released', remaining_micros: 0 });
      const rec = after.audit.filter((a) => a.action === 'task.reconciled');
      expect(rec).toHaveLength(1);
      expect(rec[0]).toMatchObject({
        actor: 'govloop-reconciler',
        decision: 'Failed',
        detail: { workflowStatus: 'TERMINATED', previousState: wasState, releasedUsd: was.reservation.remaining_micros / 1e6, costUsd: was.cost_micros / 1e6 },
      });
      expect(after.audit.filter((a) => a.action === 'release')).toHaveLength(1);
    }
    // The budget got back exactly what the two still held; spend is what was metered.
    const window = await windowOf();
    expect(window.reserved).toBe(before.window.reserved - before.cluster.reservation.remaining_micros - before.agent.reservation.remaining_micros);
    expect(window.reserved).toBe(before.running.reservation.remaining_micros);
    expect(window.spent).toBe(before.window.spent);
    // The quota is free, and the Job went before it.
    expect(await teamGpusInUse(h.db, h.tenant, 'search', 'H100', '-')).toBe(0);
    expect((await h.backend.status(job))?.phase).toBe('Deleted');

    // The running task: untouched, in the ledger and in Temporal.
    const alive = await ledgerOf(running);
    expect(alive).toMatchObject({
      state: 'Reserved',
      finished_at: null,
      reservation: { state: 'held', remaining_micros: before.running.reservation.remaining_micros },
    });
    expect(alive.audit.map((a) => a.action)).not.toContain('task.reconciled');
    expect((await h.client.workflow.getHandle(running).describe()).status.name).toBe('RUNNING');
    expect((await gov.step(running, { tokensIn: 10, tokensOut: 5, contextTokens: 10, model: 'llama-3-8b' }, { as: 'carol' })).answer).toBe('allow');

    // A second pass: nothing to settle, nothing written.
    const auditCount = async () =>
      (await h.db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log WHERE task_id = ANY($1)', [[clusterTask, agentTask]])).rows[0]!.n;
    const rowsBefore = await auditCount();
    const again = await pass({ graceSeconds: 0 });
    expect(again.settled).toEqual([]);
    expect(again.orphans).toEqual([]);
    expect(await auditCount()).toBe(rowsBefore);
    expect((await windowOf()).reserved).toBe((await ledgerOf(running)).reservation.remaining_micros);
  });

  it('a dry run lists the orphan and settles nothing', async () => {
    const taskId = (await gov.submit(agent('dry-run'), { requester: 'carol' })).taskId;
    await h.until(taskId, (s) => s.state === 'Running');
    await terminate(taskId);
    const dry = await pass({ graceSeconds: 0, dryRun: true });
    expect(dry.orphans).toEqual([expect.objectContaining({ taskId, workflowStatus: 'TERMINATED', job: null })]);
    expect(dry.settled).toEqual([]);
    expect((await ledgerOf(taskId)).reservation.state).toBe('held');
    // Cleaned up by a real pass, so the next test starts from a settled tenant.
    expect((await pass({ graceSeconds: 0 })).settled.map((s) => s.taskId)).toEqual([taskId]);
  });

  it('runs from its Temporal Schedule, created once and updated in place', async () => {
    expect(
      await ensureReconcileSchedule(h.client, { everySeconds: 3600, taskQueue: h.controlQueue, scheduleId, input: { tenant: h.tenant, graceSeconds: 0 } }),
    ).toEqual({ scheduleId, created: true });
    expect(
      await ensureReconcileSchedule(h.client, { everySeconds: 600, taskQueue: h.controlQueue, scheduleId, input: { tenant: h.tenant, graceSeconds: 0 } }),
    ).toEqual({ scheduleId, created: false });
    const handle = h.client.schedule.getHandle(scheduleId);
    const described = await handle.describe();
    expect(described.spec.intervals?.map((i) => i.every)).toEqual([600_000]);
    expect(described.action).toMatchObject({ type: 'startWorkflow', workflowType: 'reconciler', taskQueue: h.controlQueue });
    expect(described.policies.overlap).toBe('SKIP');

    const taskId = (await gov.submit(agent('scheduled'), { requester: 'carol' })).taskId;
    await h.until(taskId, (s) => s.state === 'Running');
    await terminate(taskId);
    await handle.trigger();
    let run: { workflowId: string; firstExecutionRunId: string } | undefined;
    for (let i = 0; i < 300 && !run; i++) {
      run = (await handle.describe()).info.recentActions.map((a) => a.action.workflow).at(-1);
      if (!run) await new Promise((r) => setTimeout(r, 100));
    }
    expect(run, 'the schedule started a pass').toBeDefined();
    const report = await h.client.workflow.getHandle<typeof reconciler>(run!.workflowId, run!.firstExecutionRunId).result();
    expect(report.settled.map((s) => s.taskId)).toEqual([taskId]);
    expect((await ledgerOf(taskId)).state).toBe('Failed');
  });
});

describe('govloop reconcile', () => {
  it('runs one pass now and prints what it settled; bad flags are named', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'govloop-reconcile-cli-'));
    const env = { TEMPORAL_ADDRESS: inject('temporalAddress'), DATABASE_URL: inject('databaseUrl'), GOVLOOP_DATA_DIR: join(dir, 'state') };
    const scope = ['--tenant', h.tenant, '--task-queue', h.controlQueue];
    try {
      const bad = await govloop(['reconcile', '--grace-seconds', 'soon', '--limit', '0', ...scope], env);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('--grace-seconds: must be a whole number of seconds');
      expect(bad.stderr).toContain('--limit: must be at least 1');

      const taskId = (await gov.submit(agent('cli'), { requester: 'carol' })).taskId;
      await h.until(taskId, (s) => s.state === 'Running');
      await terminate(taskId);

      const held = (await ledgerOf(taskId)).reservation.remaining_micros / 1e6;
      const run = await govloop(['reconcile', '--grace-seconds', '0', ...scope], env);
      expect(run.code, run.stderr).toBe(0);
      const line = run.stdout.split('\n').find((l) => l.includes(taskId));
      expect(line).toMatch(/agent.*Reserved.*Failed.*TERMINATED.*\$0\.00/);
      expect(line).toContain(`$${held.toFixed(2)}`);
      expect(run.stdout).toContain('settled 1');
      expect((await ledgerOf(taskId)).state).toBe('Failed');

      const again = await govloop(['reconcile', '--grace-seconds', '0', '--json', ...scope], env);
      expect(again.code, again.stderr).toBe(0);
      expect(again.json()).toMatchObject({ settled: [], orphans: [], skipped: [] });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('govloop dev', () => {
  it('creates the govloop-reconcile schedule at start, on the control queue at policies.reconcile.everySeconds', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'govloop-reconcile-stack-'));
    const config = testConfig();
    // Its own dev server and embedded ledger: nothing of the shared ones is touched.
    const stack = await startStack({ dataDir, config, headless: true });
    try {
      const d = await stack.client.schedule.getHandle(RECONCILE_SCHEDULE).describe();
      expect(d.spec.intervals?.map((i) => i.every)).toEqual([config.policies.reconcile.everySeconds * 1000]);
      expect(d.action).toMatchObject({ type: 'startWorkflow', workflowType: 'reconciler', taskQueue: 'govloop-control' });
    } finally {
      await stack.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
