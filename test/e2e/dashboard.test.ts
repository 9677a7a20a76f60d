/**
 * The cost and usage dashboard end to end: the API listening for real on 127.0.0.1, the page
 * opened in headless Chromium (the Debian package, driven by playwright-core), and every figure
 * it shows checked against what the ledger itself says — total cost, cost per team and per week,
 * budget share and ladder step, top spenders, enforcement actions, the task drill-down and its
 * links into Temporal UI. Another tenant's key sees none of it. A screenshot is saved to
 * test/artifacts/dashboard.png.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, type Page, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadConfig } from '../../config/load';
import type { Attribution } from '../../governance/intent';
import { usdToMicros } from '../../governance/pricing';
import { appendAudit } from '../../ledger/audit';
import { reserve, setBudget } from '../../ledger/budgets';
import { Db } from '../../ledger/db';
import { createKey } from '../../ledger/keys';
import { upsertTask, updateTask } from '../../ledger/tasks';
import { type UsageEvent, recordUsage } from '../../ledger/usage';
import { type Api, buildApi } from '../../server/app';
import { burnShare, ladderStep } from '../../governance/ladder';
import { anIntent } from '../support/builders';

const CHROMIUM = process.env.GOVLOOP_CHROMIUM ?? '/usr/bin/chromium';
const TEMPORAL_UI = 'http://temporal-ui.example:8233';
const NAMESPACE = 'govloop-e2e';
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');
const priceBook = loadConfig().priceBook;

let db: Db;
let api: Api;
let base: string;
let browser: Browser;

const tenant = `dash-${randomUUID().slice(0, 8)}`;
const other = `dash-other-${randomUUID().slice(0, 8)}`;
let key: string;
let otherKey: string;
const tasks: Record<'ranker' | 'embedder' | 'helpdesk' | 'probe' | 'intruder', string> = {
  ranker: `ranker-nightly-${randomUUID().slice(0, 8)}`,
  embedder: `embedder-ft-${randomUUID().slice(0, 8)}`,
  helpdesk: `helpdesk-agent-${randomUUID().slice(0, 8)}`,
  probe: `probe-${randomUUID().slice(0, 8)}`,
  intruder: `intruder-${randomUUID().slice(0, 8)}`,
};

const HOUR = 3600;
const DAY_MS = 86_400_000;

async function seed(): Promise<void> {
  const now = new Date();
  const ago = (ms: number) => new Date(now.getTime() - ms);
  key = (await createKey(db, tenant, 'test')).key;
  otherKey = (await createKey(db, other, 'test')).key;
  // 'total' budgets: the windows do not depend on the day the test runs.
  await setBudget(db, { tenant }, 'total', 100, 'test');
  await setBudget(db, { tenant, team: 'search' }, 'total', 40, 'test');

  const attr = (t: string, a: Partial<Attribution>): Attribution => ({
    tenant: t,
    team: 'search',
    project: 'ranker',
    model: 'llama-3-8b',
    useCase: 'relevance',
    ...a,
  });
  const ranker = attr(tenant, {});
  const embedder = attr(tenant, { project: 'embedder', useCase: 'retrieval' });
  const helpdesk = attr(tenant, { team: 'support', project: 'helpdesk', model: 'frontier-large', useCase: 'tickets' });
  const probe = attr(tenant, { team: 'research', project: 'probe', useCase: 'eval' });
  const intruder = attr(other, { team: 'other-team', project: 'secret' });
  const task = (taskId: string, a: Attribution, kind: 'training' | 'finetune' | 'agent', name: string, state: string) =>
    upsertTask(db, { taskId, intent: anIntent().kind(kind).named(name).attribution(a).build(), requester: 'test', state });
  await task(tasks.ranker, ranker, 'training', 'ranker-nightly', 'Running');
  await task(tasks.embedder, embedder, 'finetune', 'embedder-ft', 'Running');
  await task(tasks.helpdesk, helpdesk, 'agent', 'helpdesk-agent', 'Running');
  await task(tasks.probe, probe, 'training', 'probe', 'Admitting');
  await task(tasks.intruder, intruder, 'training', 'intruder', 'Running');

  // A reservation that stays partly held, and one that no budget can cover (audited: rejected).
  expect((await reserve(db, tasks.embedder, embedder, usdToMicros(15), now)).ok).toBe(true);
  const rejected = await reserve(db, tasks.probe, probe, usdToMicros(1000), now);
  expect(rejected.ok).toBe(false);
  await updateTask(db, tasks.probe, { state: 'Rejected', decision: 'rejected', finished: true });

  let n = 0;
  const ev = (taskId: string | null, a: Attribution, meter: UsageEvent['meter'], subject: string, quantity: number, occurredAt: Date): UsageEvent => ({
    key: `${tenant}-${n++}`,
    taskId,
    attribution: a,
    meter,
    subject,
    quantity,
    occurredAt,
  });
  const thisWeek = ago(60_000);
  await recordUsage(db, priceBook, [
    // search: 3 + 2 + 1 GPU-hours of H100 for the ranker over three weeks, 2.5 for the embedder.
    ev(tasks.ranker, ranker, 'gpu_seconds', 'H100:exclusive', 3 * HOUR, thisWeek),
    ev(tasks.ranker, ranker, 'gpu_seconds', 'H100:exclusive', 2 * HOUR, ago(7 * DAY_MS)),
    ev(tasks.ranker, ranker, 'gpu_seconds', 'H100:exclusive', 1 * HOUR, ago(14 * DAY_MS)),
    ev(tasks.embedder, embedder, 'gpu_seconds', 'H100:exclusive', 2.5 * HOUR, thisWeek),
    // support: an agent on a frontier model, this week and last.
    ev(tasks.helpdesk, helpdesk, 'tokens_in', 'frontier-large', 1_000_000, thisWeek),
    ev(tasks.helpdesk, helpdesk, 'tokens_out', 'frontier-large', 400_000, thisWeek),
    ev(tasks.helpdesk, helpdesk, 'tokens_in', 'frontier-large', 500_000, ago(7 * DAY_MS)),
    // research: usage reported without a task (a notebook), on shared A100s.
    ev(null, probe, 'gpu_seconds', 'A100:mps', 5 * HOUR, thisWeek),
    // the other tenant.
    ev(tasks.intruder, intruder, 'gpu_seconds', 'H100:exclusive', 1 * HOUR, thisWeek),
  ]);

  // Enforcement as the activities record it: a step denied at a cap, a job stopped at its cap.
  await appendAudit(db, {
    actor: 'govloop',
    taskId: tasks.helpdesk,
    action: 'step',
    decision: 'deny',
    detail: { seq: 7, tool: null, reason: { code: 'CAP_MAX_USD', message: 'the step would cross maxUsd' } },
    dedupeKey: `${tasks.helpdesk}:step:7`,
  });
  await updateTask(db, tasks.embedder, { state: 'CapExceeded', finished: true });
  await appendAudit(db, {
    actor: 'govloop',
    taskId: tasks.embedder,
    action: 'settle',
    decision: 'CapExceeded',
    detail: { costUsd: 10 },
    dedupeKey: `${tasks.embedder}:settle`,
  });
  await updateTask(db, tasks.ranker, { state: 'Succeeded', finished: true });
  await appendAudit(db, {
    actor: 'govloop',
    taskId: tasks.ranker,
    action: 'settle',
    decision: 'Succeeded',
    detail: { costUsd: 24 },
    dedupeKey: `${tasks.ranker}:settle`,
  });
}

// ---- what the ledger says, read directly (never through the dashboard's code) ----

async function ledgerCostByTeam(t: string): Promise<Map<string, number>> {
  const { rows } = await db.query<{ team: string; cost: number }>(
    'SELECT a.team, SUM(u.cost_micros)::bigint AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1 GROUP BY 1',
    [t],
  );
  return new Map(rows.map((r) => [r.team, Number(r.cost)]));
}

async function ledgerCostByWeekAndTeam(t: string): Promise<Map<string, number>> {
  const { rows } = await db.query<{ week: Date; team: string; cost: number }>(
    `SELECT date_trunc('week', u.occurred_at, 'UTC') AS week, a.team, SUM(u.cost_micros)::bigint AS cost
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1 GROUP BY 1, 2`,
    [t],
  );
  return new Map(rows.map((r) => [`${r.week.toISOString().slice(0, 10)}|${r.team}`, Number(r.cost)]));
}

async function ledgerBudgets(t: string): Promise<{ scope: string; limit: number; reserved: number; spent: number }[]> {
  const { rows } = await db.query<{ tenant: string; team: string; project: string; limit_micros: number; reserved_micros: number; spent_micros: number }>(
    `SELECT b.tenant, b.team, b.project, b.limit_micros, w.reserved_micros, w.spent_micros
       FROM budgets b JOIN budget_windows w ON w.budget_id = b.id WHERE b.tenant = $1 AND b.period = 'total'`,
    [t],
  );
  return rows.map((r) => ({
    scope: `${r.tenant}/${r.team}/${r.project}`,
    limit: Number(r.limit_micros),
    reserved: Number(r.reserved_micros),
    spent: Number(r.spent_micros),
  }));
}

async function ledgerTaskCosts(t: string): Promise<{ taskId: string; cost: number }[]> {
  const { rows } = await db.query<{ task_id: string; cost: number }>(
    `SELECT u.task_id, SUM(u.cost_micros)::bigint AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
      WHERE a.tenant = $1 AND u.task_id IS NOT NULL GROUP BY 1 ORDER BY 2 DESC`,
    [t],
  );
  return rows.map((r) => ({ taskId: r.task_id, cost: Number(r.cost) }));
}

const usd = (micros: number) => micros / 1e6;
const fmtUsd = (x: number) =>
  new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(x);

// ---- the browser ----

async function openDashboard(apiKey: string | null, opts: { viaForm?: string } = {}): Promise<{ page: Page; problems: string[] }> {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  // Everything the page loads comes from the govloop server itself: no CDN, nothing else.
  page.on('request', (r) => {
    if (!r.url().startsWith(base)) problems.push(`request off the server: ${r.url()}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} ${r.url()}`);
  });
  await page.goto(`${base}/dashboard${apiKey ? `?key=${encodeURIComponent(apiKey)}` : ''}`);
  if (opts.viaForm !== undefined) {
    await page.waitForSelector('body[data-state="login"]');
    await page.fill('[data-testid=key-input]', opts.viaForm);
    await page.click('#key-form button[type=submit]');
  }
  await page.waitForSelector('body[data-state="ready"]', { timeout: 30_000 });
  return { page, problems };
}

/** The text as written (textContent: innerText would apply the stylesheet's text-transform). */
const text = async (page: Page, sel: string) => ((await page.locator(sel).first().textContent()) ?? '').trim();
const value = async (page: Page, sel: string) => Number(await page.locator(sel).first().getAttribute('data-value'));

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: the dashboard test drives the Debian package chromium headless (apt-get install -y chromium; .ci/run installs it; or set GOVLOOP_CHROMIUM)`,
    );
  }
  db = new Db(inject('databaseUrl'), 4);
  api = await buildApi({
    db,
    config: { priceBook, maxAgeHours: 72, futureSkewSeconds: 300, dashboard: { temporalUiUrl: TEMPORAL_UI, temporalNamespace: NAMESPACE } },
  });
  base = await api.app.listen({ host: '127.0.0.1', port: 0 });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  await seed();
});

afterAll(async () => {
  await browser?.close();
  await api?.app.close();
  await db?.close();
});

describe('GET /dashboard in headless Chromium', () => {
  it('shows the tenant’s weekly cost, budget burn, top spenders, enforcement and tasks exactly as the ledger has them', async () => {
    const { page, problems } = await openDashboard(key);
    // The key given once in the address is kept in the tab, not in the address bar or history.
    expect(page.url()).not.toContain('key=');
    expect(await text(page, '[data-testid=tenant]')).toBe(`tenant ${tenant}`);

    // Total cost: every event of the tenant is inside the 4 weeks shown.
    const byTeam = await ledgerCostByTeam(tenant);
    const total = [...byTeam.values()].reduce((s, c) => s + c, 0);
    expect(usd(total)).toBe(55.5);
    expect(await value(page, '[data-testid=total-cost]')).toBe(usd(total));
    expect(await text(page, '[data-testid=total-cost]')).toBe(fmtUsd(usd(total)));

    // Cost per team, in the top teams, highest first.
    const teams = [...byTeam.entries()].sort((a, b) => b[1] - a[1]);
    expect(await page.locator('[data-testid=top-team]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-key')))).toEqual(teams.map(([t]) => t));
    for (const [team, cost] of teams) {
      const cell = `[data-testid=top-team][data-key="${team}"] [data-testid=cost]`;
      expect(await value(page, cell)).toBe(usd(cost));
      expect(await text(page, cell)).toBe(fmtUsd(usd(cost)));
    }

    // The weekly chart by team: each bar segment is that team's cost in that ISO week.
    const chart = await page.evaluate(() => {
      const c = (
        globalThis as unknown as { Chart: { getChart(id: string): { data: { labels: string[]; datasets: { label: string; data: number[] }[] } } } }
      ).Chart.getChart('weekly-chart');
      return { labels: c.data.labels, datasets: c.data.datasets.map((d) => ({ label: d.label, data: d.data })) };
    });
    expect(chart.labels).toHaveLength(4);
    const weekly = await ledgerCostByWeekAndTeam(tenant);
    const shown = new Map<string, number>();
    chart.datasets.forEach((d) => d.data.forEach((v, i) => v !== 0 && shown.set(`${chart.labels[i]!.replace('week of ', '')}|${d.label}`, v)));
    expect(shown).toEqual(new Map([...weekly].map(([k, micros]) => [k, usd(micros)])));
    expect(new Set([...weekly.keys()].map((k) => k.split('|')[0])).size).toBeGreaterThanOrEqual(2);

    // Budget burn: spent over limit, and the ladder step that spent + reserved puts the budget at.
    const budgets = await ledgerBudgets(tenant);
    expect(budgets).toHaveLength(2);
    for (const b of budgets) {
      const row = `[data-testid=budget][data-scope="${b.scope}"][data-period=total]`;
      const share = b.spent / b.limit;
      expect(await value(page, `${row} [data-testid=budget-share]`)).toBe(share);
      expect(await text(page, `${row} [data-testid=budget-share]`)).toBe(`${(share * 100).toFixed(1)} %`);
      expect(await text(page, `${row} [data-testid=budget-step]`)).toBe(
        ladderStep(burnShare({ limitMicros: b.limit, spentMicros: b.spent, reservedMicros: b.reserved })),
      );
      expect(await value(page, `${row} [data-testid=budget-spent]`)).toBe(usd(b.spent));
      expect(await value(page, `${row} [data-testid=budget-reserved]`)).toBe(usd(b.reserved));
      expect(await value(page, `${row} [data-testid=budget-limit]`)).toBe(usd(b.limit));
    }
    // Not vacuous: search spent 34 and holds 5 of 40 (97.5 %, throttle), the tenant 60.50 of 100 (notify).
    const search = budgets.find((b) => b.scope === `${tenant}/search/*`)!;
    expect([
      search.spent,
      search.reserved,
      ladderStep(burnShare({ limitMicros: search.limit, spentMicros: search.spent, reservedMicros: search.reserved })),
    ]).toEqual([usdToMicros(34), usdToMicros(5), 'throttle']);
    expect(await text(page, `[data-testid=budget][data-scope="${tenant}/*/*"] [data-testid=budget-step]`)).toBe('notify');

    // Top spender task, linked into Temporal UI.
    const taskCosts = await ledgerTaskCosts(tenant);
    const top = taskCosts[0]!;
    expect(top.taskId).toBe(tasks.ranker);
    const firstTask = page.locator('[data-testid=top-task]').first();
    expect(await firstTask.getAttribute('data-key')).toBe(top.taskId);
    expect(Number(await firstTask.locator('[data-testid=cost]').getAttribute('data-value'))).toBe(usd(top.cost));
    expect(await firstTask.locator('[data-testid=task-link]').getAttribute('href')).toBe(`${TEMPORAL_UI}/namespaces/${NAMESPACE}/workflows/${top.taskId}`);

    // Enforcement actions: what the audit log holds for this tenant's tasks.
    const { rows: audit } = await db.query<{ action: string; decision: string; n: number }>(
      `SELECT l.action, l.decision, COUNT(*)::int AS n FROM audit_log l JOIN tasks t ON t.task_id = l.task_id JOIN attributions a ON a.id = t.attribution_id
        WHERE a.tenant = $1 AND ((l.action = 'reserve' AND l.decision = 'rejected') OR (l.action = 'step' AND l.decision = 'deny') OR (l.action = 'settle' AND l.decision = 'CapExceeded'))
        GROUP BY 1, 2`,
      [tenant],
    );
    const count = (action: string) => audit.find((r) => r.action === action)?.n ?? 0;
    const chips = await page
      .locator('[data-testid=enforcement-total]')
      .evaluateAll((els) => Object.fromEntries(els.map((e) => [e.getAttribute('data-kind'), Number(e.getAttribute('data-value'))])));
    expect(chips).toEqual({ 'budget-rejected': count('reserve'), 'step-denied': count('step'), 'cap-stop': count('settle') });
    expect(Object.values(chips)).toEqual([1, 1, 1]);

    // The task drill-down: every task of the tenant, its state and cost, linked into Temporal UI.
    const { rows: ledgerTasks } = await db.query<{ task_id: string; state: string; cost_micros: number }>(
      'SELECT t.task_id, t.state, t.cost_micros FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE a.tenant = $1',
      [tenant],
    );
    expect(await page.locator('[data-testid=task]').count()).toBe(ledgerTasks.length);
    for (const t of ledgerTasks) {
      const row = page.locator(`[data-testid=task][data-task-id="${t.task_id}"]`);
      expect(await row.locator('[data-testid=task-state]').textContent()).toBe(t.state);
      expect(Number(await row.locator('[data-testid=cost]').getAttribute('data-value'))).toBe(usd(Number(t.cost_micros)));
      expect(await row.locator('[data-testid=task-link]').getAttribute('href')).toBe(`${TEMPORAL_UI}/namespaces/${NAMESPACE}/workflows/${t.task_id}`);
    }

    // Drill down: a click on the team narrows the tasks to that team's.
    await page.click('[data-testid=top-team][data-key=search]');
    await page.waitForSelector('[data-testid=filter-chip]');
    await expect
      .poll(() => page.locator('[data-testid=task]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-task-id')).sort()))
      .toEqual([tasks.embedder, tasks.ranker].sort());
    await page.click('[data-testid=filter-chip] button');
    await expect.poll(() => page.locator('[data-testid=task]').count()).toBe(ledgerTasks.length);

    // Nothing failed in the page (a CSP violation is a console error), nothing came from elsewhere.
    expect(problems).toEqual([]);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
    await page.context().close();
  });

  it('shows another tenant’s key its own figures only, none of this tenant’s', async () => {
    // This time the key is typed into the page's form.
    const { page, problems } = await openDashboard(null, { viaForm: otherKey });
    expect(await text(page, '[data-testid=tenant]')).toBe(`tenant ${other}`);
    const otherTotal = [...(await ledgerCostByTeam(other)).values()].reduce((s, c) => s + c, 0);
    expect(await value(page, '[data-testid=total-cost]')).toBe(usd(otherTotal));
    const body = await page.locator('body').innerText();
    for (const leaked of [tenant, 'support', 'research', tasks.ranker, tasks.embedder, tasks.helpdesk, tasks.probe]) expect(body).not.toContain(leaked);
    expect(await page.locator('[data-testid=budget]').count()).toBe(0);
    expect(await page.locator('[data-testid=task]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-task-id')))).toEqual([tasks.intruder]);
    expect(problems).toEqual([]);
    await page.context().close();

    // The JSON behind it: a drill-down into this tenant's team finds nothing, and no key is 401.
    const drill = await fetch(`${base}/v1/dashboard/tasks?team=search`, { headers: { authorization: `Bearer ${otherKey}` } });
    expect(await drill.json()).toEqual({ tenant: other, tasks: [] });
    expect((await fetch(`${base}/v1/dashboard`)).status).toBe(401);
    expect((await fetch(`${base}/v1/dashboard`, { headers: { authorization: 'Bearer glk_not-a-key' } })).status).toBe(401);
    const bad = await fetch(`${base}/v1/dashboard?weeks=0`, { headers: { authorization: `Bearer ${key}` } });
    expect([bad.status, ((await bad.json()) as { errors: { path: string }[] }).errors[0]!.path]).toEqual([400, 'weeks']);
  });

  it('asks for a key, and again when the key is refused', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${base}/dashboard`);
    await page.waitForSelector('body[data-state="login"]');
    expect(await page.locator('#content').isHidden()).toBe(true);
    await page.fill('[data-testid=key-input]', 'glk_revoked-or-wrong');
    await page.click('#key-form button[type=submit]');
    await page.waitForSelector('body[data-state="login"] [data-testid=error]:not([hidden])');
    expect(await text(page, '[data-testid=error]')).toMatch(/unknown or revoked API key/);
    await context.close();
  });
});
