import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { grantAccess } from '../../ledger/approvals';
import { taskUsage } from '../../ledger/usage';
import { GovloopClient, type StepUsage } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';
import { saveHistories } from '../support/histories';

/**
 * Continue-as-new (decision 0022): a task hands over to a fresh run of itself once its history is
 * long, and the next run goes on where the last one stopped. Here the threshold is the lowest the
 * config allows (100 events), so a few seconds of work span several runs.
 */
let bundle: WorkflowBundleWithSourceMap;
let h: Harness;
let gov: GovloopClient;

beforeAll(async () => {
  const config = testConfig();
  config.policies.history = { continueAsNewEvents: 100 };
  bundle = await bundleWorkflows();
  h = await createHarness({ bundle, config });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
  await grantAccess(h.db, { tenant: h.tenant, user: 'alice', role: 'payments-approver', by: 'test' });
});

afterAll(async () => {
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'continue-as-new' });
  await h?.close();
});

/** Every run of a workflow id, oldest first, as Temporal lists them. */
async function runsOf(taskId: string): Promise<{ runId: string; status: string; historyLength: number }[]> {
  const runs: { runId: string; status: string; historyLength: number }[] = [];
  for await (const w of h.client.workflow.list({ query: `WorkflowId = '${taskId}'` }))
    runs.push({ runId: w.runId, status: w.status.name, historyLength: w.historyLength });
  return runs.reverse();
}

describe('a cluster task continues as new while its job runs', () => {
  it('finishes Succeeded across several runs, each under the threshold, and is charged exactly what ran', async () => {
    // 11 simulated hours at 2000x: 20 s of watching the job, a few hundred events.
    const { taskId, result } = await h.submit(
      intent(h.tenant, {
        name: 'can-train',
        resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
        caps: { maxGpuHours: 20, maxUsd: 100 },
        simulation: { durationSeconds: 40_000, tokensPerSecond: 10 },
      }),
    );
    const status = await result();
    expect(status.state).toBe('Succeeded');
    expect(status.runs).toBeGreaterThanOrEqual(2);
    // 1 GPU x 40,000 s at $4.00 per H100-hour.
    expect(status.usage.gpuSeconds).toBe(40_000);
    expect(status.costUsd).toBeCloseTo(44.444444, 6);
    const ledger = await taskUsage(h.db, taskId);
    expect(ledger).toMatchObject({ gpuSeconds: 40_000, tokensProcessed: 400_000, costMicros: 44_444_444 });
    // One job for all runs: a run that takes over watches the job, it does not place another.
    expect((await h.db.query('SELECT count(*)::int AS n FROM sim_jobs WHERE task_id = $1', [taskId])).rows[0]!.n).toBe(1);
    const runs = await runsOf(taskId);
    expect(runs.length).toBe(status.runs);
    expect(runs.slice(0, -1).every((r) => r.status === 'CONTINUED_AS_NEW')).toBe(true);
    expect(runs.at(-1)!.status).toBe('COMPLETED');
    // The hand-over happens at the threshold plus at most one poll round, far from Temporal's 10,240-event warning.
    expect(Math.max(...runs.map((r) => r.historyLength))).toBeLessThan(200);
    const reservation = await h.db.query('SELECT state, remaining_micros FROM reservations WHERE task_id = $1', [taskId]);
    expect(reservation.rows[0]).toEqual({ state: 'released', remaining_micros: 0 });
  });

  it('is cancelled in a later run like in the first: the job deleted, what ran charged, the rest released', async () => {
    const { taskId, result } = await h.submit(
      intent(h.tenant, {
        name: 'can-cancel',
        resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
        caps: { maxGpuHours: 1000, maxUsd: 5000 },
        simulation: { durationSeconds: 1_000_000, tokensPerSecond: 1 },
      }),
    );
    await h.until(taskId, (s) => (s.runs ?? 1) >= 2 && s.state === 'Running', 90_000);
    await gov.cancel(taskId, 'carol', 'no longer needed');
    const status = await result();
    expect(status.state).toBe('Cancelled');
    const ledger = await taskUsage(h.db, taskId);
    expect(ledger.gpuSeconds).toBe(status.usage.gpuSeconds);
    expect(ledger.gpuSeconds).toBeGreaterThan(0);
    const jobs = await h.db.query<{ phase: string }>('SELECT phase FROM sim_jobs WHERE task_id = $1', [taskId]);
    expect(jobs.rows).toEqual([{ phase: 'Deleted' }]);
    const reservation = await h.db.query('SELECT state, remaining_micros FROM reservations WHERE task_id = $1', [taskId]);
    expect(reservation.rows[0]).toEqual({ state: 'released', remaining_micros: 0 });
  });
});

describe('an agent task continues as new between steps', () => {
  const step = (i: number): StepUsage => ({ tokensIn: 100 + (i % 7), tokensOut: 20 + (i % 3), contextTokens: 500, model: 'small-fast' });

  it('keeps its totals, its rollback stack and its decided approvals across runs, and the ledger is exact', async () => {
    const a = await gov.submit(
      intent(h.tenant, {
        kind: 'agent',
        name: 'can-agent',
        resources: { gpus: 0 },
        simulation: undefined,
        tools: ['tickets.update', 'payments.refund'],
        caps: { maxUsd: 50, maxSteps: 200 },
      }),
      { requester: 'carol' },
    );
    expect(a.decision).toBe('admitted');
    const taskId = a.taskId;
    // Run 1: a side effect to undo later, and an approval decided.
    expect(
      (await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'tickets.update', toolArgs: { ticket: 9, status: 'closed' } })).answer,
    ).toBe('allow');
    const held = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'payments.refund', toolArgs: { orderId: 'o-can' } });
    await gov.approve(held.approvalId!, { by: 'alice', reason: 'ok' });
    expect((await gov.waitForApproval(held.approvalId!)).step?.answer).toBe('allow');

    let tokensIn = 2;
    let tokensOut = 2;
    const steps = 150;
    for (let i = 0; i < steps; i++) {
      const s = step(i);
      const answer = await gov.step(taskId, s);
      expect(answer.answer, `step ${i + 3}`).toBe('allow');
      expect(answer.step).toBe(i + 3);
      tokensIn += s.tokensIn;
      tokensOut += s.tokensOut;
    }
    const mid = await gov.status(taskId);
    expect(mid.runs).toBeGreaterThanOrEqual(3);
    // Every run carries the submit call's id in its memo: a submit retry that arrives after a
    // continue-as-new still finds the run it started (decision 0033), not a stranger's.
    const memos = await Promise.all((await runsOf(taskId)).map(async (r) => (await h.client.workflow.getHandle(taskId, r.runId).describe()).memo));
    expect(memos.length).toBeGreaterThanOrEqual(3);
    expect(typeof memos[0]?.submitId).toBe('string');
    for (const m of memos) expect(m).toMatchObject({ submitId: memos[0]!.submitId, requester: 'carol' });
    expect(mid.usage).toMatchObject({ steps: steps + 2, toolCalls: 2, tokensIn, tokensOut });
    // The approval decided in the first run still answers in a later one.
    expect(await gov.waitForApproval(held.approvalId!)).toMatchObject({ state: 'approved', step: { answer: 'allow' } });

    // Cancelled in a later run: the side effects of the first run are undone, newest first.
    await gov.cancel(taskId, 'carol', 'done here');
    const status = await gov.result(taskId);
    expect(status.state).toBe('Cancelled');
    expect(status.compensations).toEqual([
      { step: 2, tool: 'payments.refund', state: 'done', error: null },
      { step: 1, tool: 'tickets.update', state: 'done', error: null },
    ]);
    const ledger = await taskUsage(h.db, taskId);
    expect(ledger).toMatchObject({ tokensIn, tokensOut });
    expect(ledger.costMicros).toBe(Math.round(status.costUsd * 1e6));
    // Each step is metered once: one tokens_in row per step, none lost or doubled at a hand-over.
    const rows = await h.db.query<{ n: number }>("SELECT count(*)::int AS n FROM usage_events WHERE task_id = $1 AND meter = 'tokens_in'", [taskId]);
    expect(rows.rows[0]!.n).toBe(steps + 2);
    const runs = await runsOf(taskId);
    expect(runs.length).toBe(status.runs);
    expect(Math.max(...runs.map((r) => r.historyLength))).toBeLessThan(200);
  });
});
