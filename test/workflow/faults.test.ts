import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { bundleWorkflows } from '../../workers/worker';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';
import { startWebhook } from '../support/webhook';
import { Intent } from '../../governance/intent';
import { governedTask } from '../../workflows';
import { GovloopClient } from '../../sdk';
import type { ClusterBackend } from '../../cluster/backend';
import { isDataError } from '../../activities/errors';
import { UsageLimitError } from '../../governance/limits';

/**
 * Faults a task must survive without being wedged (issue 11, decision 0020): input the ledger
 * refuses for good ends the task at once; a call whose bounded retries run out asks an operator
 * and goes on once resolved.
 */
let bundle: WorkflowBundleWithSourceMap;
let h: Harness;
let gov: GovloopClient;
let hook: Awaited<ReturnType<typeof startWebhook<Record<string, unknown>>>>;
/** While set, the cluster's API answers like a server that is not there. */
let clusterDown = false;

beforeAll(async () => {
  hook = await startWebhook<Record<string, unknown>>();
  bundle = await bundleWorkflows();
  const config = testConfig();
  config.policies.notifyUrl = hook.url;
  // Three tries of a cluster call (0.5 s + 1 s of backoff) or a ledger call (0.2 s + 0.4 s), then an operator.
  config.policies.retries = { ledgerMaxAttempts: 3, clusterMaxAttempts: 3 };
  h = await createHarness({ bundle, config });
  const real = h.backend;
  // The simulated cluster, with an outage switch on the calls a running task makes.
  h.backend = new Proxy(real, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (clusterDown && key === 'status') return Promise.reject(Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:6443'), { code: 'ECONNREFUSED' }));
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  }) as ClusterBackend as typeof real;
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
});

afterAll(async () => {
  await h?.close();
  hook?.close();
});

describe('data errors', () => {
  it('PostgreSQL says which errors are data errors: NUL in text and a NOT NULL are, a unique race and a lost connection are not', async () => {
    const nul = await h.db.query('SELECT $1::text AS t', ['a\u0000b']).catch((e: unknown) => e);
    expect((nul as { code: string }).code).toBe('22021');
    expect(isDataError(nul)).toBe(true);
    await h.db.query('CREATE TEMP TABLE IF NOT EXISTS fault_probe (k int PRIMARY KEY, v text NOT NULL)');
    const notNull = await h.db.query('INSERT INTO fault_probe VALUES (1, NULL)').catch((e: unknown) => e);
    expect(isDataError(notNull)).toBe(true);
    expect(isDataError(new UsageLimitError('adding $1 to task t would pass the ledger ceiling'))).toBe(true);
    expect(isDataError(Object.assign(new Error('duplicate key'), { code: '23505' }))).toBe(false);
    expect(isDataError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(false);
    expect(isDataError(Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }))).toBe(false);
  });

  it('an intent with a NUL started straight through Temporal ends Failed with DATA_ERROR after one try, and nothing is reserved', async () => {
    const good = Intent.parse(intent(h.tenant, { name: 'nul-model' }));
    const bad = { ...good, attribution: { ...good.attribution, model: 'llama\u0000-3' } };
    const taskId = `nul-model-${Date.now()}`;
    const handle = await h.client.workflow.start(governedTask, {
      taskQueue: h.controlQueue,
      workflowId: taskId,
      args: [{ taskId, intent: bad, requester: 'mallory' }],
    });
    const status = await handle.result();
    expect(status.state).toBe('Failed');
    expect(status.reasons[0]).toMatchObject({ code: 'DATA_ERROR' });
    expect(status.reasons[0]?.message).toMatch(/attribution\.model: must not contain control characters \(\\u0000 at 5\)/);
    // One try: no queued activity started a second time, and the admission ran as a local activity (decision 0032).
    const history = await handle.fetchHistory();
    const starts = history.events!.filter((e) => e.activityTaskStartedEventAttributes);
    expect(starts.map((e) => e.activityTaskStartedEventAttributes!.attempt)).not.toContain(2);
    expect(history.events!.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'admitTask')).toEqual([]);
    const rows = await h.db.query('SELECT count(*)::int AS n FROM reservations WHERE task_id = $1', [taskId]);
    expect(rows.rows).toEqual([{ n: 0 }]);
    const audit = await h.db.query("SELECT decision FROM audit_log WHERE task_id = $1 AND action = 'settle'", [taskId]);
    expect(audit.rows).toEqual([{ decision: 'Failed' }]);
  });
});

describe('bounded retries', () => {
  it('a cluster that stops answering puts the task in NeedsOperator (audited, notified); resolved, it runs on and settles exactly', async () => {
    const a = await gov.submit(
      intent(h.tenant, { name: 'outage', caps: { maxUsd: 1000, maxGpuHours: 40 }, simulation: { durationSeconds: 30_000, tokensPerSecond: 10 } }),
      { requester: 'carol' },
    );
    expect(a.decision).toBe('admitted');
    await h.until(a.taskId, (s) => s.state === 'Running');
    clusterDown = true;
    const waiting = await h.until(a.taskId, (s) => s.state === 'NeedsOperator', 60_000);
    expect(waiting.reasons.at(-1)).toMatchObject({ code: 'RETRIES_EXHAUSTED', requested: 'observeJob' });
    expect(waiting.reasons.at(-1)?.message).toMatch(/ECONNREFUSED/);
    const audit = async () =>
      (
        await h.db.query<{ action: string; decision: string }>(
          "SELECT action, decision FROM audit_log WHERE task_id = $1 AND action IN ('retries.exhausted', 'operator.resolve') ORDER BY id",
          [a.taskId],
        )
      ).rows;
    await expect.poll(audit).toEqual([{ action: 'retries.exhausted', decision: 'needs-operator' }]);
    await expect.poll(() => hook.received.filter((n) => n.taskId === a.taskId && n.event === 'task.needs-operator').length).toBe(1);
    const ledgerState = await h.db.query('SELECT state FROM tasks WHERE task_id = $1', [a.taskId]);
    expect(ledgerState.rows).toEqual([{ state: 'NeedsOperator' }]);

    // The cluster is back; the operator says so, and the task goes on where it was.
    clusterDown = false;
    expect(await gov.resolve(a.taskId, { by: 'oncall-erin', reason: 'API server back after the cert rotation' })).toEqual({ state: 'Running' });
    const done = await gov.result(a.taskId);
    expect(done.state).toBe('Succeeded');
    expect(done.reasons.map((r) => r.code)).not.toContain('RETRIES_EXHAUSTED');
    expect(await audit()).toEqual([
      { action: 'retries.exhausted', decision: 'needs-operator' },
      { action: 'operator.resolve', decision: 'Running' },
    ]);
    // Exact: the 30,000 job-seconds on 2 GPUs, metered once.
    const used = await h.db.query<{ q: number }>("SELECT sum(quantity)::float AS q FROM usage_events WHERE task_id = $1 AND meter = 'gpu_seconds'", [a.taskId]);
    expect(used.rows[0]!.q).toBeCloseTo(60_000, 6);
  });
  it('a ledger that refuses the settle (a local activity call) puts the task in NeedsOperator; fixed and resolved, it settles once and exactly', async () => {
    const a = await gov.submit(
      intent(h.tenant, { name: 'ledger-outage', caps: { maxUsd: 1000, maxGpuHours: 40 }, simulation: { durationSeconds: 600, tokensPerSecond: 10 } }),
      { requester: 'carol' },
    );
    expect(a.decision).toBe('admitted');
    // A real PostgreSQL error on the task's closing write (SQLSTATE 08006, a lost connection: retryable),
    // until the trigger is dropped.
    const trigger = `fault_${a.taskId.replace(/[^a-z0-9]/gi, '_')}`;
    await h.db.query(
      `CREATE FUNCTION ${trigger}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
         RAISE EXCEPTION 'ledger unavailable (injected)' USING ERRCODE = '08006'; END $$`,
    );
    await h.db.query(
      `CREATE TRIGGER ${trigger} BEFORE UPDATE ON tasks FOR EACH ROW
         WHEN (NEW.task_id = '${a.taskId}' AND NEW.finished_at IS NOT NULL) EXECUTE FUNCTION ${trigger}()`,
    );
    try {
      const waiting = await h.until(a.taskId, (s) => s.state === 'NeedsOperator', 60_000);
      expect(waiting.reasons.at(-1)).toMatchObject({ code: 'RETRIES_EXHAUSTED', requested: 'settleTask' });
      expect(waiting.reasons.at(-1)?.message).toMatch(/ledger unavailable \(injected\)/);
      await expect
        .poll(async () => (await h.db.query("SELECT 1 FROM audit_log WHERE task_id = $1 AND action = 'retries.exhausted'", [a.taskId])).rowCount)
        .toBe(1);
    } finally {
      await h.db.query(`DROP TRIGGER IF EXISTS ${trigger} ON tasks`);
      await h.db.query(`DROP FUNCTION IF EXISTS ${trigger}()`);
    }
    expect(await gov.resolve(a.taskId, { by: 'oncall-erin', reason: 'failover finished' })).toEqual({ state: 'Settling' });
    const done = await gov.result(a.taskId);
    expect(done.state).toBe('Succeeded');
    const settles = await h.db.query<{ decision: string }>("SELECT decision FROM audit_log WHERE task_id = $1 AND action = 'settle'", [a.taskId]);
    expect(settles.rows).toEqual([{ decision: 'Succeeded' }]);
    const used = await h.db.query<{ q: number }>("SELECT sum(quantity)::float AS q FROM usage_events WHERE task_id = $1 AND meter = 'gpu_seconds'", [a.taskId]);
    expect(used.rows[0]!.q).toBeCloseTo(1_200, 6);
  });
});
