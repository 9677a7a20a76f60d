import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { preemptionLosses } from '../../ledger/quota';
import { showback } from '../../ledger/rollups';
import { taskUsage } from '../../ledger/usage';
import { bundleWorkflows } from '../../workers/worker';
import { cancelSignal, preemptTaskUpdate } from '../../workflows/messages';
import { govloop } from '../support/cli';
import { type Harness, cohortHarness, intent } from '../support/harness';
import { localActivityTypes, saveHistories } from '../support/histories';

let bundle: WorkflowBundleWithSourceMap;
let h: Harness;

/**
 * A small cohort on a small cluster: two H100 nodes of 4 GPUs; teams a and b of one tenant with a
 * nominal quota of 4 H100 each. b borrows a's idle 4 for a low-priority job; a then asks for its 4.
 */
beforeAll(async () => {
  bundle = await bundleWorkflows();
  h = await cohortHarness(
    bundle,
    [
      { name: 'h100-a', gpuType: 'H100', gpus: 4, rack: 'r0', block: 'b0' },
      { name: 'h100-b', gpuType: 'H100', gpus: 4, rack: 'r0', block: 'b0' },
    ],
    4,
    // A queued task's unwoken recheck far beyond any wait below: a queued task that gets in, got in
    // because a release woke it (the requeue signal), not because it asked again on its own.
    (h) => {
      h.config.simulation.queueRecheckMillis = 3_600_000;
    },
  );
});

afterAll(async () => {
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'preemption' });
  await h.close();
});

const job = (team: string, name: string, priority: string, durationSeconds: number) =>
  intent(h.tenant, {
    name,
    priority,
    attribution: { tenant: h.tenant, team, project: 'p', model: 'llama-3-8b', useCase: 'u' },
    caps: { maxUsd: 1000, maxGpuHours: 100 },
    resources: { gpus: 4, gpuType: 'H100', sharing: 'exclusive' },
    simulation: { durationSeconds, tokensPerSecond: 0 },
  });

/** The GovState values a task went through, from its history (consecutive repeats folded). */
async function govStates(taskId: string): Promise<string[]> {
  const history = await h.client.workflow.getHandle(taskId).fetchHistory();
  const out: string[] = [];
  for (const e of history.events ?? []) {
    const p = e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.GovState;
    if (!p?.data) continue;
    const v = JSON.parse(Buffer.from(p.data).toString()) as string | string[];
    const s = Array.isArray(v) ? v[0]! : v;
    if (out.at(-1) !== s) out.push(s);
  }
  return out;
}

async function simJob(taskId: string) {
  const r = await h.db.query<{ progress_s: number; checkpoint_s: number; ran_s: number; lost_s: number; gpus: number; phase: string }>(
    'SELECT progress_s, checkpoint_s, ran_s, lost_s, gpus, phase FROM sim_jobs WHERE task_id = $1',
    [taskId],
  );
  return r.rows[0]!;
}

describe('quotas and preemption on a real Temporal server and PostgreSQL', () => {
  it('borrowing, then reclaim: the borrower (not the higher-priority job) is preempted, resumes from its checkpoint and finishes; GPU-seconds charged equal what ran', async () => {
    // Long enough (25 s and 15 s at the test speed-up) that both still run when a asks, however busy the machine.
    const high = await h.submit(job('b', 'b-high', 'high', 50_000));
    await h.until(high.taskId, (s) => s.state === 'Running');
    const low = await h.submit(job('b', 'b-low', 'low', 30_000));
    // b borrows a's idle quota for its low-priority job.
    await h.until(low.taskId, (s) => s.state === 'Running' && s.usage.gpuSeconds > 0);
    const admission = await h.db.query<{ detail: { quota?: string; borrowed?: number } }>(
      `SELECT detail FROM audit_log WHERE task_id = $1 AND action = 'admission' AND decision = 'admitted'`,
      [low.taskId],
    );
    expect(admission.rows.at(-1)?.detail).toMatchObject({ quota: 'borrowing', borrowed: 4 });

    const a = await h.submit(job('a', 'a-reclaim', 'normal', 2_000));
    const [aDone, lowDone, highDone] = await Promise.all([a.result(), low.result(), high.result()]);
    expect([aDone.state, lowDone.state, highDone.state]).toEqual(['Succeeded', 'Succeeded', 'Succeeded']);

    // The GovState trail: the victim went Running → Preempted → (Queued) → Reserved → Running → Succeeded.
    const lowStates = await govStates(low.taskId);
    expect(lowStates.join(',')).toMatch(/Running,Preempted,(Queued,)?Reserved,Running,Succeeded$/);
    expect(lowStates.filter((s) => s === 'Preempted')).toHaveLength(1);
    expect(await govStates(high.taskId)).not.toContain('Preempted');
    const aStates = await govStates(a.taskId);
    expect(aStates).toContain('Queued');
    expect(aStates.at(-1)).toBe('Succeeded');

    // The audit trail names the preemptor; a's admission says whom it preempted and why.
    const audit = await h.db.query<{ actor: string; detail: { preemptor: string; preemptorTeam: string; lostGpuSeconds: number; round: number } }>(
      `SELECT actor, detail FROM audit_log WHERE task_id = $1 AND action = 'preempt' ORDER BY id`,
      [low.taskId],
    );
    expect(audit.rows).toHaveLength(1);
    expect(audit.rows[0]).toMatchObject({ actor: 'govloop', detail: { preemptor: a.taskId, preemptorTeam: `${h.tenant}/a`, round: 1 } });
    const aAdmission = await h.db.query<{ detail: { preempt?: { taskId: string; why: string }[] } }>(
      `SELECT detail FROM audit_log WHERE task_id = $1 AND action = 'admission' ORDER BY id`,
      [a.taskId],
    );
    const preempted = aAdmission.rows.flatMap((r) => r.detail.preempt ?? []);
    expect(new Set(preempted.map((p) => p.taskId))).toEqual(new Set([low.taskId]));
    expect(preempted[0]?.why).toBe('reclaim');
    const none = await h.db.query('SELECT 1 FROM preemptions WHERE victim_task_id = $1', [high.taskId]);
    expect(none.rowCount).toBe(0);

    // Resumed from its checkpoint: all of its work done once, plus only what ran after the checkpoint.
    const sim = await simJob(low.taskId);
    expect(sim.phase).toBe('Succeeded');
    expect(sim.progress_s).toBe(30_000);
    expect(sim.checkpoint_s).toBeGreaterThan(0);
    expect(sim.lost_s).toBeGreaterThan(0);
    expect(sim.lost_s).toBeLessThan(sim.checkpoint_s + 4_000);
    expect(sim.ran_s).toBeCloseTo(30_000 + sim.lost_s, 6);

    // GPU-seconds charged equal what ran, for every task; the lost part is shown against team a.
    const lowUsage = await taskUsage(h.db, low.taskId);
    expect(lowUsage.gpuSeconds).toBeCloseTo(sim.ran_s * 4, 3);
    expect(lowDone.usage.gpuSeconds).toBeCloseTo(sim.ran_s * 4, 3);
    expect((await taskUsage(h.db, a.taskId)).gpuSeconds).toBe(2_000 * 4);
    expect((await taskUsage(h.db, high.taskId)).gpuSeconds).toBe(50_000 * 4);
    const row = await h.db.query<{ lost_gpu_seconds: number; preemptor_task_id: string; preemptor_team: string }>(
      'SELECT lost_gpu_seconds, preemptor_task_id, preemptor_team FROM preemptions WHERE victim_task_id = $1',
      [low.taskId],
    );
    expect(row.rows[0]).toMatchObject({ preemptor_task_id: a.taskId, preemptor_team: 'a' });
    expect(row.rows[0]!.lost_gpu_seconds).toBeCloseTo(sim.lost_s * 4, 3);
    expect(audit.rows[0]!.detail.lostGpuSeconds).toBeCloseTo(sim.lost_s * 4, 3);
    const losses = await preemptionLosses(h.db, h.tenant);
    expect(losses).toEqual([{ preemptorTeam: `${h.tenant}/a`, preemptions: 1, lostGpuHours: expect.closeTo((sim.lost_s * 4) / 3600, 6) }]);
    // Chargeback: the showback report puts the lost work on the preemptor's team, at the GPU-hour price.
    const day = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate()));
    const report = await showback(h.db, { by: ['team'], from: day, to: new Date(day.getTime() + 86_400_000), tenant: h.tenant, priceBook: h.config.priceBook });
    expect(report.preemptionLosses).toEqual([
      {
        tenant: h.tenant,
        team: 'a',
        preemptions: 1,
        gpuHours: expect.closeTo((sim.lost_s * 4) / 3600, 6),
        costUsd: expect.closeTo(((sim.lost_s * 4) / 3600) * 4, 5),
      },
    ]);
    // Nothing stays reserved or open.
    const open = await h.db.query('SELECT 1 FROM preemptions WHERE victim_task_id = ANY($1) AND suspended_at IS NULL', [[low.taskId, high.taskId, a.taskId]]);
    expect(open.rowCount).toBe(0);
  });

  const cliEnv = () => ({ TEMPORAL_ADDRESS: inject('temporalAddress'), DATABASE_URL: inject('databaseUrl'), GOVLOOP_TASK_QUEUE: h.controlQueue });

  it('govloop preempt: an operator preempts a running job, audited with who and why; it is requeued and resumes from its checkpoint', async () => {
    const bad = await govloop(['preempt', 'no-such-task', '--as', 'alice'], cliEnv());
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--reason: required/);
    // Runs until cancelled, so the CLI (a separate process, slow to start on a busy machine) is never late.
    const t = await h.submit(job('a', 'op-preempt', 'normal', 2_000_000));
    await h.until(t.taskId, (s) => s.state === 'Running' && s.usage.gpuSeconds > 0);
    const r = await govloop(['preempt', t.taskId, '--as', 'alice', '--reason', 'node maintenance', '--json'], cliEnv());
    expect(r.code, r.stderr).toBe(0);
    expect(r.json()).toMatchObject({ taskId: t.taskId, requested: true, by: 'alice (unverified)' });
    // Back to Running, on from its checkpoint.
    await h.until(t.taskId, (s) => s.state === 'Running' && s.reasons.length === 0 && s.nodes.length > 0, 60_000);
    for (let sim = await simJob(t.taskId); !(sim.phase === 'Running' && sim.lost_s > 0 && sim.progress_s > sim.checkpoint_s); sim = await simJob(t.taskId)) {
      await new Promise((r) => setTimeout(r, 50));
    }
    await h.client.workflow.getHandle(t.taskId).signal(cancelSignal, { by: 'test', reason: 'done' });
    const done = await t.result();
    expect(done.state).toBe('Cancelled');
    expect((await govStates(t.taskId)).join(',')).toMatch(/Running,Preempted,(Queued,)?Reserved,Running,Cancelled$/);
    const audit = await h.db.query<{ actor: string; action: string; detail: { reason: string; preemptor?: string | null } }>(
      `SELECT actor, action, detail FROM audit_log WHERE task_id = $1 AND (action LIKE 'preempt%' OR action = 'task.preempt') ORDER BY id`,
      [t.taskId],
    );
    expect(audit.rows).toEqual([
      expect.objectContaining({ actor: 'alice (unverified)', action: 'task.preempt', detail: { via: 'platform-admin', reason: 'node maintenance' } }),
      expect.objectContaining({
        actor: 'alice (unverified)',
        action: 'preempt',
        detail: expect.objectContaining({ reason: 'node maintenance', preemptor: null }),
      }),
    ]);
    // A finished task cannot be preempted: exit 3 with the state.
    const late = await govloop(['preempt', t.taskId, '--as', 'alice', '--reason', 'again'], cliEnv());
    expect(late.code).toBe(3);
    expect(late.stderr).toMatch(/is Cancelled/);
    const sim = await simJob(t.taskId);
    expect(sim.ran_s).toBeCloseTo(sim.progress_s + sim.lost_s, 6);
    expect((await taskUsage(h.db, t.taskId)).gpuSeconds).toBeCloseTo(sim.ran_s * 4, 3);
  });

  it('a preemption whose job ends during the grace period: nothing suspended, the task ends Succeeded and says PREEMPT_TOO_LATE', async () => {
    // The cluster needs a 10 s grace (as Kubernetes needs its kubelet's minute); the job has at most
    // 5 s (10,000 s at the test speed-up) to run once the preempt is asked: it ends within the grace.
    h.backend.checkpointGraceMillis = 10_000;
    try {
      const t = await h.submit(job('a', 'late-preempt', 'normal', 10_000));
      await h.until(t.taskId, (s) => s.state === 'Running');
      const answer = await h.client.workflow.getHandle(t.taskId).executeUpdate(preemptTaskUpdate, { args: [{ reason: 'drain the node', as: 'alice' }] });
      expect(answer).toMatchObject({ accepted: true });
      const done = await t.result();
      expect(done.state).toBe('Succeeded');
      expect(done.reasons).toEqual([expect.objectContaining({ code: 'PREEMPT_TOO_LATE', policy: 'operator' })]);
      expect(done.reasons[0]!.message).toMatch(/preemption by alice.*\(drain the node\) not carried out: the job succeeded/);
      // Never Preempted, no preemption in the ledger, and the job ran its whole length once: nothing lost.
      expect(await govStates(t.taskId)).not.toContain('Preempted');
      const rows = await h.db.query('SELECT 1 FROM preemptions WHERE victim_task_id = $1', [t.taskId]);
      expect(rows.rowCount).toBe(0);
      const sim = await simJob(t.taskId);
      expect({ phase: sim.phase, ran: sim.ran_s, lost: sim.lost_s }).toEqual({ phase: 'Succeeded', ran: 10_000, lost: 0 });
      expect((await taskUsage(h.db, t.taskId)).gpuSeconds).toBe(10_000 * 4);
    } finally {
      delete h.backend.checkpointGraceMillis;
    }
  });

  it("a reclaim whose victim's job ends during the grace period: the preemption is closed as dropped, and no team is charged a preemption for it", async () => {
    // A 20 s grace; b's borrowing job has 10 s (20,000 s at the test speed-up) to run in all, so it
    // ends within the grace of a preemption asked while it runs.
    h.backend.checkpointGraceMillis = 20_000;
    try {
      const day = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate()));
      const report = () =>
        showback(h.db, { by: ['team'], from: day, to: new Date(day.getTime() + 86_400_000), tenant: h.tenant, priceBook: h.config.priceBook });
      const lossesBefore = (await report()).preemptionLosses;
      const high = await h.submit(job('b', 'late-high', 'high', 50_000));
      await h.until(high.taskId, (s) => s.state === 'Running');
      const low = await h.submit(job('b', 'late-low', 'low', 20_000));
      await h.until(low.taskId, (s) => s.state === 'Running' && s.usage.gpuSeconds > 0);
      const a = await h.submit(job('a', 'late-reclaim', 'normal', 2_000));
      const [aDone, lowDone, highDone] = await Promise.all([a.result(), low.result(), high.result()]);
      expect([aDone.state, lowDone.state, highDone.state]).toEqual(['Succeeded', 'Succeeded', 'Succeeded']);
      // a's admission ordered the preemption; the victim's job ended first.
      const ordered = await h.db.query<{ detail: { preempt?: { taskId: string }[] } }>(
        `SELECT detail FROM audit_log WHERE task_id = $1 AND action = 'admission' ORDER BY id`,
        [a.taskId],
      );
      expect(ordered.rows.flatMap((r) => r.detail.preempt ?? []).map((p) => p.taskId)).toContain(low.taskId);
      expect(lowDone.reasons).toEqual([expect.objectContaining({ code: 'PREEMPT_TOO_LATE' })]);
      expect(await govStates(low.taskId)).not.toContain('Preempted');
      const sim = await simJob(low.taskId);
      expect({ phase: sim.phase, ran: sim.ran_s, lost: sim.lost_s }).toEqual({ phase: 'Succeeded', ran: 20_000, lost: 0 });
      // The row is kept (who ordered it, and when) and closed as dropped when the victim finished.
      const rows = await h.db.query<{ preemptor_task_id: string; suspended_at: Date | null; dropped_at: Date | null; lost_gpu_seconds: number }>(
        'SELECT preemptor_task_id, suspended_at, dropped_at, lost_gpu_seconds FROM preemptions WHERE victim_task_id = $1',
        [low.taskId],
      );
      expect(rows.rows).toEqual([{ preemptor_task_id: a.taskId, suspended_at: null, dropped_at: expect.any(Date), lost_gpu_seconds: 0 }]);
      // Team a is charged no preemption for it: the period report counts what it did before.
      expect((await report()).preemptionLosses).toEqual(lossesBefore);
    } finally {
      delete h.backend.checkpointGraceMillis;
    }
  });

  it('govloop queue: a request that fits no quota waits with its position and reason', async () => {
    // a and b each use their nominal 4; a second job of a can neither borrow nor preempt (same priority).
    const a1 = await h.submit(job('a', 'q-a1', 'normal', 2_000_000));
    const b1 = await h.submit(job('b', 'q-b1', 'normal', 2_000_000));
    await h.until(a1.taskId, (s) => s.state === 'Running');
    await h.until(b1.taskId, (s) => s.state === 'Running');
    const a2 = await h.submit(job('a', 'q-a2', 'normal', 600));
    await h.until(a2.taskId, (s) => s.state === 'Queued');
    const r = await govloop(['queue', '--tenant', h.tenant, '--json'], cliEnv());
    expect(r.code, r.stderr).toBe(0);
    const rows = r.json() as { taskId: string; position: number; state: string; reasons: { code: string }[] }[];
    expect(rows).toEqual([
      expect.objectContaining({ taskId: a2.taskId, state: 'Queued', position: 1, reasons: [expect.objectContaining({ code: 'GPU_QUOTA_BUSY' })] }),
    ]);
    // Admission, its reservation and the Queued record were one local activity (decision 0035).
    expect(await localActivityTypes(h.client, a2.taskId)).toEqual(['admitTask']);
    for (const t of [a2, a1, b1]) await h.client.workflow.getHandle(t.taskId).signal(cancelSignal, { by: 'test', reason: 'done' });
    expect((await a2.result()).state).toBe('Cancelled');
    await Promise.all([a1.result(), b1.result()]);
  });

  it('a queued request is woken when the task holding its quota ends, and runs; its recheck (an hour here) never had to come', async () => {
    const a1 = await h.submit(job('a', 'w-a1', 'normal', 2_000_000));
    const b1 = await h.submit(job('b', 'w-b1', 'normal', 2_000_000));
    await h.until(a1.taskId, (s) => s.state === 'Running');
    await h.until(b1.taskId, (s) => s.state === 'Running');
    const a2 = await h.submit(job('a', 'w-a2', 'normal', 600));
    const queued = await h.until(a2.taskId, (s) => s.state === 'Queued');
    expect(queued.reasons.map((r) => r.code)).toEqual(['GPU_QUOTA_BUSY']);

    // a1 ends: its 4 GPUs are team a's again, and a2 is told so.
    await h.client.workflow.getHandle(a1.taskId).signal(cancelSignal, { by: 'test', reason: 'make room' });
    expect((await a1.result()).state).toBe('Cancelled');
    expect((await a2.result()).state).toBe('Succeeded');

    // The wake in a2's history names the task that released the GPUs.
    const history = await h.client.workflow.getHandle(a2.taskId).fetchHistory();
    const wakes = (history.events ?? [])
      .filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'requeue')
      .map((e) => JSON.parse(Buffer.from(e.workflowExecutionSignaledEventAttributes!.input!.payloads![0]!.data!).toString()) as { releasedBy: string });
    expect(wakes).toContainEqual({ releasedBy: a1.taskId });
    // It asked twice: queued (and, the quota read again still full, no quick second ask), then admitted once woken.
    const asks = await h.db.query<{ decision: string }>(`SELECT decision FROM audit_log WHERE task_id = $1 AND action = 'admission' ORDER BY id`, [a2.taskId]);
    expect(asks.rows.map((r) => r.decision)).toEqual(['queued', 'admitted']);

    await h.client.workflow.getHandle(b1.taskId).signal(cancelSignal, { by: 'test', reason: 'done' });
    await b1.result();
  });

  it('ignores a requeue signal with a bad payload: the task goes on as it was', async () => {
    const a1 = await h.submit(job('a', 'bad-wake', 'normal', 2_000_000));
    await h.until(a1.taskId, (s) => s.state === 'Running');
    const handle = h.client.workflow.getHandle(a1.taskId);
    await handle.signal('requeue', { releasedBy: 42, extra: true });
    await handle.signal('requeue');
    // Still running, and still answering: the bad payloads were dropped, not thrown.
    expect((await h.until(a1.taskId, (s) => s.state === 'Running')).state).toBe('Running');
    await handle.signal(cancelSignal, { by: 'test', reason: 'done' });
    expect((await a1.result()).state).toBe('Cancelled');
  });
});
