/**
 * Issue 13, decision 0030: the leased step gate against the real dev server and PostgreSQL. Low-risk
 * steps are decided in the agent's process and reported in batches; high-risk tools, cap edges and
 * ladder steps take the synchronous gate; an open lease counts as spent; after settle the ledger
 * holds every leased step once, charged as the synchronous gate would have charged it.
 */
import { type ApplicationFailure, WorkflowNotFoundError, WorkflowUpdateFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { setBudget } from '../../ledger/budgets';
import { recordUsage, taskUsage } from '../../ledger/usage';
import { GovloopClient, GovloopInputError, GovloopLeaseReportError, LeasedStepErrors, type StepUsage } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { grantStepLeaseUpdate, reportLeasedStepsUpdate } from '../../workflows/leased-steps';
import { admissionWithRequestUpdate, statusQuery } from '../../workflows/messages';
import { TaskErrors } from '../../workflows/task/errors';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';
import { saveHistories } from '../support/histories';

let h: Harness;
let gov: GovloopClient;

beforeAll(async () => {
  h = await createHarness({ bundle: await bundleWorkflows(), config: testConfig() });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
});

afterAll(async () => {
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'leased-steps' });
  await h.close();
});

const tools = ['search.web', 'db.read', 'tickets.update', 'payments.refund'];
async function startAgent(name: string, caps: Record<string, number> = {}): Promise<string> {
  const a = await gov.submit(intent(h.tenant, { kind: 'agent', name, resources: { gpus: 0 }, simulation: undefined, tools, caps: { maxUsd: 5, ...caps } }), {
    requester: 'carol',
  });
  expect(a.decision).toBe('admitted');
  return a.taskId;
}
const step = (i: number, over: Partial<StepUsage> = {}): StepUsage => ({
  tokensIn: 1000 + 37 * i,
  tokensOut: 400 + 11 * i,
  contextTokens: 2000,
  ...(i % 3 === 0 ? { tool: 'search.web' } : i % 3 === 1 ? { tool: 'db.read' } : {}),
  ...over,
});
const ledgerOf = async (taskId: string) => {
  const u = await taskUsage(h.db, taskId);
  const n = await h.db.query<{ steps: number; events: number }>(
    `SELECT (SELECT count(*)::int FROM agent_steps WHERE task_id = $1 AND decision <> 'deny') AS steps,
            (SELECT count(*)::int FROM usage_events WHERE task_id = $1) AS events`,
    [taskId],
  );
  return { costMicros: u.costMicros, tokensIn: u.tokensIn, tokensOut: u.tokensOut, ...n.rows[0]! };
};
const refusal = async (p: Promise<unknown>) => {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
  const cause = (err as WorkflowUpdateFailedError).cause as ApplicationFailure;
  return { type: cause.type, paths: ((cause.details?.[0] as { path: string }[] | undefined) ?? []).map((d) => d.path) };
};

describe('the leased step gate', () => {
  it('decides low-risk steps in process; after settle the ledger equals the synchronous gate’s, step for step', async () => {
    const [leasedTask, syncTask] = await Promise.all([startAgent('leased'), startAgent('sync')]);
    const gate = gov.leasedSteps(leasedTask, { as: 'carol', batchSize: 8, flushMs: 60_000 });
    const answers = [];
    for (let i = 0; i < 30; i++) answers.push(await gate.step(step(i)));
    for (let i = 0; i < 30; i++) await gov.step(syncTask, step(i), { as: 'carol' });
    expect(answers.every((a) => a.answer === 'allow' && a.leased)).toBe(true);
    // One grant; the steps reported in batches (a batch takes what is queued when it is sent), the rest on close.
    await gate.close();
    expect(gate.stats).toMatchObject({ local: 30, synchronous: 0, grants: 1 });
    expect(gate.stats.reports).toBeGreaterThanOrEqual(2);
    expect(gate.stats.reports).toBeLessThanOrEqual(4);
    await Promise.all([gov.finish(leasedTask, 'carol'), gov.finish(syncTask, 'carol')]);
    const [a, b] = await Promise.all([gov.result(leasedTask), gov.result(syncTask)]);
    expect(a.state).toBe('Succeeded');
    expect(a.usage).toEqual(b.usage);
    expect(a.costUsd).toBe(b.costUsd);
    const [la, lb] = [await ledgerOf(leasedTask), await ledgerOf(syncTask)];
    expect(la).toEqual(lb);
    expect(la).toMatchObject({ steps: 30, events: 60 });
    const audit = await h.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM audit_log WHERE task_id = $1 AND action = 'step' AND detail->>'leaseId' IS NOT NULL`,
      [leasedTask],
    );
    expect(audit.rows[0]!.n).toBe(30);
  });

  it('sends a high-risk tool, a side-effecting tool and a step at a cap edge to the synchronous gate', async () => {
    const taskId = await startAgent('fallback', { maxSteps: 7 });
    const gate = gov.leasedSteps(taskId, { as: 'carol', steps: 3, regrantAfterMs: 600_000 });
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await gate.step(step(2)));
    answers.push(await gate.step(step(2))); // the first lease's 3 steps are used: a fresh lease (3 of the 4 left)
    answers.push(await gate.step(step(2, { tool: 'tickets.update' }))); // side effects: synchronous
    answers.push(await gate.step(step(2))); // a third lease: the 2 steps left
    answers.push(await gate.step(step(2))); // step 7 of 7
    answers.push(await gate.step(step(2))); // step 8: no lease covers it; the synchronous gate denies it
    expect(answers.map((a) => [a.answer, a.leased, a.sync])).toEqual([
      ['allow', true, null],
      ['allow', true, null],
      ['allow', true, null],
      ['allow', true, null],
      ['allow', false, 'high-risk-tool'],
      ['allow', true, null],
      ['allow', true, null],
      ['deny', false, 'cap-edge'],
    ]);
    expect(gate.stats).toMatchObject({ grants: 3, local: 6, synchronous: 2 });
    expect(answers[7]!.reason?.code).toBe('CAP_MAX_STEPS');
    const s = await gov.result(taskId);
    expect(s.state).toBe('CapExceeded');
    expect(s.usage.steps).toBe(7);
    expect((await ledgerOf(taskId)).steps).toBe(7);

    const held = await startAgent('approval');
    const g2 = gov.leasedSteps(held, { as: 'carol' });
    expect((await g2.step(step(2))).leased).toBe(true);
    const refund = await g2.step(step(2, { tool: 'payments.refund' }));
    expect([refund.answer, refund.leased, refund.sync]).toEqual(['await-approval', false, 'high-risk-tool']);
    await gov.cancel(held, 'carol', 'test over');
    expect((await gov.result(held)).state).toBe('Cancelled');
    expect((await ledgerOf(held)).steps).toBe(1);
  });

  it('counts an open lease as spent: the synchronous gate sees its steps; the unused rest comes back at settle', async () => {
    const taskId = await startAgent('held', { maxSteps: 5 });
    const gate = gov.leasedSteps(taskId, { as: 'carol', steps: 4, usd: 0.01, tokens: 20_000, ttlSeconds: 2, flushMs: 60_000 });
    expect((await gate.step(step(2))).leased).toBe(true);
    // Another client's synchronous steps: the lease holds 4 of the 5, so the second one crosses maxSteps.
    const sync = [await gov.step(taskId, step(2), { as: 'carol' }), await gov.step(taskId, step(2), { as: 'carol' })];
    expect(sync.map((a) => a.answer)).toEqual(['allow', 'deny']);
    expect(sync[1]!.reason?.code).toBe('CAP_MAX_STEPS');
    // The leased step is reported after the task stopped (it waits for its open lease), and is metered.
    await gate.close();
    const s = await gov.result(taskId);
    expect([s.state, s.usage.steps]).toEqual(['CapExceeded', 2]);
    expect((await ledgerOf(taskId)).steps).toBe(2);
  });

  it('holds eight concurrent agents to the caps: nothing runs ahead of the reports beyond the lease; the ledger is exact after settle', async () => {
    const taskId = await startAgent('concurrent', { maxSteps: 100 });
    const gate = gov.leasedSteps(taskId, { as: 'carol', steps: 40, batchSize: 16, regrantAfterMs: 0 });
    let allowed = 0;
    let ahead = 0;
    const worker = async (w: number) => {
      for (let i = 0; i < 40; i++) {
        const a = await gate.step(step(w + i * 8, { tool: undefined })).catch(() => null);
        if (a === null || a.answer === 'deny') return;
        allowed++;
        const cur = gate.current;
        // What ran locally and is not reported yet never exceeds the lease, and the task's caps hold with it.
        if (cur) {
          expect(cur.used.steps).toBeLessThanOrEqual(cur.lease.amount.steps);
          expect(cur.used.micros).toBeLessThanOrEqual(cur.lease.amount.micros);
          ahead = Math.max(ahead, cur.used.steps);
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
    await gate.close();
    const s = await gov.result(taskId);
    expect(s.state).toBe('CapExceeded');
    const ledger = await ledgerOf(taskId);
    // Exactly maxSteps allowed across the eight, each metered once; the ledger's cost is the task's.
    expect([allowed, s.usage.steps, ledger.steps]).toEqual([100, 100, 100]);
    expect(ledger.events).toBe(200);
    expect(ledger.costMicros).toBe(Math.round(s.costUsd * 1e6));
    expect(gate.stats.local).toBeGreaterThanOrEqual(80);
    expect(ahead).toBeGreaterThan(0);
  });

  it('applies a re-sent batch once, and refuses a bad batch naming the field, changing nothing', async () => {
    const taskId = await startAgent('reports');
    const handle = h.client.workflow.getHandle(taskId);
    const granted = await handle.executeUpdate(grantStepLeaseUpdate, { args: [{ leaseId: 'reports-l1', steps: 8, as: 'carol' }] });
    expect(granted.granted).toBe(true);
    // Asking again with the same lease id answers the same lease.
    expect(await handle.executeUpdate(grantStepLeaseUpdate, { args: [{ leaseId: 'reports-l1', steps: 8, as: 'carol' }] })).toEqual(granted);
    const batch = { leaseId: 'reports-l1', seq: 1, steps: [step(2), step(5)], as: 'carol' };
    const first = await handle.executeUpdate(reportLeasedStepsUpdate, { args: [batch] });
    const again = await handle.executeUpdate(reportLeasedStepsUpdate, { args: [batch] });
    expect([first.duplicate, again.duplicate]).toEqual([false, true]);
    expect(again.reported).toEqual(first.reported);
    const ledger = await ledgerOf(taskId);
    expect(ledger.steps).toBe(2);
    const before = await handle.query(statusQuery);
    const bad: [Record<string, unknown>, string, string][] = [
      [{ ...batch, seq: 9 }, LeasedStepErrors.InvalidLeaseReport, 'seq'],
      [{ ...batch, seq: 2, steps: [step(2), step(2, { tool: 'payments.refund' })] }, LeasedStepErrors.InvalidLeaseReport, 'steps.1'],
      [{ ...batch, seq: 2, steps: [{ ...step(2), tokensIn: -1 }] }, LeasedStepErrors.InvalidLeaseReport, 'steps.0.tokensIn'],
      // The lease covers 8 steps, 2 reported: the 7th of this batch is one too many.
      [{ ...batch, seq: 2, steps: Array.from({ length: 7 }, () => step(2)) }, LeasedStepErrors.InvalidLeaseReport, 'steps.6'],
      [{ ...batch, leaseId: 'nope' }, LeasedStepErrors.UnknownStepLease, ''],
    ];
    for (const [payload, type, path] of bad) {
      const r = await refusal(handle.executeUpdate(reportLeasedStepsUpdate, { args: [payload as never] }));
      expect(r.type).toBe(type);
      if (path) expect(r.paths).toEqual([path]);
    }
    expect(await handle.query(statusQuery)).toEqual(before);
    expect(await ledgerOf(taskId)).toEqual(ledger);
    // Bad usage in the SDK never leaves the process.
    const gate = gov.leasedSteps(taskId, { as: 'carol' });
    await expect(gate.step({ tokensIn: -5, tokensOut: 0, contextTokens: 0 })).rejects.toBeInstanceOf(GovloopInputError);
    expect(gate.stats).toMatchObject({ grants: 0, reports: 0 });
    // Closing gives back the 6 steps it still held; the task settles with the 2 reported.
    const closed = await handle.executeUpdate(reportLeasedStepsUpdate, { args: [{ leaseId: 'reports-l1', seq: 2, steps: [], close: true, as: 'carol' }] });
    expect(closed.open).toBe(false);
    await gov.finish(taskId, 'carol');
    const s = await gov.result(taskId);
    expect([s.usage.steps, s.usage.tokensIn]).toEqual([2, step(2).tokensIn + step(5).tokensIn]);
  });

  it('the closing report can finish the task: it settles in the same round trip, audited as a finish; finish without close is refused naming the field', async () => {
    const taskId = await startAgent('close-finish');
    const handle = h.client.workflow.getHandle(taskId);
    const gate = gov.leasedSteps(taskId, { as: 'carol', batchSize: 32, flushMs: 60_000 });
    for (let i = 0; i < 4; i++) expect(await gate.step(step(i))).toMatchObject({ answer: 'allow', leased: true });
    const leaseId = gate.current!.lease.leaseId;
    // finish goes with close: a batch that finishes but leaves the lease open is refused, changing nothing.
    const before = await handle.query(statusQuery);
    const r = await refusal(handle.executeUpdate(reportLeasedStepsUpdate, { args: [{ leaseId, seq: 1, steps: [], finish: true, as: 'carol' }] }));
    expect(r).toEqual({ type: LeasedStepErrors.InvalidLeaseReport, paths: ['finish'] });
    expect(await handle.query(statusQuery)).toEqual(before);

    expect(await gate.close({ finish: true })).toEqual({ finished: true });
    const done = await gov.result(taskId);
    expect(done.state).toBe('Succeeded');
    expect(done.usage.steps).toBe(4);
    expect(done.usage.tokensIn).toBe([0, 1, 2, 3].reduce((n, i) => n + step(i).tokensIn, 0));
    expect(await ledgerOf(taskId)).toMatchObject({ steps: 4, costMicros: Math.round(done.costUsd * 1e6) });
    const finishAudit = await h.db.query<{ actor: string; decision: string }>(
      `SELECT actor, decision FROM audit_log WHERE task_id = $1 AND action = 'task.finish'`,
      [taskId],
    );
    expect(finishAudit.rows).toEqual([{ actor: 'carol (unverified)', decision: 'accepted' }]); // auth: none, a typed name
    // The round trips the task took: submit, the grant, the closing report; no finish of its own.
    const history = await handle.fetchHistory();
    const updates = (history.events ?? []).flatMap((e) => e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name ?? []);
    expect(updates).toEqual(['admission', 'grantStepLease', 'reportLeasedSteps']);
    expect((history.events ?? []).some((e) => e.workflowExecutionSignaledEventAttributes)).toBe(false);
  });

  it('close({ finish: true }) with no lease open finishes the task through the finish update', async () => {
    const taskId = await startAgent('close-finish-unleased');
    const gate = gov.leasedSteps(taskId, { as: 'carol' });
    expect(await gate.close({ finish: true })).toEqual({ finished: true });
    expect(gate.stats).toMatchObject({ grants: 0, reports: 0 });
    expect((await gov.result(taskId)).state).toBe('Succeeded');
  });

  it('submit({ leasedSteps }) gets its first lease with the admission: the whole task is two round trips, submit and the closing report', async () => {
    const agent = (name: string, tools_ = tools) =>
      intent(h.tenant, { kind: 'agent', name, resources: { gpus: 0 }, simulation: undefined, tools: tools_, caps: { maxUsd: 5 } });
    const a = await gov.submit(agent('lease-at-submit'), { requester: 'carol', leasedSteps: { as: 'carol', batchSize: 32, flushMs: 60_000 } });
    expect(a.decision).toBe('admitted');
    expect(a.stepLease).toMatchObject({ granted: true });
    const gate = a.leasedSteps;
    expect(gate.current?.lease.leaseId).toBe(a.stepLease?.granted ? a.stepLease.lease.leaseId : null);
    for (let i = 0; i < 4; i++) expect(await gate.step(step(i))).toMatchObject({ answer: 'allow', leased: true });
    expect(await gate.close({ finish: true })).toEqual({ finished: true });
    expect(gate.stats).toMatchObject({ local: 4, synchronous: 0, grants: 1, reports: 1 });
    const done = await gov.result(a.taskId);
    expect([done.state, done.usage.steps]).toEqual(['Succeeded', 4]);
    expect(await ledgerOf(a.taskId)).toMatchObject({ steps: 4, costMicros: Math.round(done.costUsd * 1e6) });
    const history = await h.client.workflow.getHandle(a.taskId).fetchHistory();
    const updates = (history.events ?? []).flatMap((e) => e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name ?? []);
    expect(updates).toEqual(['admission', 'reportLeasedSteps']);

    // Not admitted: no lease; the gate asks for one at its first step, as any gate does.
    const refused = await gov.submit(agent('lease-at-submit-no', ['no.such-tool']), { requester: 'carol', leasedSteps: { as: 'carol' } });
    expect(refused.decision).toBe('rejected');
    expect(refused.stepLease).toMatchObject({ granted: false, why: 'not-running' });
    expect(refused.leasedSteps.current).toBeNull();
    // Bad gate options are refused before anything starts.
    await expect(
      gov.submit(agent('lease-at-submit-bad'), { requester: 'carol', taskId: 'lease-at-submit-bad', leasedSteps: { batchSize: 0 } }),
    ).rejects.toBeInstanceOf(GovloopLeaseReportError);
    await expect(h.client.workflow.getHandle('lease-at-submit-bad').describe()).rejects.toBeInstanceOf(WorkflowNotFoundError);
    // The admission update checks a request it is sent directly, naming the field.
    const running = await startAgent('lease-at-submit-raw');
    const r = await refusal(
      h.client.workflow.getHandle(running).executeUpdate(admissionWithRequestUpdate, { args: [{ stepLease: { leaseId: '', steps: 0 } }] }),
    );
    expect(r.type).toBe(TaskErrors.InvalidRequest);
    expect(r.paths.sort()).toEqual(['stepLease.leaseId', 'stepLease.steps']);
    await gov.finish(running, 'carol');
  });

  it('takes the synchronous gate while the budget ladder degrades the task, and a lease is revoked when the ladder moves', async () => {
    const taskId = await startAgent('ladder', { maxUsd: 1 });
    const gate = gov.leasedSteps(taskId, { as: 'carol', flushMs: 60_000 });
    expect((await gate.step(step(2))).leased).toBe(true);
    // $85 of a $100 tenant budget spent elsewhere, and the controller's step there: throttle (degrade).
    const tenant = h.tenant;
    await setBudget(h.db, { tenant }, 'total', 100, 'test');
    const attribution = { tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' };
    await recordUsage(h.db, h.config.priceBook, [
      { key: `${tenant}:spend`, taskId: null, attribution, meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: 85 * 900, occurredAt: new Date() },
    ]);
    await h.db.query('UPDATE budget_windows SET ladder_step = $2 FROM budgets b WHERE b.id = budget_id AND b.tenant = $1', [tenant, 'throttle']);
    await gate.flush();
    expect(gate.current).toBeNull();
    const next = await gate.step(step(2));
    expect([next.answer, next.fallbackModel, next.leased, next.sync]).toEqual(['degrade', 'small-fast', false, 'ladder']);
    await gate.close();
    await gov.finish(taskId, 'carol');
    const s = await gov.result(taskId);
    expect(s.usage.steps).toBe(2);
    expect((await ledgerOf(taskId)).steps).toBe(2);
  });
});

describe('leases across continue-as-new', () => {
  let h2: Harness;
  let gov2: GovloopClient;
  beforeAll(async () => {
    const config = testConfig();
    config.policies.history = { continueAsNewEvents: 100 };
    h2 = await createHarness({ bundle: await bundleWorkflows(), config });
    await h2.startWorkers();
    gov2 = new GovloopClient(h2.client, h2.controlQueue);
  });
  afterAll(async () => {
    await saveHistories(h2.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h2.controlQueue, prefix: 'leased-steps-can' });
    await h2?.close();
  });

  it('carries open leases into the next run: every leased step is metered once, as the synchronous twin was', async () => {
    const start = async (name: string) => {
      const a = await gov2.submit(intent(h2.tenant, { kind: 'agent', name, resources: { gpus: 0 }, simulation: undefined, tools, caps: { maxUsd: 5 } }), {
        requester: 'carol',
      });
      expect(a.decision).toBe('admitted');
      return a.taskId;
    };
    const [leasedTask, syncTask] = [await start('can-leased'), await start('can-sync')];
    const gate = gov2.leasedSteps(leasedTask, { as: 'carol', steps: 10, batchSize: 2, flushMs: 60_000 });
    for (let i = 0; i < 60; i++) expect((await gate.step(step(i))).answer).toBe('allow');
    for (let i = 0; i < 60; i++) await gov2.step(syncTask, step(i), { as: 'carol' });
    await gate.close();
    await gov2.finish(leasedTask, 'carol');
    await gov2.finish(syncTask, 'carol');
    const [a, b] = [await gov2.result(leasedTask), await gov2.result(syncTask)];
    expect(a.runs).toBeGreaterThanOrEqual(2);
    expect(a.usage).toEqual(b.usage);
    const usage = async (id: string) => ({
      ...(await taskUsage(h2.db, id)),
      steps: (await h2.db.query('SELECT 1 FROM agent_steps WHERE task_id = $1', [id])).rowCount,
    });
    expect(await usage(leasedTask)).toEqual(await usage(syncTask));
    expect(gate.stats.local).toBe(60);
  });
});
