import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { taskUsage } from '../../ledger/usage';
import { bundleWorkflows } from '../../workers/worker';
import { stepUpdate, cancelSignal, finishSignal, statusQuery } from '../../workflows/messages';
import { type Harness, createHarness, intent } from '../support/harness';
import { localActivityTypes, saveHistories } from '../support/histories';

let bundle: WorkflowBundleWithSourceMap;
let h: Harness;

beforeAll(async () => {
  bundle = await bundleWorkflows();
  h = await createHarness({ bundle });
  await h.startWorkers();
});

afterAll(async () => {
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'governed-task' });
  await h.close();
});

describe('governedTask on a real Temporal server and PostgreSQL', () => {
  it('runs an admitted training job to completion and charges exactly the GPU time it ran', async () => {
    const { taskId, result } = await h.submit(intent(h.tenant, { name: 'train-ok', simulation: { durationSeconds: 900, tokensPerSecond: 50 } }));
    const status = await result();
    expect(status.state).toBe('Succeeded');
    expect(status.decision).toBe('admitted');
    // 2 GPUs x 900 simulated seconds, at $4.00 per H100-hour.
    expect(status.usage.gpuSeconds).toBe(1800);
    expect(status.costUsd).toBeCloseTo(2.0, 6);
    const ledger = await taskUsage(h.db, taskId);
    expect(ledger.gpuSeconds).toBe(1800);
    expect(ledger.tokensProcessed).toBe(45_000);
    expect(ledger.costMicros).toBe(2_000_000);
    const task = await h.db.query('SELECT state, cost_micros FROM tasks WHERE task_id = $1', [taskId]);
    expect(task.rows[0]).toEqual({ state: 'Succeeded', cost_micros: 2_000_000 });
    const reservation = await h.db.query('SELECT state, remaining_micros FROM reservations WHERE task_id = $1', [taskId]);
    expect(reservation.rows[0]).toEqual({ state: 'released', remaining_micros: 0 });
  });

  it('admits and reserves in one local activity: one admitTask in the history, no reserveBudget; both audited, in order', async () => {
    const { taskId, result } = await h.submit(intent(h.tenant, { name: 'one-ask', simulation: { durationSeconds: 60, tokensPerSecond: 0 } }));
    expect((await result()).state).toBe('Succeeded');
    const locals = await localActivityTypes(h.client, taskId);
    expect(locals.filter((a) => a === 'admitTask')).toHaveLength(1);
    expect(locals).not.toContain('reserveBudget');
    const { events } = await h.client.workflow.getHandle(taskId).fetchHistory();
    expect(events!.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'reserveBudget')).toHaveLength(0);
    const audit = await h.db.query<{ action: string; decision: string }>(
      "SELECT action, decision FROM audit_log WHERE task_id = $1 AND action IN ('admission', 'reserve') ORDER BY id",
      [taskId],
    );
    expect(audit.rows).toEqual([
      { action: 'admission', decision: 'admitted' },
      { action: 'reserve', decision: 'held' },
    ]);
    const reservation = await h.db.query('SELECT state FROM reservations WHERE task_id = $1', [taskId]);
    expect(reservation.rows).toEqual([{ state: 'released' }]);
  });

  it('rejects an intent over a policy cap with the cap reason, and reserves nothing', async () => {
    const { taskId, result } = await h.submit(intent(h.tenant, { name: 'too-big', caps: { maxGpuHours: 100_000 } }));
    const status = await result();
    expect(status.state).toBe('Rejected');
    expect(status.reasons).toEqual([
      expect.objectContaining({ code: 'CAP_MAX_GPU_HOURS', limit: 4096, requested: 100_000, policy: 'policies/default#kinds.training.maxGpuHours' }),
    ]);
    const r = await h.db.query('SELECT 1 FROM reservations WHERE task_id = $1', [taskId]);
    expect(r.rowCount).toBe(0);
  });

  it('stops a job at its GPU-hour cap: the cluster stops it at the cap itself, not a poll later, and charges only what ran', async () => {
    // 2 GPUs for 1 simulated hour against a 0.5 GPU-hour cap: a run limit of 900 s. At 2,000x a
    // 100 ms poll is 200 simulated seconds (400 GPU-seconds): a poll-time check alone overshoots.
    const { taskId, result } = await h.submit(
      intent(h.tenant, { name: 'capped', caps: { maxUsd: 100, maxGpuHours: 0.5 }, simulation: { durationSeconds: 3600, tokensPerSecond: 0 } }),
    );
    const status = await result();
    expect(status.state).toBe('CapExceeded');
    expect(status.reasons[0]).toMatchObject({ code: 'CAP_MAX_GPU_HOURS', limit: 0.5, policy: 'task#caps.maxGpuHours' });
    expect(status.reasons[0]!.message).toMatch(/stopped the job at its run limit/);
    expect(status.usage.gpuHours).toBeCloseTo(0.5, 6);
    expect(status.usage.gpuHours).toBeLessThanOrEqual(0.5);
    // $4 per H100-hour: $2 less the micro kept for rounding, and the dispatch audit row says what limit the cluster was given.
    expect(status.costUsd).toBeLessThanOrEqual(2);
    expect(status.costUsd).toBeCloseTo(2, 5);
    const dispatch = await h.db.query<{ detail: { runLimit: { seconds: number; cap: string } } }>(
      "SELECT detail FROM audit_log WHERE task_id = $1 AND action = 'dispatch'",
      [taskId],
    );
    expect(dispatch.rows[0]!.detail.runLimit).toMatchObject({ cap: 'maxGpuHours' });
    // 900 s less the micro-dollar kept for rounding (0.00045 s at 2 x $4/h).
    expect(dispatch.rows[0]!.detail.runLimit.seconds).toBeCloseTo(900, 3);
  });

  it('gates agent steps: allows under the caps, denies the step that crosses maxSteps', async () => {
    const { taskId } = await h.submit(
      intent(h.tenant, {
        kind: 'agent',
        name: 'agent-steps',
        caps: { maxSteps: 3, maxUsd: 5, maxTokens: 100_000, maxContextTokens: 8000 },
        resources: { gpus: 0 },
        tools: ['search.web'],
        simulation: undefined,
      }),
    );
    const handle = h.client.workflow.getHandle(taskId);
    const step = { tokensIn: 1000, tokensOut: 500, contextTokens: 2000 };
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push(await handle.executeUpdate(stepUpdate, { args: [step] }));
    expect(answers.map((a) => a.answer)).toEqual(['allow', 'allow', 'allow', 'deny']);
    expect(answers[3]?.reason?.code).toBe('CAP_MAX_STEPS');
    const status = await handle.result();
    expect(status.state).toBe('CapExceeded');
    const usage = await taskUsage(h.db, taskId);
    // Three allowed steps of llama-3-8b: 3000 in at $0.20/M + 1500 out at $0.40/M.
    expect(usage.tokensIn).toBe(3000);
    expect(usage.tokensOut).toBe(1500);
    expect(usage.costMicros).toBe(600 + 600);
  });

  it('refuses a malformed step with the field that is wrong, and changes nothing', async () => {
    const { taskId } = await h.submit(
      intent(h.tenant, { kind: 'agent', name: 'agent-bad-step', resources: { gpus: 0 }, caps: { maxUsd: 1 }, simulation: undefined }),
    );
    const handle = h.client.workflow.getHandle(taskId);
    await expect(handle.executeUpdate(stepUpdate, { args: [{ tokensIn: -1, tokensOut: 1, contextTokens: 1 }] })).rejects.toMatchObject({
      cause: { message: expect.stringMatching(/tokensIn: Too small/) },
    });
    const ok = await handle.executeUpdate(stepUpdate, { args: [{ tokensIn: 10, tokensOut: 10, contextTokens: 10 }] });
    expect(ok).toMatchObject({ answer: 'allow', step: 1 });
    await handle.signal(finishSignal, { by: 'test' });
    expect((await handle.result()).state).toBe('Succeeded');
  });

  it('cancels a running job: deletes it, charges what ran, releases the rest', async () => {
    const { taskId, result } = await h.submit(
      intent(h.tenant, { name: 'cancel-me', simulation: { durationSeconds: 2_000_000, tokensPerSecond: 0 }, caps: { maxUsd: 1000, maxGpuHours: 4000 } }),
    );
    const handle = h.client.workflow.getHandle(taskId);
    for (;;) {
      const s = await handle.query(statusQuery);
      if (s.state === 'Running' && s.usage.gpuSeconds > 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await handle.signal(cancelSignal, { by: 'alice', reason: 'wrong data' });
    const status = await result();
    expect(status.state).toBe('Cancelled');
    expect(status.reasons[0]?.code).toBe('CANCELLED');
    const job = await h.db.query('SELECT phase FROM sim_jobs WHERE task_id = $1', [taskId]);
    expect(job.rows[0]?.phase).toBe('Deleted');
    const usage = await taskUsage(h.db, taskId);
    expect(usage.costMicros).toBe(Math.round(status.costUsd * 1e6));
    expect(usage.costMicros).toBeGreaterThan(0);
  });

  it('20 concurrent tasks against a budget that fits 5: 5 run, 15 are rejected for budget, spend stays within it', async () => {
    const tenant = `${h.tenant}-b`;
    await setBudget(h.db, { tenant }, 'month', 125, 'test');
    // Each task may cost at most $25 (its reservation); it actually costs 1 GPU x 5.5 h x $4 = $22. The
    // jobs run long enough (10 s at the test speed-up) that none settles, and hands back the rest of
    // its reservation, before all 20 are decided, however busy the machine is.
    const tasks = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        h.submit(
          intent(tenant, {
            name: `conc-${i}`,
            resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
            caps: { maxUsd: 25, maxGpuHours: 10 },
            simulation: { durationSeconds: 19_800, tokensPerSecond: 0 },
          }),
        ),
      ),
    );
    const results = await Promise.all(tasks.map((t) => t.result()));
    const admitted = results.filter((r) => r.decision === 'admitted');
    const rejected = results.filter((r) => r.decision === 'rejected');
    expect(admitted.length).toBe(5);
    expect(rejected.length).toBe(15);
    for (const r of rejected) expect(r.reasons.map((x) => x.code)).toEqual(['BUDGET_EXCEEDED']);
    const [budget] = await showBudgets(h.db, { tenant }, new Date());
    expect(budget!.spentUsd).toBeLessThanOrEqual(125);
    expect(budget!.spentUsd).toBeCloseTo(
      admitted.reduce((s, r) => s + r.costUsd, 0),
      6,
    );
    expect(budget!.reservedUsd).toBe(0);
  });
});
