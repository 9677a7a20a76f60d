import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IntentInput } from '../../governance/intent';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { taskUsage } from '../../ledger/usage';
import { bundleWorkflows } from '../../workers/worker';
import { preemptSignal } from '../../workflows/messages';
import { startWebhook } from '../support/webhook';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';

/**
 * Issue 15: a cluster task's caps hold at the cluster, not a poll later. At 200x with a 100 ms
 * poll, a poll-time check alone lets a job run 20 simulated seconds per GPU past its cap; the run
 * limit dispatch gives the cluster stops it there. Gangs, MIG, shared GPUs, and a preemption.
 */
let bundle: WorkflowBundleWithSourceMap;
let h: Harness;
let hook: Awaited<ReturnType<typeof startWebhook<Record<string, unknown>>>>;

beforeAll(async () => {
  bundle = await bundleWorkflows();
  hook = await startWebhook<Record<string, unknown>>();
  const config = testConfig({ speedup: 200 });
  config.policies.notifyUrl = hook.url;
  // A 1 s preemption grace (200 s of run time here): the preempted job is suspended while it still
  // runs. With the shipped 30 s, its 9 s of run limit ran out during the grace, and the preemption
  // came too late (PREEMPT_TOO_LATE: nothing suspended).
  config.policies.preemption = { graceMillis: 1000, minRunSeconds: 0 };
  h = await createHarness({ bundle, config });
  await h.startWorkers();
});

afterAll(async () => {
  await h?.close();
  hook?.close();
});

const job = (tenant: string, name: string, over: Partial<IntentInput>) =>
  intent(tenant, { name, simulation: { durationSeconds: 100_000, tokensPerSecond: 0 }, ...over });

async function reservedMicros(taskId: string): Promise<number> {
  const r = await h.db.query<{ amount_micros: number }>('SELECT amount_micros FROM reservations WHERE task_id = $1', [taskId]);
  return Number(r.rows[0]!.amount_micros);
}

describe('cluster tasks stop at their caps (issue 15) on a real Temporal server and PostgreSQL', () => {
  it('an 8-GPU gang, MIG instances and an MPS share each stop at the cap that binds; no task over its caps or its reservation, the budget never over its limit', async () => {
    const tenant = `${h.tenant}-shapes`;
    await setBudget(h.db, { tenant }, 'month', 9, 'test');
    const shapes = [
      // 8 x H100 at $4/h: 2 GPU-hours is 900 s of the gang, $8.
      { name: 'gang', cap: 'CAP_MAX_GPU_HOURS', caps: { maxUsd: 100, maxGpuHours: 2 }, resources: { gpus: 8, gpuType: 'H100', sharing: 'exclusive' as const } },
      // 2 x A100 MIG 1g.10gb at $0.30/h each: $0.05 is 300 s, long before 10 GPU-hours.
      { name: 'mig', cap: 'CAP_MAX_USD', caps: { maxUsd: 0.05, maxGpuHours: 10 }, resources: { gpus: 2, gpuType: 'A100', sharing: 'mig:1g.10gb' as const } },
      // Half an A100 by MPS at $0.80/h: 0.1 GPU-hours is 360 s.
      {
        name: 'mps',
        cap: 'CAP_MAX_GPU_HOURS',
        caps: { maxUsd: 10, maxGpuHours: 0.1 },
        resources: { gpus: 1, gpuType: 'A100', sharing: 'mps' as const, gpuMilli: 500 },
      },
    ];
    const tasks = await Promise.all(shapes.map((s) => h.submit(job(tenant, `cap-${s.name}`, { caps: s.caps, resources: s.resources }))));
    const results = await Promise.all(tasks.map((t) => t.result()));
    for (const [i, s] of shapes.entries()) {
      const r = results[i]!;
      expect(r.state, `${s.name}: ${JSON.stringify(r.reasons)}`).toBe('CapExceeded');
      expect(r.reasons[0]).toMatchObject({ code: s.cap });
      expect(r.reasons[0]!.message).toMatch(/stopped the job at its run limit/);
      expect(r.usage.gpuHours, s.name).toBeLessThanOrEqual(s.caps.maxGpuHours);
      expect(r.costUsd, s.name).toBeLessThanOrEqual(s.caps.maxUsd);
      const charged = (await taskUsage(h.db, tasks[i]!.taskId)).costMicros;
      expect(charged, s.name).toBeLessThanOrEqual(await reservedMicros(tasks[i]!.taskId));
      // It ran up to its cap, not a little: within a second of run time of the binding one.
      if (s.cap === 'CAP_MAX_GPU_HOURS') expect(r.usage.gpuHours).toBeGreaterThan(s.caps.maxGpuHours - s.resources.gpus / 3600);
      else expect(r.costUsd).toBeGreaterThan(s.caps.maxUsd - 0.001);
    }
    const [budget] = await showBudgets(h.db, { tenant }, new Date());
    expect(budget!.spentUsd).toBeLessThanOrEqual(9);
    expect(budget!.spentUsd).toBeCloseTo(
      results.reduce((s, r) => s + r.costUsd, 0),
      6,
    );
    expect(budget!.reservedUsd).toBe(0);
  });

  it('across a preemption: the resumed job gets what its caps still leave, and the whole task stays within them', async () => {
    const tenant = `${h.tenant}-preempt`;
    // 1 x H100, 0.5 GPU-hours: 1,800 s of run time in all, 9 s of wall time at 200x.
    const t = await h.submit(
      job(tenant, 'cap-preempted', { caps: { maxUsd: 100, maxGpuHours: 0.5 }, resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' } }),
    );
    await h.until(t.taskId, (s) => s.state === 'Running' && s.usage.gpuSeconds > 200);
    await h.client.workflow.getHandle(t.taskId).signal(preemptSignal, { by: 'test', reason: 'node maintenance', preemptor: null });
    const done = await t.result();
    expect(done.state).toBe('CapExceeded');
    const preempted = await h.db.query("SELECT 1 FROM audit_log WHERE task_id = $1 AND action = 'preempt'", [t.taskId]);
    expect(preempted.rowCount).toBe(1);
    expect(done.reasons[0]).toMatchObject({ code: 'CAP_MAX_GPU_HOURS' });
    expect(done.usage.gpuHours).toBeLessThanOrEqual(0.5);
    expect(done.usage.gpuHours).toBeGreaterThan(0.5 - 1 / 3600);
    // The first dispatch's limit was the whole cap; the second resume's stop point is what the first run left.
    const audit = await h.db.query<{ detail: { runLimit?: { seconds: number } } }>(
      "SELECT detail FROM audit_log WHERE task_id = $1 AND action = 'dispatch' ORDER BY id",
      [t.taskId],
    );
    expect(audit.rows[0]!.detail.runLimit!.seconds).toBeCloseTo(1800, 2);
    const sim = await h.db.query<{ ran_s: number; stop_at_ran_s: number }>('SELECT ran_s, stop_at_ran_s FROM sim_jobs WHERE task_id = $1', [t.taskId]);
    expect(sim.rows[0]!.ran_s).toBeCloseTo(sim.rows[0]!.stop_at_ran_s, 6);
    expect(sim.rows[0]!.ran_s).toBeLessThanOrEqual(1800);
  });

  it('a price raised mid-run: the usage past the reservation is overage, recorded and alerted, and the budget is charged only what was reserved', async () => {
    const tenant = `${h.tenant}-price`;
    await setBudget(h.db, { tenant }, 'month', 5, 'test');
    // 1 x H100, 0.5 GPU-hours: $2 reserved at $4/h, a run limit of 1,800 s (9 s of wall time).
    const t = await h.submit(
      job(tenant, 'cap-price', { caps: { maxUsd: 100, maxGpuHours: 0.5 }, resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' } }),
    );
    await h.until(t.taskId, (s) => s.state === 'Running' && s.usage.gpuSeconds > 0);
    // The operator's new price-book version, in force from now: three times the price. The worker
    // reads the price book on each observation, as after a config reload.
    const v1 = h.config.priceBook.at(-1)!;
    const triple = (o: Record<string, number>) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v * 3]));
    h.config.priceBook.push({
      version: v1.version + 1,
      effectiveFrom: new Date().toISOString(),
      gpuHourUsd: Object.fromEntries(Object.entries(v1.gpuHourUsd).map(([g, p]) => [g, triple(p)])),
      tokensPerMillionUsd: v1.tokensPerMillionUsd,
    });
    try {
      const done = await t.result();
      expect(done.state).toBe('CapExceeded');
      expect(done.usage.gpuHours).toBeLessThanOrEqual(0.5);
      // What it cost is all there, past the $2 it reserved.
      expect(done.costUsd).toBeGreaterThan(2);
      const [budget] = await showBudgets(h.db, { tenant }, new Date());
      expect(budget!.spentUsd).toBeCloseTo(2, 6);
      const over = await h.db.query<{ micros: number; tenant: string }>(
        'SELECT SUM(micros)::float8 AS micros, MIN(tenant) AS tenant FROM overages WHERE task_id = $1',
        [t.taskId],
      );
      expect(over.rows[0]!.tenant).toBe(tenant);
      expect(over.rows[0]!.micros / 1e6).toBeCloseTo(done.costUsd - 2, 6);
      const alerts = hook.received.filter((m) => m.event === 'task.overage' && m.taskId === t.taskId);
      expect(alerts).toEqual([expect.objectContaining({ runbook: 'runbooks/overage.md' })]);
    } finally {
      h.config.priceBook.pop();
    }
  });
});
