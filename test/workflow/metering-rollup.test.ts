import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { rollupUsageBy } from '../../ledger/rollups';
import { recordUsage } from '../../ledger/usage';
import { ensureRollupSchedule } from '../../runtime/schedules';
import { bundleWorkflows } from '../../workers/worker';
import { type Harness, createHarness } from '../support/harness';
import { saveHistories } from '../support/histories';

let h: Harness;
const scheduleId = `rollup-test-${randomUUID().slice(0, 8)}`;

beforeAll(async () => {
  h = await createHarness({ bundle: await bundleWorkflows() });
  await h.startWorkers();
});

afterAll(async () => {
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'metering-rollup' });
  await h.client.schedule
    .getHandle(scheduleId)
    .delete()
    .catch(() => undefined);
  await h.close();
});

describe('the meteringRollup Temporal Schedule', () => {
  it('is created once, updated in place, and its runs bring the rollups up to the ledger', async () => {
    expect(await ensureRollupSchedule(h.client, { everySeconds: 3600, taskQueue: h.controlQueue, scheduleId })).toEqual({ scheduleId, created: true });
    // A second worker start finds it and only brings its interval up to date.
    expect(await ensureRollupSchedule(h.client, { everySeconds: 1800, taskQueue: h.controlQueue, scheduleId })).toEqual({ scheduleId, created: false });
    const handle = h.client.schedule.getHandle(scheduleId);
    const described = await handle.describe();
    expect(described.spec.intervals?.map((i) => i.every)).toEqual([1_800_000]);
    expect(described.action).toMatchObject({ type: 'startWorkflow', workflowType: 'meteringRollup', taskQueue: h.controlQueue });

    const at = new Date('2026-03-02T09:15:00Z');
    const attribution = { tenant: h.tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' };
    // Two H100-hours at $4 and a million llama-3-8b input tokens at $0.20.
    await recordUsage(h.db, h.config.priceBook, [
      { key: `${h.tenant}:gpu`, taskId: null, attribution, meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: 7200, occurredAt: at },
      { key: `${h.tenant}:tok`, taskId: null, attribution, meter: 'tokens_in', subject: 'llama-3-8b', quantity: 1_000_000, occurredAt: at },
    ]);
    const from = new Date('2026-03-02T00:00:00Z');
    const to = new Date('2026-03-03T00:00:00Z');
    expect(await rollupUsageBy(h.db, ['team'], from, to, h.tenant)).toEqual([]);

    await handle.trigger();
    let runs: { workflowId: string; firstExecutionRunId: string }[] = [];
    for (let i = 0; i < 200 && runs.length === 0; i++) {
      runs = (await handle.describe()).info.recentActions.map((a) => a.action.workflow);
      if (runs.length === 0) await new Promise((r) => setTimeout(r, 100));
    }
    expect(runs).toHaveLength(1);
    expect(runs[0]!.workflowId).toMatch(new RegExp(`^${scheduleId}-run`));
    const result = await h.client.workflow.getHandle(runs[0]!.workflowId, runs[0]!.firstExecutionRunId).result();
    expect(result.map((r: { grain: string }) => r.grain)).toEqual(['hour', 'day']);

    const rows = await rollupUsageBy(h.db, ['team'], from, to, h.tenant);
    expect(rows).toEqual([{ team: 'search', costUsd: 8.2, gpuHours: 2, tokens: 1_000_000, tokensIn: 1_000_000, tokensOut: 0, events: 2, tasks: 0 }]);
    const hour = await rollupUsageBy(h.db, ['model'], new Date('2026-03-02T09:00:00Z'), new Date('2026-03-02T10:00:00Z'), h.tenant);
    expect(hour).toMatchObject([{ model: 'llama-3-8b', costUsd: 8.2 }]);
  });
});
