import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GovConfig, loadConfig, loadProgramPlan } from '../../config/load';
import { admit } from '../../governance/admission';
import type { Attribution } from '../../governance/intent';
import type { Plan } from '../../governance/plan';
import { type GateCheck, ProgramGate } from '../../governance/program';
import { appendAudit } from '../../ledger/audit';
import { setBudget } from '../../ledger/budgets';
import { applyLadderChange, budgetIdOf } from '../../ledger/ladder';
import { evaluateGates, RUNBOOK_DIR } from '../../ledger/program-gates';
import { produceDeliverable } from '../../ledger/program-deliverables';
import { updateTask } from '../../ledger/tasks';
import { recordUsage } from '../../ledger/usage';
import { type IntentBuilder, aConfig, anIntent } from '../support/builders';
import { type Ledger, attributionOf, backends, newTask, newTenant } from './backends';

const config = loadConfig();
const HOUR = 3_600_000;
const roomy = aConfig().defaultGpuQuota(64).build();

const gate = (check: GateCheck, params: Record<string, unknown> = {}, threshold = 1): ProgramGate =>
  ProgramGate.parse({ id: 'g', check, threshold, windowDays: 7, params });

/** The plan admission makes for an intent: what the gates read from a task row. */
function planOf(b: IntentBuilder): Plan {
  const got = admit(b.build(), { config: roomy, now: new Date().toISOString(), budgets: [], teamGpusInUse: 0 });
  if (got.decision !== 'admitted') throw new Error(`fixture not admitted: ${JSON.stringify(got.reasons)}`);
  return got.plan;
}

describe.each(backends)('program gates measured from the ledger on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  /** One gate measured now, over `tenant`'s data only. */
  async function measure(tenant: string, g: ProgramGate, cfg: GovConfig = config, opts: { runbookDir?: string } = {}) {
    const [r] = await evaluateGates(ledger.db, cfg, [g], new Date(Date.now() + 5000), { tenants: [tenant], ...opts });
    return r!;
  }

  let seq = 0;
  /** $`usd` of H100 time (an hour ago) in `a`, through `taskId` when given. */
  async function usage(a: Attribution, usd: number, taskId: string | null = null, meter: 'gpu_seconds' | 'tokens_in' = 'gpu_seconds') {
    // H100 exclusive is $4/GPU-hour in the shipped price book; tokens_in of the default model for the token case.
    const gpu = meter === 'gpu_seconds';
    await recordUsage(ledger.db, config.priceBook, [
      {
        key: `${a.tenant}:${++seq}:${Math.random()}`,
        taskId,
        attribution: a,
        meter,
        subject: gpu ? 'H100:exclusive' : a.model,
        quantity: gpu ? (usd / 4) * 3600 : usd * 1e6,
        occurredAt: new Date(Date.now() - HOUR),
      },
    ]);
  }

  it('an empty ledger blocks every data gate with nothing to measure (value null, failing)', async () => {
    const tenant = newTenant();
    const plan = loadProgramPlan();
    const gates = plan.phases.flatMap((p) => p.gates);
    const results = await evaluateGates(ledger.db, config, gates, new Date(), { tenants: [tenant] });
    const byId = Object.fromEntries(results.map((r) => [r.id, r]));
    for (const id of ['attribution-coverage', 'budget-coverage', 'quota-coverage', 'isolation-policy', 'topology-acceptance', 'pilot-migration', 'onboarding'])
      expect(byId[id], id).toMatchObject({ value: null, pass: false });
    expect(byId['golden-paths']).toMatchObject({
      value: 0,
      pass: false,
      failing: [expect.stringMatching(/^vllm-inference: no task/), expect.stringMatching(/^torchrun-training: no task/)],
    });
    expect(byId['ladder-executed']).toMatchObject({ value: 0, pass: false });
    expect(byId['topology-acceptance']!.failing).toEqual(['no multi-GPU gang dispatched in the last 7 days']);
    // Config-only gates are measured all the same: the shipped admission policy caps every kind, the runbooks are complete.
    expect(results.filter((r) => r.pass).map((r) => r.id)).toEqual(['admission-policy-v0', 'runbook-v1']);
  });

  it('budget coverage names the team with usage and no budget, and passes once it has one', async () => {
    const tenant = newTenant();
    await setBudget(ledger.db, { tenant, team: 'ads' }, 'month', 100, 'test');
    await usage(attributionOf(tenant, { team: 'ads' }), 2);
    await usage(attributionOf(tenant, { team: 'search' }), 3);
    const before = await measure(tenant, gate('budgetCoverage'));
    expect(before).toMatchObject({ value: 0.5, pass: false, failing: [`${tenant}/search: no budget covers project ranker`] });
    expect(before.detail).toContain('1 of 2 teams');

    // A project budget of no team ('*') does not cover a team's project, as admission and charging count it.
    await setBudget(ledger.db, { tenant, team: '*', project: 'ranker' }, 'month', 100, 'test');
    expect((await measure(tenant, gate('budgetCoverage'))).pass).toBe(false);
    await setBudget(ledger.db, { tenant, team: 'search', project: 'ranker' }, 'month', 100, 'test');
    expect(await measure(tenant, gate('budgetCoverage'))).toMatchObject({ value: 1, pass: true, failing: [] });
  });

  it('attribution coverage is the share of cost with every dimension; the event without a project is named', async () => {
    const tenant = newTenant();
    await usage(attributionOf(tenant), 3);
    await usage(attributionOf(tenant, { project: '' }), 1);
    await usage(attributionOf(tenant, { useCase: 'unknown' }), 0, null, 'tokens_in'); // zero cost: weighs nothing
    const r = await measure(tenant, gate('attributionCoverage', {}, 0.95));
    expect(r.value).toBeCloseTo(0.75, 6);
    expect(r.pass).toBe(false);
    expect(r.failing).toEqual([
      `${tenant}/search/(unattributed)/llama-3-8b/relevance: no project ($1.00, 1 events)`,
      `${tenant}/search/ranker/llama-3-8b/unknown: no useCase ($0.00, 1 events)`,
    ]);
    expect(r.detail).toBe("$3.00 of $4.00 of the last 7 days' usage carries tenant, team, project, model, useCase");
  });

  it('quota coverage asks for an explicit GPU quota (or a cohort) for each team with GPU work', async () => {
    const tenant = newTenant();
    await usage(attributionOf(tenant), 1);
    const r = await measure(tenant, gate('quotaCoverage'));
    expect(r).toMatchObject({ value: 0, pass: false });
    expect(r.failing).toEqual([`${tenant}/search H100: no gpuQuotas entry or cohort (0.25 GPU-hours on the default 8)`]);
    const withQuota = aConfig().gpuQuota(tenant, 'search', 'H100', 4).build();
    expect(await measure(tenant, gate('quotaCoverage'), withQuota)).toMatchObject({ value: 1, pass: true });
  });

  it('Admission Policy v0 fails for a kind without caps', async () => {
    const r = await measure(newTenant(), gate('admissionPolicyV0'), aConfig().withoutKind('batch').build());
    expect(r).toMatchObject({ value: 0.8, pass: false, failing: ['batch: not in policies.kinds'] });
  });

  /** A task with its admitted plan, dispatched (its audit row) onto `nodes`, in `state`. */
  async function dispatched(tenant: string, b: IntentBuilder, nodes: string[], state = 'Running'): Promise<string> {
    const id = await newTask(ledger.db, tenant, { state });
    await updateTask(ledger.db, id, { plan: planOf(b.tenant(tenant)), finished: state === 'Succeeded' });
    await appendAudit(ledger.db, {
      actor: 'govloop',
      taskId: id,
      action: 'dispatch',
      decision: 'running',
      detail: { cluster: 'sim', job: id, nodes },
      dedupeKey: `${id}:dispatch`,
    });
    return id;
  }

  it('isolation: dispatches outside the whitelist are listed by task; a tenant entry can allow them', async () => {
    const tenant = newTenant();
    const ok = await dispatched(tenant, anIntent().gpus(2, 'H100'), ['h100-00']);
    const mps = await dispatched(tenant, anIntent().kind('inference').share(250, 'A100', 'mps'), ['a100-08']);
    const mig = await dispatched(tenant, anIntent().kind('inference').gpus(1, 'A100', 'mig:3g.40gb'), ['a100-00']);
    const allowed = { H100: ['exclusive'], A100: ['exclusive', 'mig'] };
    const r = await measure(tenant, gate('isolationPolicy', { allowed }));
    expect(r.value).toBeCloseTo(2 / 3, 6);
    expect(r.failing).toEqual([`${mps} (${tenant}): A100 mps not allowed (allowed: exclusive, mig)`]);
    expect(r.failing.join()).not.toContain(ok);
    expect(r.failing.join()).not.toContain(mig);
    expect(await measure(tenant, gate('isolationPolicy', { allowed, tenants: { [tenant]: { A100: ['mps', 'mig'] } } }))).toMatchObject({
      value: 1,
      pass: true,
    });
    // No whitelist for a type at all is a violation too.
    expect((await measure(tenant, gate('isolationPolicy', { allowed: { A100: ['mps', 'mig'] } }))).failing).toEqual([
      `${ok} (${tenant}): H100 is not in the whitelist`,
    ]);
  });

  it('topology: a gang that fits one NVLink domain must sit in one; the capacity assumption is checked against the cluster', async () => {
    const tenant = newTenant();
    await dispatched(tenant, anIntent().gpus(8, 'H100'), ['h100-00']);
    const spread = await dispatched(tenant, anIntent().gpus(8, 'H100'), ['h100-01', 'h100-02']);
    await dispatched(tenant, anIntent().gpus(16, 'H100').caps({ maxGpuHours: 20 }), ['h100-03', 'h100-04']); // two domains is the fewest
    await dispatched(tenant, anIntent().gpus(1, 'H100'), ['h100-05']); // one GPU: no gang
    const r = await measure(tenant, gate('topologyAcceptance', { capacity: { H100: 192, A100: 999 } }, 0.9));
    expect(r.value).toBeCloseTo(3 / 5, 6);
    expect(r.pass).toBe(false);
    expect(r.failing).toEqual([
      `${spread}: 8 H100 over 2 NVLink domains (h100-01, h100-02), 1 would do`,
      'capacity A100: cluster sim has 128 GPUs, the plan assumes 999',
    ]);
  });

  it('golden paths: each template needs a task that Succeeded in the window', async () => {
    const tenant = newTenant();
    await dispatched(tenant, anIntent().kind('inference').gpus(1, 'A100', 'mig:3g.40gb'), ['a100-00'], 'Succeeded');
    await dispatched(tenant, anIntent().gpus(2, 'H100'), ['h100-00'], 'Failed');
    const r = await measure(tenant, gate('goldenPaths'));
    expect(r).toMatchObject({ value: 0.5, pass: false, failing: ['torchrun-training: no task of the template Succeeded in the last 7 days'] });
    await dispatched(tenant, anIntent().gpus(2, 'H100'), ['h100-00'], 'Succeeded');
    expect(await measure(tenant, gate('goldenPaths'))).toMatchObject({ value: 1, pass: true });
  });

  it('ladder executed: each step needs evidence in ladder_events (degrade: a degraded step)', async () => {
    const tenant = newTenant();
    await setBudget(ledger.db, { tenant }, 'month', 10, 'test');
    const budgetId = (await budgetIdOf(ledger.db, { tenant, team: '*', project: '*', period: 'month' }))!;
    await applyLadderChange(ledger.db, { budgetId, window: 'w', crossing: 1, from: 'ok', to: 'throttle', fired: ['notify', 'throttle'], sharePct: 85 });
    const r = await measure(tenant, gate('ladderExecuted'));
    expect(r).toMatchObject({ value: 0.4, pass: false });
    expect(r.failing).toEqual(['queue: no evidence in the last 7 days', 'preempt: no evidence in the last 7 days', 'degrade: no evidence in the last 7 days']);
    const task = await newTask(ledger.db, tenant);
    await appendAudit(ledger.db, { actor: 'govloop', taskId: task, action: 'step', decision: 'degrade', detail: { seq: 1 } });
    await applyLadderChange(ledger.db, { budgetId, window: 'w', crossing: 2, from: 'throttle', to: 'preempt', fired: ['queue', 'preempt'], sharePct: 120 });
    expect(await measure(tenant, gate('ladderExecuted'))).toMatchObject({ value: 1, pass: true, failing: [] });
  });

  it('pilot migration: the share of the pilots\u2019 cost that came through governed tasks', async () => {
    const tenant = newTenant();
    const pilot = `${tenant}/search/relevance`;
    const task = await newTask(ledger.db, tenant);
    await usage(attributionOf(tenant), 3, task);
    await usage(attributionOf(tenant), 1); // through the usage API, no task
    await usage(attributionOf(tenant, { useCase: 'other' }), 50); // not a pilot
    const r = await measure(tenant, gate('pilotMigration', { pilots: [pilot, `${tenant}/ads/chat`] }, 0.8));
    expect(r.value).toBeCloseTo(0.75, 6);
    expect(r.failing).toEqual([`${pilot}: $1.00 (1 events) outside governed tasks`, `${tenant}/ads/chat: no usage in the last 7 days`]);
  });

  it('SLO linkage: each pilot needs an SLO in policies.slos, for its use case, its team or its tenant', async () => {
    const tenant = newTenant();
    const pilots = [`${tenant}/search/relevance`, `${tenant}/ads/chat`];
    const cfg = aConfig().build();
    cfg.policies.slos = [{ scope: { tenant, team: 'search', useCase: 'relevance' }, objectives: { successRate: 0.9 }, windowDays: 7, forbidsFallback: true }];
    const r = await measure(tenant, gate('sloLinkage', { pilots }), cfg);
    expect(r).toMatchObject({ value: 0.5, failing: [`${tenant}/ads/chat: no SLO in policies.slos`] });
    expect(r.detail).toContain('1 forbid the fallback model');
    cfg.policies.slos.push({ scope: { tenant, team: 'ads' }, objectives: { successRate: 0.9 }, windowDays: 7, forbidsFallback: false });
    expect(await measure(tenant, gate('sloLinkage', { pilots }), cfg)).toMatchObject({ value: 1, pass: true });
    // The ladder must respect the SLO: degrading the relevance pilot (it forbids the fallback) at the queue step is
    // what decision 0026 allows; at the throttle step it is not, and the gate names the pilot and the task.
    const task = await newTask(ledger.db, tenant);
    await appendAudit(ledger.db, { actor: 'govloop', taskId: task, action: 'step', decision: 'degrade', detail: { seq: 1, ladderStep: 'queue' } });
    await appendAudit(ledger.db, { actor: 'govloop', taskId: task, action: 'step', decision: 'degrade', detail: { seq: 2 } });
    expect(await measure(tenant, gate('sloLinkage', { pilots }), cfg)).toMatchObject({ value: 1, pass: true });
    await appendAudit(ledger.db, { actor: 'govloop', taskId: task, action: 'step', decision: 'degrade', detail: { seq: 3, ladderStep: 'throttle' } });
    const early = await measure(tenant, gate('sloLinkage', { pilots }), cfg);
    expect(early).toMatchObject({ value: 0.5, pass: false });
    expect(early.failing).toEqual([
      `${tenant}/search/relevance: its SLO forbids the fallback model, yet the budget ladder degraded 1 steps before the queue step (1 at throttle; tasks ${task})`,
    ]);
  });

  it('team contract: owners must be named and hold the matching role in the tenant', async () => {
    const tenant = newTenant();
    await usage(attributionOf(tenant), 1);
    const owners = { [`${tenant}/search`]: { budget: 'ana', slo: 'sam', oncall: 'oli' } };
    const none = await measure(tenant, gate('teamContract'));
    expect(none.failing).toEqual([`${tenant}/search: no owners named for budget, SLO and on-call`]);
    const grant = (user: string, role: string) =>
      ledger.db.query("INSERT INTO access_grants (tenant, user_name, role, granted_by) VALUES ($1, $2, $3, 'test')", [tenant, user, role]);
    await grant('ana', 'budget-owner');
    await grant('sam', 'requester');
    await grant('oli', 'viewer');
    const r = await measure(tenant, gate('teamContract', { owners }));
    expect(r).toMatchObject({ value: 0, failing: [`${tenant}/search: oncall owner oli does not hold tenant-admin in ${tenant}`] });
    await grant('oli', 'tenant-admin');
    expect(await measure(tenant, gate('teamContract', { owners }))).toMatchObject({ value: 1, pass: true });
  });

  it('onboarding: recorded onboardings within the limit, reaching Succeeded', async () => {
    const tenant = newTenant();
    const onboard = async (useCase: string, seconds: number, state: string) => {
      const taskId = await newTask(ledger.db, tenant);
      await appendAudit(ledger.db, {
        actor: 'ana',
        taskId,
        action: 'program.onboard',
        decision: state,
        detail: { useCase: `${tenant}/search/${useCase}`, seconds, taskId, state },
      });
    };
    await onboard('fast', 95, 'Succeeded');
    await onboard('slow', 2400, 'Succeeded');
    await onboard('broken', 60, 'Failed');
    const r = await measure(tenant, gate('onboarding', { maxMinutes: 30 }));
    expect(r.value).toBeCloseTo(1 / 3, 6);
    expect(r.failing).toEqual([`${tenant}/search/slow: 2400 s, over 1800 s`, `${tenant}/search/broken: ended Failed`]);
  });

  it('deliverables: the same data hashes the same; new data changes the hash', async () => {
    const tenant = newTenant();
    await usage(attributionOf(tenant), 2);
    const now = new Date(Date.now() + 5000);
    const d = { id: 'weekly-dashboard', kind: 'dashboard' as const, name: 'Cost and usage dashboard' };
    const a = await produceDeliverable(ledger.db, config, d, now, { tenants: [tenant] });
    const b = await produceDeliverable(ledger.db, config, d, now, { tenants: [tenant] });
    expect(b.sha256).toBe(a.sha256);
    expect(a.content).toContain(`${tenant}`);
    expect(a.sources.length).toBeGreaterThan(0);
    await usage(attributionOf(tenant, { team: 'ads' }), 1);
    const c = await produceDeliverable(ledger.db, config, d, now, { tenants: [tenant] });
    expect(c.sha256).not.toBe(a.sha256);
    expect(c.content).toContain('ads');
  });

  it('deliverables: Admission Policy v0, the templates with their evidence, the isolation policy, Runbook v1, the onboarding record', async () => {
    const tenant = newTenant();
    const now = () => new Date(Date.now() + 5000);
    const make = (kind: Parameters<typeof produceDeliverable>[2]['kind'], o: Parameters<typeof produceDeliverable>[4] = {}) =>
      produceDeliverable(ledger.db, config, { id: kind, kind, name: kind }, now(), { tenants: [tenant], ...o });

    const policy = await make('admission-policy');
    expect(JSON.parse(policy.content).kinds.training).toMatchObject({ maxContextTokens: 32000, maxSteps: 1, maxUsd: 20000 });
    expect(policy.version).toBe(`v${policy.sha256.slice(0, 12)}`);

    const inference = await dispatched(tenant, anIntent().kind('inference').share(250, 'A100', 'mps'), ['a100-08'], 'Succeeded');
    const templates = JSON.parse((await make('templates')).content) as {
      templates: { name: string; succeeded: { tasks: number; lastTaskId: string | null } }[];
    };
    expect(templates.templates.find((t) => t.name === 'vllm-inference')!.succeeded).toMatchObject({ tasks: 1, lastTaskId: inference });
    expect(templates.templates.find((t) => t.name === 'torchrun-training')!.succeeded).toMatchObject({ tasks: 0, lastTaskId: null });

    const isolation = JSON.parse((await make('isolation-policy')).content);
    expect(isolation.whitelist.allowed).toEqual({ H100: ['exclusive', 'mig'], A100: ['exclusive', 'mig', 'mps', 'timeslice'] });
    expect(isolation.clusterOffers.nodesPerMode.A100).toEqual({ exclusive: 16, mig: 8, mps: 8, timeslice: 8 });
    expect(isolation.dispatches.byTenantTypeMode).toEqual([{ tenant, gpuType: 'A100', sharing: 'mps', dispatches: 1, conforms: true }]);

    const runbook = await make('runbook');
    expect(runbook.content).toContain('| Preempted | runbooks/preempted.md |');
    expect(runbook.content).toContain('notify at 50%, throttle (and degrade) at 80%, queue at 100%, preempt at 110%');
    expect(runbook.content).toContain('# Cost audit');
    expect(runbook.sources).toContainEqual(expect.stringMatching(/^runbooks\/changes\.md sha256:[0-9a-f]{64}$/));

    const empty = await make('onboarding-record');
    await appendAudit(ledger.db, {
      actor: 'ana',
      taskId: inference,
      action: 'program.onboard',
      decision: 'Succeeded',
      detail: { useCase: `${tenant}/search/chat`, seconds: 412, taskId: inference, state: 'Succeeded' },
    });
    const record = await make('onboarding-record');
    expect(record.sha256).not.toBe(empty.sha256);
    expect(JSON.parse(record.content).onboardings).toEqual([
      expect.objectContaining({ useCase: `${tenant}/search/chat`, seconds: 412, taskId: inference, state: 'Succeeded', by: 'ana' }),
    ]);
    expect(record.sources).toEqual([expect.stringMatching(/^audit_log#\d+$/)]);
  });
});

describe('Runbook v1 gate over a runbooks directory', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'runbooks-'));
    cpSync(RUNBOOK_DIR, dir, { recursive: true });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the shipped runbooks pass; a page missing, a link missing or a section missing is named', async () => {
    const g = gate('runbookV1');
    const ledger = await backends[0]!.open();
    try {
      const run = async () => (await evaluateGates(ledger.db, config, [g], new Date(), { runbookDir: dir }))[0]!;
      expect(await run()).toMatchObject({ value: 1, pass: true, failing: [] });
      rmSync(join(dir, 'preempted.md'));
      const readme = readFileSync(join(dir, 'README.md'), 'utf8');
      writeFileSync(join(dir, 'README.md'), readme.replace('(queued.md)', '(queued)'));
      rmSync(join(dir, 'cost-audit.md'));
      const r = await run();
      expect(r.pass).toBe(false);
      expect(r.failing).toEqual([
        'GovState Queued: runbooks/README.md does not link queued.md',
        'GovState Preempted: runbooks/preempted.md is missing',
        'section cost audit: no heading with "cost audit" in runbooks/',
      ]);
    } finally {
      await ledger.close();
    }
  });
});
