import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { defaultConfigDir } from '../../config/load';
import { parseIntentText } from '../../governance/intent';
import type { ProgramGate } from '../../governance/program';
import { grantAccess } from '../../ledger/approvals';
import { createKey, hashKey } from '../../ledger/keys';
import { evaluateGates } from '../../ledger/program-gates';
import { bundleWorkflows } from '../../workers/worker';
import { govloop } from '../support/cli';
import { type Harness, createHarness } from '../support/harness';

let h: Harness;
let dir: string;
let env: Record<string, string>;

beforeAll(async () => {
  h = await createHarness({ bundle: await bundleWorkflows() });
  await h.startWorkers();
  dir = mkdtempSync(join(tmpdir(), 'govloop-onboard-'));
  env = {
    TEMPORAL_ADDRESS: inject('temporalAddress'),
    DATABASE_URL: inject('databaseUrl'),
    GOVLOOP_TASK_QUEUE: h.controlQueue,
    GOVLOOP_DATA_DIR: join(dir, 'state'),
  };
});

afterAll(async () => {
  await h.close();
  rmSync(dir, { recursive: true, force: true });
});

const onboardingGate: ProgramGate = { id: 'onboarding', check: 'onboarding', threshold: 1, windowDays: 1, params: { maxMinutes: 30 } };
const gate = async (tenant: string) => (await evaluateGates(h.db, h.config, [onboardingGate], new Date(Date.now() + 1000), { tenants: [tenant] }))[0]!;
const onboardRows = async (tenant: string) =>
  (
    await h.db.query<{ task_id: string; actor: string; decision: string; detail: Record<string, any> }>(
      `SELECT task_id, actor, decision, detail FROM audit_log WHERE action = 'program.onboard' AND detail->>'useCase' LIKE $1 ORDER BY id`,
      [`${tenant}/%`],
    )
  ).rows;

describe('govloop onboard, as a separate process, against the real server and PostgreSQL', () => {
  const args = (tenant: string, more: string[] = []) => [
    'onboard',
    '--tenant',
    tenant,
    '--team',
    'chat',
    '--use-case',
    'faq-bot',
    '--kind',
    'inference',
    '--budget-usd',
    '100',
    '--as',
    'ana',
    '--out',
    join(dir, 'intents'),
    '--json',
    ...more,
  ];

  it('a new tenant: roles, team budget, key and starter intent exist, the first task Succeeded, and the onboarding gate passes on the recorded row', async () => {
    const tenant = h.tenant;
    expect((await gate(tenant)).value).toBeNull(); // nothing recorded yet: no data, the gate fails
    const t0 = Date.now();
    const r = await govloop(args(tenant), env);
    const wall = (Date.now() - t0) / 1000;
    expect(r.code, r.stderr).toBe(0);
    const out = r.json();
    console.log(
      `govloop onboard (inference, ${tenant}/chat/faq-bot): recorded ${out.seconds} s, process wall time ${wall.toFixed(2)} s; steps ${JSON.stringify(out.steps.map((s: any) => [s.name, s.seconds]))}`,
    );
    expect(out).toMatchObject({ useCase: `${tenant}/chat/faq-bot`, owner: 'ana', state: 'Succeeded', decision: 'admitted', template: 'vllm-inference' });
    expect(out.seconds).toBeGreaterThan(0);
    expect(out.steps.map((s: { name: string }) => s.name)).toEqual(['roles', 'budget', 'quota', 'keys', 'template', 'first task', 'record']);
    expect(r.stderr).toMatch(/\[1\/7\] roles: granted requester, budget-owner to ana/);
    expect(r.stderr).toMatch(/\[3\/7\] quota: 8 H100 GPUs for .*defaultGpuQuota/);
    expect(r.stderr).not.toContain(out.apiKey); // the key is in the JSON object only

    // The grant, the budget, the key (stored hashed, issued to the owner), the intent file.
    const grants = await h.db.query('SELECT user_name, role FROM access_grants WHERE tenant = $1 ORDER BY role', [tenant]);
    expect(grants.rows).toEqual([
      { user_name: 'ana', role: 'budget-owner' },
      { user_name: 'ana', role: 'requester' },
    ]);
    const budgets = await h.db.query('SELECT team, project, period, limit_micros FROM budgets WHERE tenant = $1', [tenant]);
    expect(budgets.rows).toEqual([{ team: 'chat', project: '*', period: 'month', limit_micros: 100_000_000 }]);
    expect(out.apiKey).toMatch(/^glk_/);
    const keys = await h.db.query('SELECT subject, prefix, revoked_at FROM api_keys WHERE tenant = $1 AND key_hash = $2', [tenant, hashKey(out.apiKey)]);
    expect(keys.rows).toEqual([{ subject: 'ana', prefix: out.keyPrefix, revoked_at: null }]);
    expect(out.intentFile).toBe(join(dir, 'intents', tenant, 'chat', 'faq-bot.yaml'));
    const parsed = parseIntentText(readFileSync(out.intentFile, 'utf8'));
    expect(parsed.ok && parsed.value).toMatchObject({
      kind: 'inference',
      attribution: { tenant, team: 'chat', project: 'faq-bot', useCase: 'faq-bot' },
      resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
      simulation: { durationSeconds: 300 },
    });

    // The task ran through the loop, submitted with the new key: the requester is the verified owner.
    const task = await h.db.query('SELECT state, requester, plan FROM tasks WHERE task_id = $1', [out.taskId]);
    expect(task.rows[0]).toMatchObject({ state: 'Succeeded', requester: 'ana', plan: expect.objectContaining({ template: 'vllm-inference' }) });

    // The record: one row, the time and the steps; the key itself is in no audit row.
    const rows = await onboardRows(tenant);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ task_id: out.taskId, actor: 'ana (unverified)', decision: 'Succeeded' });
    expect(rows[0]!.detail).toMatchObject({ useCase: `${tenant}/chat/faq-bot`, taskId: out.taskId, state: 'Succeeded', seconds: out.seconds });
    expect(rows[0]!.detail.seconds).toBeGreaterThan(0);
    expect(rows[0]!.detail.steps.map((s: { name: string }) => s.name)).toEqual(['roles', 'budget', 'quota', 'keys', 'template', 'first task']);
    const leaked = await h.db.query('SELECT count(*)::int AS n FROM audit_log WHERE detail::text LIKE $1', [`%${out.apiKey}%`]);
    expect(leaked.rows[0]!.n).toBe(0);

    const g = await gate(tenant);
    expect(g).toMatchObject({ pass: true, value: 1, failing: [] });
    expect(g.detail).toMatch(/^1 of 1 onboardings/);
  }, 180_000);

  it('a second run for the same use case succeeds: the grant and budget exist already and are not duplicated (text output)', async () => {
    const tenant = h.tenant;
    const t0 = Date.now();
    const r = await govloop(
      args(tenant, ['--budget-usd', '500']).filter((a) => a !== '--json'),
      env,
    );
    expect(r.code, r.stderr).toBe(0);
    console.log(`govloop onboard, second run (${tenant}/chat/faq-bot): process wall time ${((Date.now() - t0) / 1000).toFixed(2)} s`);
    console.log(r.stdout);
    expect(r.stdout).toMatch(/\[1\/7\] roles: requester, budget-owner held already/);
    expect(r.stdout).toMatch(/\[2\/7\] budget: team budget .* exists already: \$100\.00/);
    expect(r.stdout).toMatch(/\[4\/7\] keys: API key glk_.{8}… issued to ana .*2 live keys for ana/);
    expect(r.stdout).toMatch(/\[5\/7\] template: .* exists already, kept/);
    const keyLines = r.stdout.split('\n').filter((l) => /glk_[A-Za-z0-9_-]{43}/.test(l));
    expect(keyLines).toHaveLength(1); // the key, printed once
    expect(r.stdout).toMatch(/is on its golden path: faq-bot-[0-9a-f]{8} Succeeded in [\d.]+ s/);
    expect(r.stdout).toMatch(/total \(1-6\)/);
    expect((await h.db.query('SELECT count(*)::int AS n FROM access_grants WHERE tenant = $1', [tenant])).rows[0]!.n).toBe(2);
    expect((await h.db.query('SELECT limit_micros FROM budgets WHERE tenant = $1', [tenant])).rows).toEqual([{ limit_micros: 100_000_000 }]);
    const rows = await onboardRows(tenant);
    expect(rows).toHaveLength(2);
    expect(rows[1]!.detail).toMatchObject({ state: 'Succeeded' });
    expect((await gate(tenant)).pass).toBe(true);
  }, 180_000);

  it('the training golden path: a second use case of the team onboards through torchrun-training', async () => {
    const tenant = h.tenant;
    const a = args(tenant);
    a[a.indexOf('faq-bot')] = 'nightly-ft';
    a[a.indexOf('inference')] = 'training';
    const r = await govloop(a, env);
    expect(r.code, r.stderr).toBe(0);
    const out = r.json();
    console.log(`govloop onboard (training, ${tenant}/chat/nightly-ft): recorded ${out.seconds} s`);
    expect(out).toMatchObject({ state: 'Succeeded', template: 'torchrun-training', kind: 'training' });
    const task = await h.db.query('SELECT plan FROM tasks WHERE task_id = $1', [out.taskId]);
    expect(task.rows[0]!.plan).toMatchObject({ template: 'torchrun-training' });
    expect((await gate(tenant)).detail).toMatch(/^3 of 3 onboardings/);
  }, 180_000);

  it('bad flags exit 2 naming each flag, and change nothing', async () => {
    const r = await govloop(['onboard', '--tenant', 'Bad_Name', '--kind', 'serving', '--budget-usd', 'lots', '--timeout-seconds', '0', '--json'], env);
    expect(r.code).toBe(2);
    const paths = r
      .json()
      .errors.map((e: { path: string }) => e.path)
      .sort();
    expect(paths).toEqual(['budgetUsd', 'kind', 'team', 'tenant', 'timeoutSeconds', 'useCase']);
    for (const flag of ['--tenant', '--team', '--use-case', '--kind', '--budget-usd', '--timeout-seconds']) expect(r.stderr).toContain(`${flag}: `);
    expect((await h.db.query(`SELECT count(*)::int AS n FROM access_grants WHERE tenant = 'Bad_Name'`)).rows[0]!.n).toBe(0);
  });

  it('a first task that does not succeed exits 3 with its state and reasons, and is recorded so the gate fails', async () => {
    const tenant = `${h.tenant}-poor`;
    // $1 of budget: the starter's worst case ($4, one H100-hour) does not fit, admission rejects it.
    const r = await govloop(args(tenant, ['--budget-usd', '1']), env);
    expect(r.code, r.stderr).toBe(3);
    const out = r.json();
    expect(out).toMatchObject({ state: 'Rejected', decision: 'rejected', reasons: [expect.objectContaining({ code: 'BUDGET_EXCEEDED' })] });
    const rows = await onboardRows(tenant);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ decision: 'Rejected', detail: expect.objectContaining({ state: 'Rejected' }) });
    expect(await gate(tenant)).toMatchObject({ pass: false, value: 0, failing: [`${tenant}/chat/faq-bot: ended Rejected`] });
  }, 180_000);

  it("auth required: a typed name is refused; a tenant admin's key onboards another owner, the audit names the verified caller; a requester's key cannot", async () => {
    const tenant = `${h.tenant}-authreq`;
    const required = { ...env, GOVLOOP_AUTH_MODE: 'required', GOVLOOP_PLATFORM_ADMINS: 'root-admin' };
    const own = (extra: string[]) => args(tenant, extra).filter((a, i, all) => a !== '--as' && all[i - 1] !== '--as');
    const count = async (table: string) => (await h.db.query(`SELECT count(*)::int AS n FROM ${table} WHERE tenant = $1`, [tenant])).rows[0]!.n;

    const typed = await govloop(args(tenant), required);
    expect(typed.code, typed.stderr).toBe(3);
    expect(typed.json()).toMatchObject({ code: 'AUTH_REQUIRED' });

    const requester = (await createKey(h.db, tenant, 'test', 'rita')).key;
    await grantAccess(h.db, { tenant, user: 'rita', role: 'requester', by: 'test' });
    const weak = await govloop(own(['--owner', 'sue']), { ...required, GOVLOOP_API_KEY: requester });
    expect(weak.code, weak.stderr).toBe(3);
    expect(weak.json()).toMatchObject({ code: 'FORBIDDEN', step: 'roles' });
    expect([await count('budgets'), await count('api_keys'), await onboardRows(tenant).then((r) => r.length)]).toEqual([0, 1, 0]);

    const admin = (await createKey(h.db, tenant, 'test', 'tara')).key;
    await grantAccess(h.db, { tenant, user: 'tara', role: 'tenant-admin', by: 'test' });
    const ok = await govloop(own(['--owner', 'sue']), { ...required, GOVLOOP_API_KEY: admin });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json()).toMatchObject({ owner: 'sue', state: 'Succeeded' });
    const grants = await h.db.query<{ user_name: string; role: string; granted_by: string }>(
      "SELECT user_name, role, granted_by FROM access_grants WHERE tenant = $1 AND user_name = 'sue' ORDER BY role",
      [tenant],
    );
    expect(grants.rows.map((g) => [g.role, g.granted_by])).toEqual([
      ['budget-owner', 'tara'],
      ['requester', 'tara'],
    ]);
    const [row] = await onboardRows(tenant);
    expect(row).toMatchObject({ actor: 'tara', decision: 'Succeeded', detail: { owner: 'sue' } });
    expect((await gate(tenant)).pass).toBe(true);
  }, 180_000);

  it('no GPU quota for the team: the quota step fails (exit 3) before any key or task, and nothing is recorded', async () => {
    const configDir = join(dir, 'config');
    cpSync(defaultConfigDir, configDir, { recursive: true });
    const policies = join(configDir, 'policies.yaml');
    writeFileSync(policies, readFileSync(policies, 'utf8').replace(/^defaultGpuQuota: \d+$/m, 'defaultGpuQuota: 0'));
    const tenant = `${h.tenant}-noquota`;
    const r = await govloop(args(tenant), { ...env, GOVLOOP_CONFIG_DIR: configDir });
    expect(r.code, r.stderr).toBe(3);
    expect(r.json()).toMatchObject({ code: 'NO_GPU_QUOTA', step: 'quota', quota: 0, asked: 1 });
    expect(r.stderr).toMatch(/\[3\/7\] quota: FAILED/);
    expect(r.stderr).toMatch(/may hold 0 H100 GPUs \(policies\/default#defaultGpuQuota\)/);
    expect((await h.db.query('SELECT count(*)::int AS n FROM api_keys WHERE tenant = $1', [tenant])).rows[0]!.n).toBe(0);
    expect(
      (await h.db.query('SELECT count(*)::int AS n FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE a.tenant = $1', [tenant])).rows[0]!.n,
    ).toBe(0);
    expect(await onboardRows(tenant)).toHaveLength(0);
    expect(existsSync(join(dir, 'intents', tenant))).toBe(false);
  }, 120_000);
});
