import { randomUUID } from 'node:crypto';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { ProgramPlan } from '../../governance/program';
import { grantAccess } from '../../ledger/approvals';
import { setBudget } from '../../ledger/budgets';
import { createKey } from '../../ledger/keys';
import { recordUsage } from '../../ledger/usage';
import { bundleWorkflows } from '../../workers/worker';
import {
  type ProgramStatus,
  migrationProgram,
  programExtendUpdate,
  programNudgeSignal,
  programPauseUpdate,
  programResumeUpdate,
  programSignoffUpdate,
  programStatusQuery,
} from '../../workflows/migration-program';
import { type Harness, createHarness, testConfig } from '../support/harness';
import { saveHistories } from '../support/histories';
import { startWebhook } from '../support/webhook';

/**
 * The migration program (issue 12) on a real Temporal server and PostgreSQL: gates measured from
 * the ledger (scoped to this file's tenants: the test database is shared), four-eyes sign-offs
 * with API keys (auth: required), escalation, extension, pause, continue-as-new.
 */
let bundle: WorkflowBundleWithSourceMap;
let h: Harness;
let hook: Awaited<ReturnType<typeof startWebhook<Record<string, unknown>>>>;
const keys: Record<string, string> = {};

beforeAll(async () => {
  bundle = await bundleWorkflows();
  hook = await startWebhook<Record<string, unknown>>();
  const config = testConfig();
  config.policies.notifyUrl = hook.url;
  config.auth = { mode: 'required', oidc: null, platformAdmins: ['plat', 'plat2'], budgetLowerSecondPersonAbove: 0.5, approvalTokenTtlSeconds: 900 };
  h = await createHarness({ bundle, config });
  await h.startWorkers();
  // Platform owners (platform-admin), a workload owner (tenant-admin of the tenant), someone with neither.
  for (const who of ['plat', 'plat2', 'wl', 'nobody']) keys[who] = (await createKey(h.db, h.tenant, 'test', who)).key;
  await grantAccess(h.db, { tenant: h.tenant, user: 'wl', role: 'tenant-admin', by: 'test' });
});

afterAll(async () => {
  if (h)
    await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'migration-program' });
  await h?.close();
  hook?.close();
});

/** A plan over `tenants`: three short phases whose gates this test can make pass or fail. */
function plan(tenants: string[], days = 3): ProgramPlan {
  const gate = (id: string, check: ProgramPlan['phases'][number]['gates'][number]['check']) => ({ id, check, threshold: 1, windowDays: 7, params: {} });
  return {
    name: 'test landing zone',
    version: 1,
    scope: { tenants },
    signoff: { platformRole: 'platform-admin', workloadRole: 'tenant-admin' },
    phases: [
      {
        id: 'ledger',
        name: 'The ledger',
        startDay: 1,
        endDay: days,
        work: ['attribution', 'budgets'],
        deliverables: [{ id: 'admission-v0', kind: 'admission-policy', name: 'Admission Policy v0' }],
        gates: [gate('attribution', 'attributionCoverage'), gate('budgets', 'budgetCoverage')],
      },
      {
        id: 'resources',
        name: 'Resource governance',
        startDay: days + 1,
        endDay: 2 * days,
        work: ['templates'],
        deliverables: [{ id: 'templates', kind: 'templates', name: 'Workload templates' }],
        gates: [gate('admission', 'admissionPolicyV0')],
      },
      {
        id: 'loop',
        name: 'The loop',
        startDay: 2 * days + 1,
        endDay: 3 * days,
        work: ['runbook'],
        deliverables: [{ id: 'runbook-v1', kind: 'runbook', name: 'AI Platform Runbook v1' }],
        gates: [gate('runbook', 'runbookV1')],
      },
    ],
  } as ProgramPlan;
}

async function usage(tenant: string, team: string) {
  await recordUsage(h.db, h.config.priceBook, [
    {
      key: `prog-${randomUUID()}`,
      taskId: null,
      attribution: { tenant, team, project: 'p', model: 'llama-3-8b', useCase: 'u' },
      meter: 'tokens_out',
      subject: 'llama-3-8b',
      quantity: 100_000,
      occurredAt: new Date(),
    },
  ]);
}

const start = async (p: ProgramPlan, daySeconds: number, more: { continueAsNewEvents?: number } = {}) => {
  const id = `program-${randomUUID().slice(0, 8)}`;
  const handle = await h.client.workflow.start(migrationProgram, {
    workflowId: id,
    taskQueue: h.controlQueue,
    args: [{ plan: p, daySeconds, startedBy: 'plat', ...more }],
  });
  return handle;
};

async function until(
  handle: { query: (q: typeof programStatusQuery) => Promise<ProgramStatus> },
  ok: (s: ProgramStatus) => boolean,
  timeoutMs = 60_000,
): Promise<ProgramStatus> {
  const end = Date.now() + timeoutMs;
  let last: ProgramStatus | undefined;
  while (Date.now() < end) {
    last = await handle.query(programStatusQuery);
    if (ok(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(
    `program never reached the condition; last: day ${last?.day}, phase ${last?.current}, gates ${JSON.stringify(last?.phases.find((p) => p.id === last?.current)?.gates.map((g) => [g.id, g.value, g.pass]))}`,
  );
}

const as = (who: string) => ({ credential: keys[who]! });

describe('migrationProgram on a real Temporal server and PostgreSQL', () => {
  it('a fresh program on an empty ledger is blocked at phase 1 with every failing gate listed, escalated once with the runbook', async () => {
    const empty = `${h.tenant}-empty`;
    const handle = await start(plan([empty], 2), 0.3);
    const s = await until(handle, (x) => x.blocked);
    expect(s.current).toBe('ledger');
    const gates = s.phases[0]!.gates;
    expect(gates.map((g) => [g.id, g.pass])).toEqual([
      ['attribution', false],
      ['budgets', false],
    ]);
    await until(handle, () => hook.received.some((m) => m.event === 'program.blocked' && m.programId === handle.workflowId));
    const alert = hook.received.find((m) => m.event === 'program.blocked' && m.programId === handle.workflowId)!;
    expect(alert).toMatchObject({ phase: 'ledger', runbook: 'runbooks/program-gate.md' });
    expect((alert.failing as { gate: string }[]).map((f) => f.gate)).toEqual(['attribution', 'budgets']);
    // Extending the phase unblocks it until its new end, audited with the reason.
    const ext = await handle.executeUpdate(programExtendUpdate, {
      args: [{ phase: 'ledger', days: 30, reason: 'waiting for the billing team', ...as('plat') }],
    });
    expect(ext).toMatchObject({ accepted: true, by: 'plat' });
    await until(handle, (x) => !x.blocked);
    const audit = await h.db.query("SELECT actor, detail FROM audit_log WHERE action = 'program.extend' AND detail->>'programId' = $1", [handle.workflowId]);
    expect(audit.rows).toEqual([
      expect.objectContaining({ actor: 'plat', detail: expect.objectContaining({ days: 30, reason: 'waiting for the billing team' }) }),
    ]);
    // The worker goes away mid-phase and comes back: nothing is lost (the state is the workflow's).
    const before = await handle.query(programStatusQuery);
    await h.stopWorkers();
    await h.startWorkers();
    const after = await until(handle, (x) => x.day > before.day);
    expect(after.phases[0]!.extensions).toEqual(before.phases[0]!.extensions);
    expect(after.current).toBe('ledger');
    expect(after.startedAt).toBe(before.startedAt);
    await handle.terminate('test done');
  });

  it('runs all three phases: gates computed from the ledger, four-eyes sign-offs, deliverables hashed into the audit chain; a team without a budget fails phase 1 by name until it has one', async () => {
    const tenant = h.tenant;
    await usage(tenant, 'search');
    await usage(tenant, 'ads');
    await setBudget(h.db, { tenant, team: 'search' }, 'month', 100, 'test');
    const handle = await start(plan([tenant], 2), 0.3, { continueAsNewEvents: 120 });
    // ads has usage and no budget: the budget gate fails and names it.
    let s = await until(handle, (x) => x.phases[0]!.gates.length > 0);
    const budgets = s.phases[0]!.gates.find((g) => g.id === 'budgets')!;
    expect(budgets.pass).toBe(false);
    expect(budgets.failing.join(' ')).toMatch(new RegExp(`${tenant}/ads`));
    // A sign-off while a gate fails is refused with the failing gate named.
    const early = await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'looks done', ...as('plat') }] });
    expect(early).toMatchObject({ accepted: false, code: 'GATES_NOT_PASSED' });
    expect((early as { message: string }).message).toMatch(/budgets/);
    await setBudget(h.db, { tenant, team: 'ads' }, 'month', 100, 'test');
    await handle.signal(programNudgeSignal);
    s = await until(handle, (x) => x.phases[0]!.gates.every((g) => g.pass));
    // Four-eyes: someone without either role, then one person twice, are refused; then two people.
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'ok', ...as('nobody') }] })).toMatchObject({
      accepted: false,
      code: 'FORBIDDEN',
    });
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'ok', ...as('plat') }] })).toMatchObject({
      accepted: true,
      by: 'plat',
    });
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'again', ...as('plat') }] })).toMatchObject({
      accepted: false,
      code: 'FOUR_EYES',
    });
    // Another platform admin cannot take the workload owner's place.
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'ok', ...as('plat2') }] })).toMatchObject({
      accepted: false,
      code: 'ALREADY_SIGNED',
    });
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'ok', ...as('wl') }] })).toMatchObject({
      accepted: true,
      by: 'wl',
    });
    s = await until(handle, (x) => x.current === 'resources');
    expect(s.phases[0]!.deliverables.map((d) => d.id)).toEqual(['admission-v0']);
    const art = await h.db.query<{ sha256: string }>('SELECT sha256 FROM program_artifacts WHERE program_id = $1', [handle.workflowId]);
    const chained = await h.db.query<{ sha: string }>(
      "SELECT detail->>'sha256' AS sha FROM audit_log WHERE action = 'program.deliverable' AND detail->>'programId' = $1",
      [handle.workflowId],
    );
    expect(chained.rows.map((r) => r.sha)).toEqual(art.rows.map((r) => r.sha256));
    // Refusals are audited too.
    const refusals = await h.db.query<{ actor: string; decision: string }>(
      "SELECT actor, decision FROM audit_log WHERE action = 'program.signoff' AND decision <> 'accepted' AND detail->>'programId' = $1 ORDER BY id",
      [handle.workflowId],
    );
    expect(refusals.rows).toEqual([
      { actor: 'plat', decision: 'GATES_NOT_PASSED' },
      { actor: 'nobody', decision: 'FORBIDDEN' },
      { actor: 'plat', decision: 'FOUR_EYES' },
      { actor: 'plat2', decision: 'ALREADY_SIGNED' },
    ]);

    // Pause: days stop counting; resume goes on.
    await handle.executeUpdate(programPauseUpdate, { args: [{ reason: 'freeze', ...as('plat') }] });
    const paused = await handle.query(programStatusQuery);
    await new Promise((r) => setTimeout(r, 1000));
    expect((await handle.query(programStatusQuery)).day).toBe(paused.day);
    await handle.executeUpdate(programResumeUpdate, { args: [{ reason: 'freeze over', ...as('plat') }] });

    const ready = (phase: string) => (x: ProgramStatus) => {
      const p = x.phases.find((q) => q.id === phase)!;
      return x.current === phase && p.gates.length > 0 && p.gates.every((g) => g.pass);
    };
    // Two platform owners at the same moment: one takes the slot, the other is refused.
    await until(handle, ready('resources'));
    const both = await Promise.all(
      ['plat', 'plat2'].map((who) => handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'resources', reason: 'ok', ...as(who) }] })),
    );
    expect(both.filter((a) => a.accepted)).toHaveLength(1);
    expect(both.filter((a) => !a.accepted)).toEqual([expect.objectContaining({ code: 'ALREADY_SIGNED' })]);
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'resources', reason: 'ok', ...as('wl') }] })).toMatchObject({ accepted: true });
    await until(handle, ready('loop'));
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'loop', reason: 'ok', ...as('wl') }] })).toMatchObject({ accepted: true });
    expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'loop', reason: 'ok', ...as('plat2') }] })).toMatchObject({ accepted: true });
    const done = await handle.result();
    expect(done.done).toBe(true);
    expect(done.phases.map((p) => p.state)).toEqual(['closed', 'closed', 'closed']);
    expect(done.runs).toBeGreaterThan(1);
    expect(done.phases[0]!.signoffs).toMatchObject({ platform: { by: 'plat' }, workload: { by: 'wl' } });
  });
});
