import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendAudit, verifyAudit } from '../../ledger/audit';
import { readAuditCheckpoints } from '../../ledger/audit-checkpoints';
import { loadPublicKey } from '../../identity/signing';
import { ensureAuditCheckpointSchedule } from '../../runtime/schedules';
import { bundleWorkflows } from '../../workers/worker';
import { type Harness, createHarness, testConfig } from '../support/harness';

let h: Harness;
const scheduleId = `audit-checkpoint-test-${randomUUID().slice(0, 8)}`;
const dir = mkdtempSync(join(tmpdir(), 'govloop-audit-schedule-'));
const keyFile = join(dir, 'keys', 'signing.pem');

beforeAll(async () => {
  const config = testConfig();
  config.policies.audit = { checkpointDir: join(dir, 'checkpoints'), signingKeyFile: keyFile, checkpointEverySeconds: 3600 };
  h = await createHarness({ bundle: await bundleWorkflows(), config });
  await h.startWorkers();
});

afterAll(async () => {
  await h.client.schedule
    .getHandle(scheduleId)
    .delete()
    .catch(() => undefined);
  await h.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Waits until the schedule has started `n` runs; returns the newest. */
async function nthRun(n: number): Promise<{ workflowId: string; firstExecutionRunId: string }> {
  const handle = h.client.schedule.getHandle(scheduleId);
  for (let i = 0; i < 300; i++) {
    const runs = (await handle.describe()).info.recentActions.map((a) => a.action.workflow);
    if (runs.length >= n) return runs[runs.length - 1]!;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`schedule ${scheduleId} did not start run ${n} in 30 s`);
}

describe('the auditCheckpoint Temporal Schedule', () => {
  it('is created once, updated in place, and each run appends a signed checkpoint of the head to the configured file', async () => {
    expect(await ensureAuditCheckpointSchedule(h.client, { everySeconds: 3600, taskQueue: h.controlQueue, scheduleId })).toEqual({ scheduleId, created: true });
    expect(await ensureAuditCheckpointSchedule(h.client, { everySeconds: 600, taskQueue: h.controlQueue, scheduleId })).toEqual({ scheduleId, created: false });
    const handle = h.client.schedule.getHandle(scheduleId);
    const described = await handle.describe();
    expect(described.spec.intervals?.map((i) => i.every)).toEqual([600_000]);
    expect(described.action).toMatchObject({ type: 'startWorkflow', workflowType: 'auditCheckpoint', taskQueue: h.controlQueue });

    await appendAudit(h.db, { actor: 'test', taskId: null, action: 'budget.set', decision: 'recorded', detail: { tenant: h.tenant } });
    const { rows } = await h.db.query<{ id: number }>("SELECT max(id)::int AS id FROM audit_log WHERE detail->>'tenant' = $1", [h.tenant]);
    const mine = rows[0]!.id;

    await handle.trigger();
    const run1 = await nthRun(1);
    const first = await h.client.workflow.getHandle(run1.workflowId, run1.firstExecutionRunId).result();
    expect(first).toMatchObject({ written: true, seq: 1, file: join(dir, 'checkpoints', 'audit-checkpoints.jsonl') });
    expect(first.headId).toBeGreaterThanOrEqual(mine);

    // Another row, another run: the next checkpoint follows the first.
    await appendAudit(h.db, { actor: 'test', taskId: null, action: 'budget.set', decision: 'recorded', detail: { tenant: h.tenant, n: 2 } });
    await handle.trigger();
    const run2 = await nthRun(2);
    const second = await h.client.workflow.getHandle(run2.workflowId, run2.firstExecutionRunId).result();
    expect(second).toMatchObject({ written: true, seq: 2, keyId: first.keyId });
    expect(second.headId).toBeGreaterThan(first.headId);

    // Signed with the configured key; the shared ledger agrees with them.
    const checkpoints = await readAuditCheckpoints(join(dir, 'checkpoints'), loadPublicKey(keyFile));
    expect(checkpoints.findings).toEqual([]);
    expect(checkpoints.checkpoints.map((c) => [c.seq, c.headId])).toEqual([
      [1, first.headId],
      [2, second.headId],
    ]);
    expect(checkpoints.checkpoints[1]!.prevHeadId).toBe(first.headId);
    expect(await verifyAudit(h.db, { checkpoints })).toMatchObject({ ok: true, checkpoints: { verified: 2, headId: second.headId } });
  });
});
