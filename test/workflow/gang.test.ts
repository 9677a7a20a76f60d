import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IntentInput } from '../../governance/intent';
import { taskUsage } from '../../ledger/usage';
import { bundleWorkflows } from '../../workers/worker';
import { type Harness, cohortHarness, intent } from '../support/harness';

let bundle: WorkflowBundleWithSourceMap;
let h: Harness;

/**
 * Two racks of two 4-GPU H100 nodes, and one A100 node that allows MPS. Teams a and b share the
 * H100s in a cohort (nominal 8 each); team serve has a flat quota of one A100.
 */
beforeAll(async () => {
  bundle = await bundleWorkflows();
  h = await cohortHarness(
    bundle,
    [
      { name: 'r0-n0', gpuType: 'H100', gpus: 4, rack: 'r0', block: 'b0' },
      { name: 'r0-n1', gpuType: 'H100', gpus: 4, rack: 'r0', block: 'b0' },
      { name: 'r1-n0', gpuType: 'H100', gpus: 4, rack: 'r1', block: 'b0' },
      { name: 'r1-n1', gpuType: 'H100', gpus: 4, rack: 'r1', block: 'b0' },
      { name: 'a100-mps', gpuType: 'A100', gpus: 2, rack: 'r2', block: 'b1', sharing: { mps: true } },
    ],
    8,
    (h) => h.config.policies.gpuQuotas.push({ tenant: h.tenant, team: 'serve', gpuType: 'A100', gpus: 1 }),
  );
});

afterAll(async () => {
  await h.close();
});

/** The GPUs a task's job holds, as node/gpu strings, from the simulated cluster's ledger rows. */
async function heldGpus(taskId: string): Promise<string[]> {
  const r = await h.db.query<{ assignments: { node: string; gpus: number[] }[] | null }>('SELECT assignments FROM sim_jobs WHERE task_id = $1', [taskId]);
  return (r.rows[0]?.assignments ?? []).flatMap((a) => a.gpus.map((g) => `${a.node}/${g}`));
}

const rackOf = (gpu: string) => gpu.slice(0, 2);

const h100 = (team: string, name: string, gpus: number, priority: string, durationSeconds: number, more: Partial<IntentInput['resources']> = {}) =>
  intent(h.tenant, {
    name,
    priority,
    attribution: { tenant: h.tenant, team, project: 'p', model: 'llama-3-8b', useCase: 'u' },
    caps: { maxUsd: 1000, maxGpuHours: 100 },
    resources: { gpus, gpuType: 'H100', sharing: 'exclusive', ...more },
    simulation: { durationSeconds, tokensPerSecond: 0 },
  });

describe('gangs and shared GPUs on the simulated cluster, through real Temporal and PostgreSQL', () => {
  it('a reclaiming 8-GPU gang that requires one rack preempts two borrowers of one rack, runs on that rack, and every task finishes', async () => {
    // b fills all four nodes with 4-GPU low-priority jobs: it borrows a's whole nominal 8.
    const bJobs = [];
    for (let i = 0; i < 4; i++) bJobs.push(await h.submit(h100('b', `b-${i}`, 4, 'low', 30_000)));
    await Promise.all(bJobs.map((j) => h.until(j.taskId, (s) => s.state === 'Running')));

    // a wants its 8 back, as one gang inside one rack: only two victims of one rack make room.
    const a = await h.submit(h100('a', 'a-gang', 8, 'normal', 2_000, { topology: { level: 'rack', mode: 'required' } }));
    const done = await Promise.all([a.result(), ...bJobs.map((j) => j.result())]);
    expect(done.map((d) => d.state)).toEqual(['Succeeded', 'Succeeded', 'Succeeded', 'Succeeded', 'Succeeded']);

    const victims = await h.db.query<{ victim_task_id: string }>('SELECT victim_task_id FROM preemptions WHERE preemptor_task_id = $1', [a.taskId]);
    expect(victims.rowCount).toBe(2);
    // Where the victims ran before they were preempted: the dispatch audit rows name their nodes.
    const ran = await h.db.query<{ task_id: string; detail: { nodes: string[] } }>(
      `SELECT task_id, detail FROM audit_log WHERE action = 'dispatch' AND task_id = ANY($1) ORDER BY id`,
      [victims.rows.map((r) => r.victim_task_id)],
    );
    const firstNodes = new Map<string, string[]>();
    for (const r of ran.rows) if (!firstNodes.has(r.task_id)) firstNodes.set(r.task_id, r.detail.nodes);
    const victimRacks = new Set([...firstNodes.values()].flat().map(rackOf));
    expect(victimRacks.size).toBe(1);

    // The gang ran on those two nodes, all 8 GPUs in that one rack, and was charged 8 GPUs × its duration.
    const gangGpus = await heldGpus(a.taskId);
    expect(gangGpus).toHaveLength(8);
    expect(new Set(gangGpus.map(rackOf))).toEqual(victimRacks);
    expect((await taskUsage(h.db, a.taskId)).gpuSeconds).toBe(8 * 2_000);
    const dispatch = await h.db.query<{ detail: { nodes: string[]; placement: string } }>(
      `SELECT detail FROM audit_log WHERE action = 'dispatch' AND task_id = $1`,
      [a.taskId],
    );
    expect(dispatch.rows[0]!.detail.nodes).toHaveLength(2);
    expect(dispatch.rows[0]!.detail.placement).toMatch(/rack/);
  });

  it('MPS shares of one A100 run side by side on one GPU, and count against quota by their fraction', async () => {
    const share = (name: string, gpuMilli: number, durationSeconds: number) =>
      intent(h.tenant, {
        kind: 'inference',
        name,
        attribution: { tenant: h.tenant, team: 'serve', project: 'p', model: 'llama-3-8b', useCase: 'u' },
        caps: { maxUsd: 100, maxGpuHours: 50 },
        resources: { gpus: 1, gpuType: 'A100', sharing: 'mps', gpuMilli },
        simulation: { durationSeconds, tokensPerSecond: 0 },
      });
    // Two halves fill team serve's quota of one A100; a third half waits for quota.
    const x = await h.submit(share('half-x', 500, 10_000));
    const y = await h.submit(share('half-y', 500, 10_000));
    await h.until(x.taskId, (s) => s.state === 'Running');
    await h.until(y.taskId, (s) => s.state === 'Running');
    const z = await h.submit(share('half-z', 500, 1_000));
    const waiting = await h.until(z.taskId, (s) => s.state === 'Queued');
    expect(waiting.reasons.map((r) => r.code)).toContain('GPU_QUOTA_BUSY');

    // x and y share one GPU of the MPS node.
    const [gx, gy] = [await heldGpus(x.taskId), await heldGpus(y.taskId)];
    expect(gx).toHaveLength(1);
    expect(gy).toEqual(gx);
    expect(gx[0]).toMatch(/^a100-mps\//);

    const done = await Promise.all([x.result(), y.result(), z.result()]);
    expect(done.map((d) => d.state)).toEqual(['Succeeded', 'Succeeded', 'Succeeded']);
    // A share is metered in share-seconds of its sharing mode (priced per mps GPU-hour).
    expect((await taskUsage(h.db, z.taskId)).gpuSeconds).toBe(1_000);
  });
});
