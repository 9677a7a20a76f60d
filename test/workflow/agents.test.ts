import { type ApplicationFailure, WorkflowUpdateFailedError } from '@temporalio/client';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { ToolEntry } from '../../config/schema';
import { grantAccess } from '../../ledger/approvals';
import { taskUsage } from '../../ledger/usage';
import { type StepUsage, GovloopClient, GovloopInputError } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { TaskErrors } from '../../workflows/governed-task';
import { statusQuery, stepUpdate } from '../../workflows/messages';
import { GovState as GovStateKey } from '../../workflows/search-attributes';
import { type Webhook, startWebhook } from '../support/webhook';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';
import { saveHistories } from '../support/histories';

let bundle: WorkflowBundleWithSourceMap;
let h: Harness;
let gov: GovloopClient;
let hook: Webhook<Record<string, unknown>>;
let notifications: Record<string, unknown>[] = [];

const refund = (over: Partial<ToolEntry>): ToolEntry => ({
  risk: 'high',
  sideEffect: 'external',
  approvers: [{ roles: ['payments-approver'] }, { roles: ['payments-lead'] }],
  approvalTtlSeconds: 60,
  escalateAfterSeconds: 30,
  compensation: 'payments.reverse',
  definitionTokens: 300,
  ...over,
});

beforeAll(async () => {
  hook = await startWebhook<Record<string, unknown>>();
  notifications = hook.received;
  const config = testConfig();
  config.policies.compensation = { maxAttempts: 2, initialIntervalMs: 100 };
  config.policies.notifyUrl = hook.url;
  // Test tools with short clocks: escalation after 1.5 s and expiry after 4 s; expiry after 1.5 s.
  config.tools.tools['payments.quick_refund'] = refund({ approvalTtlSeconds: 4, escalateAfterSeconds: 1.5 });
  config.tools.tools['payments.flash_refund'] = refund({ approvalTtlSeconds: 1.5, escalateAfterSeconds: 1.5 });
  bundle = await bundleWorkflows();
  h = await createHarness({ bundle, config });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
  await grantAccess(h.db, { tenant: h.tenant, user: 'alice', role: 'payments-approver', by: 'test' });
  await grantAccess(h.db, { tenant: h.tenant, user: 'bob', role: 'payments-lead', by: 'test' });
});

afterAll(async () => {
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'agents' });
  await h.close();
  hook.close();
});

const tools = ['search.web', 'db.read', 'tickets.update', 'payments.refund', 'payments.quick_refund', 'payments.flash_refund'];

async function startAgent(name: string, caps: Record<string, number>, over: Record<string, unknown> = {}): Promise<string> {
  const a = await gov.submit(
    intent(h.tenant, { kind: 'agent', name, resources: { gpus: 0 }, simulation: undefined, tools, caps: { maxUsd: 5, ...caps }, ...over }),
    { requester: 'carol' },
  );
  expect(a.decision).toBe('admitted');
  return a.taskId;
}

const waitForState = async (taskId: string, want: string) => {
  for (let i = 0; i < 300; i++) {
    const s = await h.client.workflow.getHandle(taskId).query(statusQuery);
    if (s.state === want) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${taskId} never reached ${want}`);
};

const auditOf = async (taskId: string) =>
  (
    await h.db.query<{ action: string; decision: string; actor: string; detail: any }>(
      'SELECT action, decision, actor, detail FROM audit_log WHERE task_id = $1 ORDER BY id',
      [taskId],
    )
  ).rows;

describe('the step gate stops an agent at exactly the step that crosses a cap', () => {
  const step = (over: Partial<StepUsage> = {}): StepUsage => ({ tokensIn: 1000, tokensOut: 500, contextTokens: 1000, model: 'small-fast', ...over });
  const cases: { cap: string; caps: Record<string, number>; steps: StepUsage[]; wantAnswers: string[]; wantCode: string }[] = [
    {
      cap: 'maxSteps',
      caps: { maxSteps: 3 },
      steps: [step(), step(), step(), step()],
      wantAnswers: ['allow', 'allow', 'allow', 'deny'],
      wantCode: 'CAP_MAX_STEPS',
    },
    {
      cap: 'maxToolCalls',
      caps: { maxToolCalls: 2 },
      steps: [step({ tool: 'search.web' }), step(), step({ tool: 'db.read' }), step({ tool: 'search.web' })],
      wantAnswers: ['allow', 'allow', 'allow', 'deny'],
      wantCode: 'CAP_MAX_TOOL_CALLS',
    },
    {
      // The declared tools' definitions (180 + 240 + 200 + 3 x 300 = 1,520 tokens) count toward the context:
      // 6,000 + 1,520 fits under 8,000, 7,000 + 1,520 does not.
      cap: 'maxContextTokens',
      caps: { maxContextTokens: 8000 },
      steps: [step({ contextTokens: 2000 }), step({ contextTokens: 6000 }), step({ contextTokens: 7000 })],
      wantAnswers: ['allow', 'allow', 'deny'],
      wantCode: 'CAP_MAX_CONTEXT_TOKENS',
    },
    { cap: 'maxTokens', caps: { maxTokens: 4000 }, steps: [step(), step(), step()], wantAnswers: ['allow', 'allow', 'deny'], wantCode: 'CAP_MAX_TOKENS' },
    {
      // On the fallback model itself there is nothing cheaper to degrade to: $0.02 a step against $0.05.
      cap: 'maxUsd',
      caps: { maxUsd: 0.05, maxTokens: 2_000_000 },
      steps: [step({ tokensIn: 100_000, tokensOut: 50_000 }), step({ tokensIn: 100_000, tokensOut: 50_000 }), step({ tokensIn: 100_000, tokensOut: 50_000 })],
      wantAnswers: ['allow', 'allow', 'deny'],
      wantCode: 'CAP_MAX_USD',
    },
  ];

  it.each(cases)('$cap', async ({ cap, caps, steps, wantAnswers, wantCode }) => {
    const taskId = await startAgent(`cap-${cap.toLowerCase()}`, caps);
    const answers = [];
    for (const s of steps) answers.push(await gov.step(taskId, s));
    expect(answers.map((a) => a.answer)).toEqual(wantAnswers);
    const denied = answers[answers.length - 1]!;
    expect(denied.reason).toMatchObject({ code: wantCode, policy: `task#caps.${cap}` });
    const status = await gov.result(taskId);
    expect(status.state).toBe('CapExceeded');
    expect(status.reasons[0]?.code).toBe(wantCode);
    // Only the allowed steps are in the ledger, charged exactly.
    const allowed = steps.slice(0, -1);
    const usage = await taskUsage(h.db, taskId);
    expect(usage.tokensIn).toBe(allowed.reduce((s, x) => s + x.tokensIn, 0));
    expect(usage.tokensOut).toBe(allowed.reduce((s, x) => s + x.tokensOut, 0));
    const audit = await auditOf(taskId);
    expect(audit.filter((r) => r.action === 'step').map((r) => r.decision)).toEqual(wantAnswers);
  });

  it('answers degrade (with the fallback model) before deny, and charges degraded steps at the fallback price', async () => {
    // frontier-large: $5/M in, $25/M out. A step of 40k in + 4k out costs $0.30; on small-fast $0.0048.
    // The task runs on frontier-large (a step may name only the intent's model or the fallback).
    const taskId = await startAgent(
      'degrade',
      { maxUsd: 1, maxTokens: 1_000_000 },
      { attribution: { tenant: h.tenant, team: 'search', project: 'ranker', model: 'frontier-large', useCase: 'relevance' } },
    );
    const s: StepUsage = { tokensIn: 40_000, tokensOut: 4_000, contextTokens: 40_000, model: 'frontier-large' };
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push(await gov.step(taskId, s));
    expect(answers.map((a) => [a.answer, a.fallbackModel])).toEqual([
      ['allow', null],
      ['allow', null],
      ['degrade', 'small-fast'],
      ['degrade', 'small-fast'],
    ]);
    await gov.finish(taskId, 'carol');
    const status = await gov.result(taskId);
    expect(status.state).toBe('Succeeded');
    const { rows } = await h.db.query<{ subject: string; cost: number }>(
      'SELECT subject, SUM(cost_micros)::bigint AS cost FROM usage_events WHERE task_id = $1 GROUP BY subject ORDER BY subject',
      [taskId],
    );
    expect(rows).toEqual([
      { subject: 'frontier-large', cost: 600_000 },
      { subject: 'small-fast', cost: 9_600 },
    ]);
    expect(status.costUsd).toBeCloseTo(0.6096, 9);
  });

  it("refuses a step on a model other than the intent's or its fallback, charges nothing, and the task goes on", async () => {
    // The task runs on llama-3-8b (its reservation priced there); the agent template's fallback is small-fast.
    const taskId = await startAgent('model', {});
    const s = (model?: string): StepUsage => ({ tokensIn: 1000, tokensOut: 500, contextTokens: 1000, ...(model ? { model } : {}) });
    const dearer = await gov.step(taskId, s('frontier-large'));
    expect(dearer).toMatchObject({
      answer: 'deny',
      reason: { code: 'MODEL_NOT_ALLOWED', limit: 'llama-3-8b|small-fast', requested: 'frontier-large', policy: 'intent#attribution.model' },
    });
    expect(dearer.reason?.message).toMatch(/llama-3-8b.*small-fast/);
    const answers = [await gov.step(taskId, s('small-fast')), await gov.step(taskId, s()), await gov.step(taskId, s('llama-3-8b'))];
    expect(answers.map((a) => a.answer)).toEqual(['allow', 'allow', 'allow']);
    await gov.finish(taskId, 'carol');
    const status = await gov.result(taskId);
    expect(status.state).toBe('Succeeded');
    expect(status.usage.steps).toBe(3);
    // The ledger charged the three allowed steps, each on its own model, and nothing on frontier-large.
    const { rows } = await h.db.query<{ subject: string; tin: number; tout: number }>(
      `SELECT subject, SUM(quantity) FILTER (WHERE meter = 'tokens_in') AS tin, SUM(quantity) FILTER (WHERE meter = 'tokens_out') AS tout
       FROM usage_events WHERE task_id = $1 GROUP BY subject ORDER BY subject`,
      [taskId],
    );
    expect(rows).toEqual([
      { subject: 'llama-3-8b', tin: 2000, tout: 1000 },
      { subject: 'small-fast', tin: 1000, tout: 500 },
    ]);
    const steps = (await auditOf(taskId)).filter((r) => r.action === 'step');
    expect(steps.map((r) => [r.decision, r.detail.reason?.code ?? r.detail.model])).toEqual([
      ['deny', 'MODEL_NOT_ALLOWED'],
      ['allow', 'small-fast'],
      ['allow', 'llama-3-8b'],
      ['allow', 'llama-3-8b'],
    ]);
  });

  it('denies tools outside the catalog and tools the task did not declare, without stopping it', async () => {
    const taskId = await startAgent('tools', {}, { tools: ['search.web'] });
    const unknown = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'rm.rf' });
    const undeclared = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'db.read' });
    const fine = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'search.web' });
    expect([unknown.reason?.code, undeclared.reason?.code, fine.answer]).toEqual(['TOOL_UNKNOWN', 'TOOL_NOT_ALLOWED', 'allow']);
    await gov.finish(taskId, 'carol');
    expect((await gov.result(taskId)).state).toBe('Succeeded');
  });

  it('rejects at admission a task that declares a tool above its kind ceiling or not in the catalog', async () => {
    const a = await gov.submit(
      intent(h.tenant, {
        kind: 'agent',
        name: 'shell',
        resources: { gpus: 0 },
        simulation: undefined,
        tools: ['shell.exec', 'nope.tool'],
        caps: { maxUsd: 5 },
      }),
      { requester: 'carol' },
    );
    expect(a.decision).toBe('rejected');
    expect(a.reasons.map((r) => r.code)).toEqual(['TOOL_RISK_NOT_ALLOWED', 'TOOL_UNKNOWN']);
  });

  it('refuses a malformed step through the SDK with the field path, and changes nothing', async () => {
    const taskId = await startAgent('bad-step', {});
    await expect(gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: -5 })).rejects.toBeInstanceOf(GovloopInputError);
    // Past the SDK (another client), the workflow's own validator refuses it, with the field errors as data.
    const raw = await h.client.workflow
      .getHandle(taskId)
      .executeUpdate(stepUpdate, { args: [{ tokensIn: 1, tokensOut: -1, contextTokens: 'x' } as never] })
      .catch((e: unknown) => e);
    expect(raw).toBeInstanceOf(WorkflowUpdateFailedError);
    const cause = (raw as WorkflowUpdateFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe(TaskErrors.InvalidStep);
    expect((cause.details?.[0] as { path: string }[]).map((e) => e.path)).toEqual(['tokensOut', 'contextTokens']);
    await expect(gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, toolArgs: { x: () => 1 } as never })).rejects.toThrow(/toolArgs/);
    expect((await h.client.workflow.getHandle(taskId).query(statusQuery)).usage.steps).toBe(0);
    await gov.cancel(taskId, 'carol', 'done');
    await gov.result(taskId);
  });
});

describe('the last step finishes the task (finish with the step, one round trip)', () => {
  const s = (model?: string): StepUsage => ({ tokensIn: 1000, tokensOut: 500, contextTokens: 1000, ...(model ? { model } : {}) });

  it('an allowed last step sent with finish: the task settles Succeeded, with no finish call of its own', async () => {
    const taskId = await startAgent('last-step', {});
    expect((await gov.step(taskId, s())).finished).toBeUndefined();
    const last = await gov.step(taskId, s(), { as: 'carol', finish: true });
    expect(last).toMatchObject({ answer: 'allow', step: 2, finished: true });
    const status = await gov.result(taskId);
    expect(status.state).toBe('Succeeded');
    expect(status.usage.steps).toBe(2);
    // Audited as a finish by the requester, after the step; charged for both steps, once.
    const audit = await auditOf(taskId);
    const tail = audit.filter((r) => r.action === 'step' || r.action === 'task.finish' || r.action === 'settle');
    expect(tail.map((r) => `${r.action} ${r.decision}`)).toEqual(['step allow', 'step allow', 'task.finish accepted', 'settle Succeeded']);
    expect(tail[2]!.actor).toMatch(/^carol/);
    expect((await taskUsage(h.db, taskId)).tokensIn).toBe(2000);
    // One round trip fewer: the history has the two step updates, and no finish update or signal.
    const { events } = await h.client.workflow.getHandle(taskId).fetchHistory();
    const updates = (events ?? []).flatMap((e) =>
      e.workflowExecutionUpdateAcceptedEventAttributes ? [e.workflowExecutionUpdateAcceptedEventAttributes.acceptedRequest?.input?.name] : [],
    );
    expect(updates.filter((n) => n !== 'admission')).toEqual(['step', 'step']);
    expect((events ?? []).filter((e) => e.workflowExecutionSignaledEventAttributes)).toEqual([]);
  });

  it('a last step the gate denies does not finish the task: it goes on, and may finish later', async () => {
    const taskId = await startAgent('last-step-denied', {});
    const denied = await gov.step(taskId, s('frontier-large'), { as: 'carol', finish: true });
    expect(denied).toMatchObject({ answer: 'deny', reason: { code: 'MODEL_NOT_ALLOWED' } });
    expect(denied.finished).toBeUndefined();
    expect((await h.client.workflow.getHandle(taskId).query(statusQuery)).state).toBe('Running');
    expect(await gov.step(taskId, s(), { as: 'carol', finish: true })).toMatchObject({ answer: 'allow', finished: true });
    expect((await gov.result(taskId)).state).toBe('Succeeded');
  });

  it('refuses a malformed finish flag in the SDK and in the workflow, and changes nothing', async () => {
    const taskId = await startAgent('last-step-bad', {});
    await expect(gov.step(taskId, s(), { finish: 'yes' as never })).rejects.toThrow(/finish/);
    const raw = await h.client.workflow
      .getHandle(taskId)
      .executeUpdate(stepUpdate, { args: [{ ...s(), finish: 'yes' } as never] })
      .catch((e: unknown) => e);
    expect(raw).toBeInstanceOf(WorkflowUpdateFailedError);
    const cause = (raw as WorkflowUpdateFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe(TaskErrors.InvalidStep);
    expect((cause.details?.[0] as { path: string }[]).map((e) => e.path)).toEqual(['finish']);
    const status = await h.client.workflow.getHandle(taskId).query(statusQuery);
    expect({ state: status.state, steps: status.usage.steps }).toEqual({ state: 'Running', steps: 0 });
    await gov.finish(taskId, 'carol');
    expect((await gov.result(taskId)).state).toBe('Succeeded');
  });
});

describe('human approval for high-risk tools', () => {
  it('holds the call in AwaitingApproval; refuses four-eyes, missing-role and double decisions; runs it once approved', async () => {
    const taskId = await startAgent('approve-ok', {});
    const held = await gov.step(taskId, {
      tokensIn: 500,
      tokensOut: 100,
      contextTokens: 2000,
      tool: 'payments.refund',
      toolArgs: { orderId: 'o-1', amountUsd: 40 },
    });
    expect(held).toMatchObject({ answer: 'await-approval', approvalId: `${taskId}.a1`, reason: { code: 'AWAITING_APPROVAL' } });
    const approvalId = held.approvalId!;

    const s = await waitForState(taskId, 'AwaitingApproval');
    expect(s.approval).toMatchObject({
      tool: 'payments.refund',
      requester: 'carol (unverified)',
      state: 'pending',
      argsDigest: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    });
    const d = await h.client.workflow.getHandle(taskId).describe();
    expect(d.typedSearchAttributes.get(GovStateKey)).toBe('AwaitingApproval');
    expect(d.memo).toMatchObject({
      runbook: 'runbooks/awaitingapproval.md',
      approval: { approvalId, tool: 'payments.refund', requester: 'carol (unverified)' },
    });

    // Nothing else runs while the call is held.
    expect((await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1 })).reason?.code).toBe('AWAITING_APPROVAL');

    const self = await gov.approve(approvalId, { by: 'carol', reason: 'mine' });
    const noRole = await gov.approve(approvalId, { by: 'dave', reason: 'looks fine' });
    const tierTwoTooEarly = await gov.approve(approvalId, { by: 'bob', reason: 'lead' });
    const ok = await gov.approve(approvalId, { by: 'alice', reason: 'refund policy 4.2' });
    const again = await gov.approve(approvalId, { by: 'alice', reason: 'refund policy 4.2' });
    const late = await gov.reject(approvalId, { by: 'bob', reason: 'changed my mind' });
    expect([self, noRole, tierTwoTooEarly].map((r) => (r.recorded ? 'recorded' : r.code))).toEqual(['self-approval', 'missing-role', 'missing-role']);
    // auth: none — identities are typed names, and every answer says so.
    expect(ok).toMatchObject({ recorded: true, state: 'approved', by: 'alice (unverified)', idempotent: false });
    expect(again).toMatchObject({ recorded: true, state: 'approved', idempotent: true });
    expect(late).toMatchObject({ recorded: false, code: 'already-decided' });

    const outcome = await gov.waitForApproval(approvalId);
    expect(outcome).toMatchObject({ state: 'approved', decidedBy: 'alice (unverified)', step: { answer: 'allow', approvalId } });
    expect((await gov.step(taskId, { tokensIn: 10, tokensOut: 10, contextTokens: 10 })).answer).toBe('allow');
    await gov.finish(taskId, 'carol');
    const status = await gov.result(taskId);
    expect(status.state).toBe('Succeeded');
    expect(status.usage).toMatchObject({ steps: 2, toolCalls: 1, tokensIn: 510, tokensOut: 110 });

    const audit = await auditOf(taskId);
    expect(audit.filter((r) => r.action.startsWith('approval')).map((r) => `${r.action}:${r.decision}:${r.actor}`)).toEqual([
      'approval.refused:self-approval:carol (unverified)',
      'approval.refused:missing-role:dave (unverified)',
      'approval.refused:missing-role:bob (unverified)',
      'approval:approved:alice (unverified)',
      'approval.refused:already-decided:bob (unverified)',
    ]);
  });

  it('escalates to the next tier after the escalation time (notified), and that tier may then approve', async () => {
    const taskId = await startAgent('escalate', {});
    const held = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'payments.quick_refund', toolArgs: { orderId: 'o-2' } });
    const approvalId = held.approvalId!;
    expect((await gov.approve(approvalId, { by: 'bob', reason: 'lead' })).recorded).toBe(false);
    const s = await waitForState(taskId, 'Escalated');
    expect(s.approval?.tier).toBe(1);
    expect(notifications).toContainEqual(expect.objectContaining({ event: 'approval.escalated', approvalId, tier: 1, notifyRoles: ['payments-lead'] }));
    expect(await gov.approve(approvalId, { by: 'bob', reason: 'lead after escalation' })).toMatchObject({ recorded: true, state: 'approved' });
    expect((await gov.waitForApproval(approvalId)).step?.answer).toBe('allow');
    await gov.finish(taskId, 'carol');
    expect((await gov.result(taskId)).state).toBe('Succeeded');
    expect((await auditOf(taskId)).map((r) => r.action)).toContain('approval.escalated');
  });

  it('rejects the task when nobody approves before the TTL', async () => {
    const taskId = await startAgent('expire', {});
    const held = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'payments.flash_refund' });
    const outcome = await gov.waitForApproval(held.approvalId!);
    expect(outcome).toMatchObject({ state: 'expired', step: { answer: 'deny', reason: { code: 'APPROVAL_EXPIRED' } } });
    const status = await gov.result(taskId);
    expect(status.state).toBe('Rejected');
    expect(status.reasons[0]?.code).toBe('APPROVAL_EXPIRED');
    const row = await h.db.query('SELECT state, decided_by FROM approvals WHERE approval_id = $1', [held.approvalId]);
    expect(row.rows[0]).toEqual({ state: 'expired', decided_by: 'govloop' });
  });

  it('decides an approval that races its TTL exactly once', async () => {
    const taskId = await startAgent('race', {});
    const held = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'payments.flash_refund' });
    const approvalId = held.approvalId!;
    // Approvals fired every 50 ms from 1.2 s to 1.8 s around the 1.5 s expiry.
    await new Promise((r) => setTimeout(r, 1200));
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        new Promise((r) => setTimeout(r, i * 50)).then(() =>
          gov.approve(approvalId, { by: 'alice', reason: 'race' }).catch((e: Error) => ({ recorded: false, code: e.name })),
        ),
      ),
    );
    const row = (await h.db.query<{ state: string }>('SELECT state FROM approvals WHERE approval_id = $1', [approvalId])).rows[0]!;
    // An expired request ends the task at once: its outcome is then read from the ended task.
    const outcome = await gov.waitForApproval(approvalId).catch(async () => ({ state: (await gov.result(taskId)).approval?.state }));
    expect(outcome.state).toBe(row.state);
    if (row.state === 'approved') await gov.finish(taskId, 'carol');
    const status = await gov.result(taskId);
    const firstTimeApprovals = answers.filter((a) => a.recorded && !('idempotent' in a && a.idempotent));
    const decisions = (await auditOf(taskId)).filter((r) => r.action === 'approval');
    expect(decisions).toHaveLength(1);
    if (row.state === 'approved') {
      expect(firstTimeApprovals).toHaveLength(1);
      expect(status.state).toBe('Succeeded');
    } else {
      expect(row.state).toBe('expired');
      expect(firstTimeApprovals).toHaveLength(0);
      expect(answers.every((a) => !a.recorded)).toBe(true);
      expect(status.reasons[0]?.code).toBe('APPROVAL_EXPIRED');
    }
  });
});

describe('rollback of side-effecting steps', () => {
  it('compensates completed side effects newest first when the task is cancelled', async () => {
    const taskId = await startAgent('rollback', {});
    expect(
      (await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'tickets.update', toolArgs: { ticket: 7, status: 'closed' } })).answer,
    ).toBe('allow');
    expect((await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'search.web' })).answer).toBe('allow');
    const held = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'payments.refund', toolArgs: { orderId: 'o-3' } });
    await gov.approve(held.approvalId!, { by: 'alice', reason: 'ok' });
    expect((await gov.waitForApproval(held.approvalId!)).step?.answer).toBe('allow');
    await gov.cancel(taskId, 'carol', 'customer withdrew');
    const status = await gov.result(taskId);
    expect(status.state).toBe('Cancelled');
    expect(status.compensations).toEqual([
      { step: 3, tool: 'payments.refund', state: 'done', error: null },
      { step: 1, tool: 'tickets.update', state: 'done', error: null },
    ]);
    const comp = (await auditOf(taskId)).filter((r) => r.action === 'compensation');
    expect(comp.map((r) => [r.detail.seq, r.detail.compensation])).toEqual([
      [3, 'payments.reverse'],
      [1, 'tickets.restore'],
    ]);
  });

  it('undoes earlier side effects when an approval is rejected', async () => {
    const taskId = await startAgent('rollback-reject', {});
    await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'tickets.update', toolArgs: { ticket: 9 } });
    const held = await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'payments.refund', toolArgs: { orderId: 'o-4' } });
    expect(await gov.reject(held.approvalId!, { by: 'alice', reason: 'over the refund limit' })).toMatchObject({ recorded: true, state: 'rejected' });
    const status = await gov.result(taskId);
    expect(status.state).toBe('Rejected');
    expect(status.reasons[0]).toMatchObject({ code: 'APPROVAL_REJECTED' });
    expect(status.compensations).toEqual([{ step: 1, tool: 'tickets.update', state: 'done', error: null }]);
  });

  it('a compensation that cannot succeed leaves the task in NeedsOperator until an operator resolves it', async () => {
    const taskId = await startAgent('rollback-stuck', {});
    await gov.step(taskId, { tokensIn: 1, tokensOut: 1, contextTokens: 1, tool: 'tickets.update', toolArgs: { ticket: 11 } });
    const held = await gov.step(taskId, {
      tokensIn: 1,
      tokensOut: 1,
      contextTokens: 1,
      tool: 'payments.refund',
      toolArgs: { orderId: 'o-5', irreversible: true },
    });
    await gov.approve(held.approvalId!, { by: 'alice', reason: 'ok' });
    await gov.waitForApproval(held.approvalId!);
    await gov.cancel(taskId, 'carol', 'abort');
    const stuck = await waitForState(taskId, 'NeedsOperator');
    expect(stuck.compensations).toEqual([
      { step: 2, tool: 'payments.refund', state: 'failed', error: expect.stringMatching(/settled and cannot be reversed/) },
      { step: 1, tool: 'tickets.update', state: 'pending', error: null },
    ]);
    expect((await h.client.workflow.getHandle(taskId).describe()).typedSearchAttributes.get(GovStateKey)).toBe('NeedsOperator');
    const row = await h.db.query('SELECT state, attempts FROM compensations WHERE task_id = $1 AND seq = 2', [taskId]);
    expect(row.rows[0]).toEqual({ state: 'failed', attempts: 2 });
    expect(notifications).toContainEqual(expect.objectContaining({ event: 'task.needs-operator', taskId }));

    await expect(gov.resolve(taskId, { by: '', reason: 'x' })).rejects.toBeInstanceOf(GovloopInputError);
    await gov.resolve(taskId, { by: 'oncall-erin', reason: 'refund reversed by hand in the payments console' });
    const status = await gov.result(taskId);
    expect(status.state).toBe('Cancelled');
    expect(status.compensations?.map((c) => c.state)).toEqual(['failed', 'done']);
    const audit = await auditOf(taskId);
    expect(audit.map((r) => `${r.action}:${r.decision}`)).toEqual(
      expect.arrayContaining(['compensation:failed', 'operator.resolve:Settling', 'compensation:done']),
    );
  });
});
