/**
 * The attack suite (issue 10): a running stack — real Temporal dev server, PostgreSQL, workers,
 * the CLI as a separate process — with `auth: required` and a real OIDC provider (ory hydra
 * v2.3.0, JWT access tokens). Every attack is refused with its code, audited, and leaves the
 * ledger as it was. The audit rewrite and cut tail are in test/security/audit.test.ts.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { grantAccess } from '../../ledger/approvals';
import { requestBudgetChange } from '../../ledger/budgets';
import { GovloopAccessError, GovloopClient } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { approveUpdate, preemptSignal, preemptTaskUpdate, statusQuery } from '../../workflows/messages';
import { loadPublicKey } from '../../identity/signing';
import { verifyApprovalToken } from '../../identity/approval-token';
import { govloop } from '../support/cli';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';
import { type Hydra, hydraSkipReason, startHydra } from '../support/hydra';

const skip = hydraSkipReason();
const AUDIENCE = 'govloop';

describe.skipIf(skip !== null)(`attacks on identity and authorization${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let bundle: WorkflowBundleWithSourceMap;
  let h: Harness;
  let idp: Hydra;
  let other: Hydra;
  let keyFile: string;
  const tokens: Record<string, string> = {};
  let tenantA: string;
  let tenantB: string;
  let gov: (who: string) => GovloopClient;

  const cli = (who: string | null, args: string[]) =>
    govloop(args, {
      TEMPORAL_ADDRESS: inject('temporalAddress'),
      DATABASE_URL: inject('databaseUrl'),
      GOVLOOP_TASK_QUEUE: h.controlQueue,
      GOVLOOP_AUTH_MODE: 'required',
      GOVLOOP_OIDC_ISSUER: idp.issuer,
      GOVLOOP_OIDC_AUDIENCE: AUDIENCE,
      GOVLOOP_PLATFORM_ADMINS: 'root',
      GOVLOOP_TOKEN: who === null ? '' : tokens[who],
      GOVLOOP_API_KEY: '',
    });

  /** Everything an attack could have changed in the ledger, but the audit log (refusals are audited). */
  /**
   * The ledger rows of this file's two tenants. Other test files write to the same database at
   * the same time, so a whole-table snapshot would change under us for reasons of theirs.
   */
  const ledgerState = async () => {
    const q = async (sql: string) => (await h.db.query(sql, [[tenantA, tenantB]])).rows;
    const ours = 'SELECT t.task_id FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE a.tenant = ANY($1)';
    return {
      grants: await q('SELECT tenant, user_name, role FROM access_grants WHERE tenant = ANY($1) ORDER BY 1, 2, 3'),
      keys: await q('SELECT tenant, subject, revoked_at FROM api_keys WHERE tenant = ANY($1) ORDER BY id'),
      budgets: await q('SELECT tenant, team, project, period, limit_micros FROM budgets WHERE tenant = ANY($1) ORDER BY id'),
      changes: await q(
        'SELECT r.budget_id, r.to_micros, r.state FROM budget_raises r JOIN budgets b ON b.id = r.budget_id WHERE b.tenant = ANY($1) ORDER BY r.id',
      ),
      approvals: await q('SELECT approval_id, state, decided_by FROM approvals WHERE tenant = ANY($1) ORDER BY approval_id'),
      tasks: await q(`SELECT task_id, run_id, state, requester, cost_micros FROM tasks WHERE task_id IN (${ours}) ORDER BY task_id`),
      reservations: await q(`SELECT task_id, amount_micros, remaining_micros, state FROM reservations WHERE task_id IN (${ours}) ORDER BY task_id`),
      usage: await q('SELECT count(*)::int AS n FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = ANY($1)'),
      preemptions: await q(`SELECT victim_task_id, round FROM preemptions WHERE victim_task_id IN (${ours}) OR preemptor_tenant = ANY($1) ORDER BY 1, 2`),
    };
  };
  const refusals = async (since: number) =>
    (
      await h.db.query<{ actor: string; action: string; decision: string; detail: { attempted?: string } }>(
        "SELECT actor, action, decision, detail FROM audit_log WHERE id > $1 AND action IN ('authz.refused', 'approval.refused') AND actor NOT LIKE '%(unverified)' AND (detail->>'tenant' IS NULL OR detail->>'tenant' = ANY($2)) ORDER BY id",
        [since, [tenantA, tenantB]],
      )
    ).rows;
  const auditHead = async () => (await h.db.query<{ id: number }>('SELECT coalesce(max(id), 0)::int AS id FROM audit_log')).rows[0]!.id;

  /** Runs `attack`, then checks the ledger is unchanged and the refusal audited with `code`. */
  async function refusedAndAudited(code: string, attack: () => Promise<void>): Promise<void> {
    const before = await ledgerState();
    const head = await auditHead();
    await attack();
    expect(await ledgerState()).toEqual(before);
    expect((await refusals(head)).map((r) => r.decision)).toContain(code);
  }

  /** Cancels a task and waits until it settled, so the next attack compares a quiet ledger. */
  const end = async (taskId: string) => {
    await gov('carol').cancel(taskId, undefined, 'done');
    await gov('carol').result(taskId);
  };

  const agentIntent = (name: string) =>
    intent(tenantA, { kind: 'agent', name, resources: { gpus: 0 }, simulation: undefined, tools: ['search.web', 'payments.refund'], caps: { maxUsd: 5 } });

  /** carol's agent task held on a refund of `args`: the approval waits for a human. */
  async function heldRefund(name: string, args: unknown) {
    const a = await gov('carol').submit(agentIntent(name));
    expect(a.decision).toBe('admitted');
    const held = await gov('carol').step(a.taskId, { tokensIn: 100, tokensOut: 10, contextTokens: 100, tool: 'payments.refund', toolArgs: args });
    expect(held.answer).toBe('await-approval');
    return { taskId: a.taskId, approvalId: held.approvalId! };
  }

  beforeAll(async () => {
    [idp, other] = await Promise.all([startHydra(), startHydra()]);
    const users = ['root', 'carol', 'alice', 'mallory', 'bob', 'dana', 'eve', 'short'];
    const secrets: Record<string, string> = {};
    for (const u of users) {
      const c = await idp.createClient(u, { audience: [AUDIENCE, 'billing'] });
      secrets[u] = c.clientSecret;
    }
    // `short` gets access tokens that live one second (hydra's per-client lifespans).
    const life = await fetch(`${idp.adminUrl}/admin/clients/short/lifespans`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ client_credentials_grant_access_token_lifespan: '1s' }),
    });
    expect(life.status, await life.text()).toBe(200);
    for (const u of users) tokens[u] = await idp.token(u, secrets[u]!, [AUDIENCE]);
    tokens['alice-billing'] = await idp.token('alice', secrets.alice!, ['billing']);
    const foreign = await other.createClient('alice', { audience: [AUDIENCE] });
    tokens['alice-other-issuer'] = await other.token('alice', foreign.clientSecret, [AUDIENCE]);

    const config = testConfig();
    config.auth = {
      mode: 'required',
      oidc: { issuer: idp.issuer, audience: AUDIENCE, subjectClaim: 'sub', clockToleranceSeconds: 0 },
      platformAdmins: ['root'],
      budgetLowerSecondPersonAbove: 0.5,
      approvalTokenTtlSeconds: 900,
    };
    keyFile = join(mkdtempSync(join(tmpdir(), 'govloop-keys-')), 'signing-key.pem');
    config.policies.audit = { ...config.policies.audit, signingKeyFile: keyFile };
    bundle = await bundleWorkflows();
    h = await createHarness({ bundle, config });
    await h.startWorkers();
    tenantA = h.tenant;
    tenantB = `${h.tenant}-b`;
    const client = h.client;
    gov = (who) => new GovloopClient(client, h.controlQueue, { credential: tokens[who]! });
    // The platform admin's bootstrap: roles per tenant.
    for (const [tenant, user, role] of [
      [tenantA, 'carol', 'requester'],
      [tenantA, 'mallory', 'requester'],
      [tenantA, 'alice', 'payments-approver'],
      [tenantA, 'short', 'payments-approver'],
      [tenantA, 'bob', 'budget-owner'],
      [tenantA, 'dana', 'budget-owner'],
      [tenantB, 'eve', 'tenant-admin'],
      [tenantB, 'eve', 'requester'],
    ] as const) {
      await grantAccess(h.db, { tenant, user, role, by: 'root' });
    }
    const root = { subject: 'root', verified: true, method: 'oidc' as const, tenantScope: null, platformAdmin: true };
    for (const tenant of [tenantA, tenantB]) {
      const r = await requestBudgetChange(h.db, { tenant }, 'total', 100, { principal: root, lowerSecondPersonAbove: 0.5 }, 'bootstrap');
      expect(r.applied).toBe(true);
    }
  });

  afterAll(async () => {
    await h?.close();
    await Promise.all([idp?.stop(), other?.stop()]);
  });

  it('self-approval under another name: a typed name or a mismatched one is refused, and so is approving with one’s own token', async () => {
    const { taskId, approvalId } = await heldRefund('self-approve', { orderId: 'o-1', amountUsd: 40 });
    const handle = h.client.workflow.getHandle(taskId);
    await refusedAndAudited('AUTH_REQUIRED', async () => {
      const r = await handle.executeUpdate(approveUpdate, { args: [{ approvalId, reason: 'it is me, alice', as: 'alice' }] });
      expect(r).toMatchObject({ recorded: false, code: 'AUTH_REQUIRED' });
    });
    await refusedAndAudited('IDENTITY_MISMATCH', async () => {
      const r = await handle.executeUpdate(approveUpdate, { args: [{ approvalId, reason: 'signed as alice', credential: tokens.carol!, as: 'alice' }] });
      expect(r).toMatchObject({ recorded: false, code: 'IDENTITY_MISMATCH' });
    });
    await refusedAndAudited('self-approval', async () => {
      expect(await gov('carol').approve(approvalId, { reason: 'mine' })).toMatchObject({ recorded: false, code: 'self-approval' });
    });
    expect((await handle.query(statusQuery)).approval).toMatchObject({ state: 'pending', requester: 'carol' });
    await end(taskId);
  });

  it('approval by a non-approver, with an expired token, from another issuer and for another audience', async () => {
    const { taskId, approvalId } = await heldRefund('bad-approvers', { orderId: 'o-2', amountUsd: 10 });
    await refusedAndAudited('missing-role', async () => {
      expect(await gov('mallory').approve(approvalId, { reason: 'looks fine' })).toMatchObject({ recorded: false, code: 'missing-role' });
    });
    // Wait until the one-second token is past its expiry (no clock tolerance is configured).
    const exp = JSON.parse(Buffer.from(tokens.short!.split('.')[1]!, 'base64url').toString()).exp as number;
    while (Date.now() / 1000 <= exp) await new Promise((r) => setTimeout(r, 100));
    await refusedAndAudited('TOKEN_EXPIRED', async () => {
      expect(await gov('short').approve(approvalId, { reason: 'late' })).toMatchObject({ recorded: false, code: 'TOKEN_EXPIRED' });
    });
    await refusedAndAudited('TOKEN_ISSUER', async () => {
      expect(await gov('alice-other-issuer').approve(approvalId, { reason: 'other idp' })).toMatchObject({ recorded: false, code: 'TOKEN_ISSUER' });
    });
    await refusedAndAudited('TOKEN_AUDIENCE', async () => {
      expect(await gov('alice-billing').approve(approvalId, { reason: 'billing token' })).toMatchObject({ recorded: false, code: 'TOKEN_AUDIENCE' });
    });
    // The real approver, with her own token for govloop, is taken: the principal comes from the token.
    expect(await gov('alice').approve(approvalId, { reason: 'refund policy 4.2' })).toMatchObject({ recorded: true, state: 'approved', by: 'alice' });
    await gov('carol').finish(taskId);
    const done = await gov('carol').result(taskId);
    expect(done.state).toBe('Succeeded');
    expect(done.requester).toBe('carol');
  });

  it('a forged `by` in a raw Temporal update is refused before it reaches history', async () => {
    const { taskId, approvalId } = await heldRefund('forged-by', { orderId: 'o-3', amountUsd: 5 });
    const handle = h.client.workflow.getHandle(taskId);
    const before = await ledgerState();
    const err = await handle.executeUpdate(approveUpdate, { args: [{ approvalId, by: 'alice', reason: 'forged' } as never] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
    expect(((err as WorkflowUpdateFailedError).cause as { type?: string }).type).toBe('InvalidDecision');
    expect(String(((err as WorkflowUpdateFailedError).cause as Error).message)).toMatch(/Unrecognized key.*by/);
    expect(await ledgerState()).toEqual(before);
    const history = await handle.fetchHistory();
    expect(history.events?.some((e) => e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name === 'approve')).toBe(false);
    await end(taskId);
  });

  it('a `{}` preempt is refused (update) or ignored (signal); the task keeps its quota and runs on', async () => {
    const a = await gov('carol').submit(
      intent(tenantA, { name: 'victim', caps: { maxUsd: 50, maxGpuHours: 10 }, simulation: { durationSeconds: 2_000_000, tokensPerSecond: 10 } }),
    );
    expect(a.decision).toBe('admitted');
    await h.until(a.taskId, (s) => s.state === 'Running');
    const handle = h.client.workflow.getHandle(a.taskId);
    const before = await ledgerState();
    const err = await handle.executeUpdate(preemptTaskUpdate, { args: [{} as never] }).catch((e: unknown) => e);
    expect(((err as WorkflowUpdateFailedError).cause as { type?: string }).type).toBe('InvalidRequest');
    await handle.signal(preemptSignal, {} as never);
    // A well-formed preempt by a requester (not an operator) is refused with its code and audited.
    await refusedAndAudited('FORBIDDEN', async () => {
      await expect(gov('mallory').preempt(a.taskId, { reason: 'make room for me' })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    });
    // The signal was taken (it is in history) and ignored: still Running, holding what it held.
    const hist = await handle.fetchHistory();
    expect(hist.events?.some((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'preempt')).toBe(true);
    const s = await h.status(a.taskId);
    expect(s.state).toBe('Running');
    const after = await ledgerState();
    expect(after.preemptions).toEqual(before.preemptions);
    expect(after.reservations).toEqual(before.reservations);
    await end(a.taskId);
    expect((await gov('carol').result(a.taskId)).state).toBe('Cancelled');
  });

  it('`access grant` by a non-admin and `keys create` for another tenant are refused by the CLI', async () => {
    await refusedAndAudited('FORBIDDEN', async () => {
      const r = await cli('mallory', ['access', 'grant', '--tenant', tenantA, '--user', 'mallory', '--role', 'payments-approver', '--json']);
      expect(r.code, r.stderr).toBe(3);
      expect(r.json()).toMatchObject({ code: 'FORBIDDEN' });
    });
    await refusedAndAudited('FORBIDDEN', async () => {
      const r = await cli('eve', ['keys', 'create', '--tenant', tenantA, '--user', 'eve']);
      expect(r.code, r.stderr).toBe(3);
    });
    await refusedAndAudited('AUTH_REQUIRED', async () => {
      const r = await govloop(['access', 'grant', '--tenant', tenantA, '--user', 'mallory', '--role', 'tenant-admin', '--as', 'root', '--json'], {
        TEMPORAL_ADDRESS: inject('temporalAddress'),
        DATABASE_URL: inject('databaseUrl'),
        GOVLOOP_AUTH_MODE: 'required',
        GOVLOOP_OIDC_ISSUER: idp.issuer,
        GOVLOOP_OIDC_AUDIENCE: AUDIENCE,
        GOVLOOP_PLATFORM_ADMINS: 'root',
        GOVLOOP_TOKEN: '',
        GOVLOOP_API_KEY: '',
      });
      expect(r.code, r.stderr).toBe(3);
    });
    // Eve's own tenant: she may issue a key there, and it acts in that tenant only.
    const ok = await cli('eve', ['keys', 'create', '--tenant', tenantB, '--user', 'eve', '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    const key = ok.json().key as string;
    const t = await gov('carol').submit(agentIntent('key-scope'));
    await refusedAndAudited('TENANT_SCOPE', async () => {
      await expect(new GovloopClient(h.client, h.controlQueue, { credential: key }).cancel(t.taskId, undefined, 'not yours')).rejects.toMatchObject({
        code: 'TENANT_SCOPE',
      });
    });
    await end(t.taskId);
  });

  it('a budget zeroed by one person waits for a second budget owner', async () => {
    const limit = async () =>
      (await h.db.query<{ limit_micros: number }>("SELECT limit_micros FROM budgets WHERE tenant = $1 AND team = '*' AND period = 'total'", [tenantA])).rows[0]!
        .limit_micros;
    await refusedAndAudited('FORBIDDEN', async () => {
      const r = await cli('mallory', ['budget', 'set', '--tenant', tenantA, '--usd', '0', '--period', 'total']);
      expect(r.code, r.stderr).toBe(3);
    });
    const set = await cli('bob', ['budget', 'set', '--tenant', tenantA, '--usd', '0', '--period', 'total']);
    expect(set.code, set.stderr).toBe(0);
    expect(await limit()).toBe(100_000_000);
    const change = (
      await h.db.query<{ id: number }>("SELECT r.id FROM budget_raises r JOIN budgets b ON b.id = r.budget_id WHERE b.tenant = $1 AND r.state = 'pending'", [
        tenantA,
      ])
    ).rows[0]!.id;
    await refusedAndAudited('self-approval', async () => {
      const r = await cli('bob', ['budget', 'approve', String(change), '--reason', 'mine']);
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/self-approval/);
    });
    const rejected = await cli('dana', ['budget', 'reject', String(change), '--reason', 'not during the quarter close']);
    expect(rejected.code, rejected.stderr).toBe(0);
    expect(await limit()).toBe(100_000_000);
  });

  it('a user of another tenant can neither read nor act on this tenant’s task', async () => {
    const { taskId, approvalId } = await heldRefund('cross-tenant', { orderId: 'o-4', amountUsd: 1 });
    for (const args of [
      ['status', taskId],
      ['audit', 'show', taskId],
      ['list', '--tenant', tenantA],
    ]) {
      await refusedAndAudited('FORBIDDEN', async () => {
        const r = await cli('eve', args);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(3);
      });
    }
    // Without --tenant, eve lists her own tenant's tasks only.
    const mine = await cli('eve', ['list', '--json']);
    expect(mine.code, mine.stderr).toBe(0);
    expect((mine.json() as { taskId: string }[]).map((t) => t.taskId)).not.toContain(taskId);
    await refusedAndAudited('missing-role', async () => {
      expect(await gov('eve').approve(approvalId, { reason: 'helping out' })).toMatchObject({ recorded: false, code: 'missing-role' });
    });
    await refusedAndAudited('FORBIDDEN', async () => {
      await expect(gov('eve').cancel(taskId, undefined, 'not mine')).rejects.toBeInstanceOf(GovloopAccessError);
    });
    const visible = await cli('carol', ['status', taskId, '--json']);
    expect(visible.code, visible.stderr).toBe(0);
    expect(visible.json()).toMatchObject({ requester: 'carol', state: 'AwaitingApproval' });
    await end(taskId);
  });

  it('re-using a closed task’s id is refused: the new run adopts nothing of the old one', async () => {
    const taskId = `reuse-${tenantA}`;
    const first = await gov('carol').submit(agentIntent('reuse'), { taskId });
    expect(first.decision).toBe('admitted');
    await gov('carol').step(taskId, { tokensIn: 100, tokensOut: 10, contextTokens: 100 });
    await gov('carol').finish(taskId);
    expect((await gov('carol').result(taskId)).state).toBe('Succeeded');
    await refusedAndAudited('TASK_ID_REUSED', async () => {
      const again = await gov('mallory').submit(agentIntent('reuse'), { taskId });
      expect(again).toMatchObject({ decision: 'rejected', reasons: [expect.objectContaining({ code: 'TASK_ID_REUSED' })] });
      expect((await gov('mallory').result(taskId)).state).toBe('Rejected');
    });
  });

  it('an approval adopted with edited arguments: the tool executor refuses the signed token', async () => {
    const args = { orderId: 'o-5', amountUsd: 40 };
    const { taskId, approvalId } = await heldRefund('edited-args', args);
    expect(await gov('alice').approve(approvalId, { reason: 'refund policy 4.2' })).toMatchObject({ recorded: true });
    const outcome = await gov('carol').waitForApproval(approvalId);
    expect(outcome.step).toMatchObject({ answer: 'allow', approvalId });
    const token = outcome.step!.approvalToken;
    const key = loadPublicKey(keyFile);
    // The approved call as asked runs; the same approval for a bigger refund, another tool, or no token does not.
    expect(verifyApprovalToken(key, token, { tool: 'payments.refund', args })).toMatchObject({ ok: true, claims: { approvalId, approvedBy: 'alice', taskId } });
    expect(verifyApprovalToken(key, token, { tool: 'payments.refund', args: { ...args, amountUsd: 4000 } })).toMatchObject({
      ok: false,
      code: 'APPROVAL_ARGS_MISMATCH',
    });
    expect(verifyApprovalToken(key, token, { tool: 'payments.reverse', args })).toMatchObject({ ok: false, code: 'APPROVAL_TOOL_MISMATCH' });
    expect(verifyApprovalToken(key, null, { tool: 'payments.refund', args })).toMatchObject({ ok: false, code: 'APPROVAL_TOKEN_MISSING' });
    const [body, sig] = token!.split('.');
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(body!, 'base64url').toString()), argsDigest: 'sha256:00' })).toString('base64url');
    expect(verifyApprovalToken(key, `${forged}.${sig}`, { tool: 'payments.refund', args })).toMatchObject({ ok: false, code: 'APPROVAL_TOKEN_INVALID' });
    await gov('carol').finish(taskId);
    expect((await gov('carol').result(taskId)).state).toBe('Succeeded');
  });
});
