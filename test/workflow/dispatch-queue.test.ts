import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { queuedTasks } from '../../ledger/quota';
import { taskUsage } from '../../ledger/usage';
import { bundleWorkflows } from '../../workers/worker';
import { cancelSignal } from '../../workflows/messages';
import { type Harness, cohortHarness, intent } from '../support/harness';
import { localActivityTypes, saveHistories } from '../support/histories';

let bundle: WorkflowBundleWithSourceMap;
let h: Harness;

/**
 * Quota without room: one H100 node of 4 GPUs, and teams a and b with a nominal quota of 4 each.
 * Both are admitted for 4 GPUs, but only one job fits on the cluster; the other waits at dispatch.
 */
beforeAll(async () => {
  bundle = await bundleWorkflows();
  h = await cohortHarness(bundle, [{ name: 'h100-only', gpuType: 'H100', gpus: 4, rack: 'r0', block: 'b0' }], 4);
});

afterAll(async () => {
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'dispatch-queue' });
  await h.close();
});

const job = (team: string, name: string, durationSeconds: number) =>
  intent(h.tenant, {
    name,
    attribution: { tenant: h.tenant, team, project: 'p', model: 'llama-3-8b', useCase: 'u' },
    caps: { maxUsd: 1000, maxGpuHours: 100 },
    resources: { gpus: 4, gpuType: 'H100', sharing: 'exclusive' },
    simulation: { durationSeconds, tokensPerSecond: 0 },
  });

describe('a task admitted by quota that finds no room on the cluster', () => {
  it('waits Queued with GPU_CAPACITY_BUSY, recorded by its dispatch (no local activity of its own), and runs once the node is free', async () => {
    const a = await h.submit(job('a', 'holds-node', 2_000_000));
    await h.until(a.taskId, (s) => s.state === 'Running');
    const b = await h.submit(job('b', 'no-room', 1_000));
    const waiting = await h.until(b.taskId, (s) => s.state === 'Queued');
    expect(waiting.reasons).toEqual([expect.objectContaining({ code: 'GPU_CAPACITY_BUSY' })]);
    // The ledger says so too, as `govloop queue` shows it: written by the dispatch that found no room.
    await expect
      .poll(async () => (await queuedTasks(h.db, h.config.policies, h.tenant)).find((q) => q.taskId === b.taskId))
      .toMatchObject({ state: 'Queued', reasons: [expect.objectContaining({ code: 'GPU_CAPACITY_BUSY' })] });
    expect(await localActivityTypes(h.client, b.taskId)).toEqual(['admitTask']);

    // The node comes free: b is placed, runs its 1,000 s on 4 GPUs and settles.
    await h.client.workflow.getHandle(a.taskId).signal(cancelSignal, { by: 'test', reason: 'make room' });
    expect((await a.result()).state).toBe('Cancelled');
    const done = await b.result();
    expect(done.state).toBe('Succeeded');
    expect((await taskUsage(h.db, b.taskId)).gpuSeconds).toBe(4_000);
    const ledger = await h.db.query<{ state: string }>('SELECT state FROM tasks WHERE task_id = $1', [b.taskId]);
    expect(ledger.rows).toEqual([{ state: 'Succeeded' }]);
  });
});
