import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { type BudgetView, showBudgets } from '../ledger/budgets';
import type { Db, Queryable } from '../ledger/db';
import { UNATTRIBUTED, rollUp } from '../ledger/rollups';
import { DEFAULT_LADDER, type LadderConfig, type LadderStep, burnShare, ladderStep } from '../governance/ladder';

/**
 * The cost and usage dashboard of `govloop serve`: one HTML page (`GET /dashboard`), its script
 * and stylesheet, Chart.js served from node_modules (no CDN: the page works on a network with no
 * way out), and two JSON reads for the caller's tenant:
 *
 *  - `GET /v1/dashboard?weeks=N` — the last N ISO weeks (UTC, this one included): weekly cost,
 *    tokens and GPU-hours by team, team/project and model (from the usage rollups, brought up to
 *    date first), budget burn with the ladder step, top spenders, enforcement actions per day,
 *    and the most recent tasks with a link into Temporal UI;
 *  - `GET /v1/dashboard/tasks?team=&project=&model=&state=&limit=` — the drill-down.
 *
 * The page itself holds no data and needs no key to load. The key is asked for on the page (or
 * given once as `/dashboard?key=…`, which the page moves into sessionStorage and strips from the
 * address bar and history); every JSON read sends it as `Authorization: Bearer` and is checked
 * like every other /v1 route, so a key sees its own tenant only.
 */
export interface DashboardConfig {
  /** Temporal UI base URL (e.g. http://localhost:8233); without it, task ids are not links. */
  temporalUiUrl?: string;
  /** The Temporal namespace the governed-task workflows run in. */
  temporalNamespace?: string;
  /** The ladder thresholds of config/policies.yaml (default: 50 / 80 / 100 / 110 %). */
  ladder?: LadderConfig;
}

export interface DashboardDeps {
  db: Db;
  clock: () => Date;
  config: DashboardConfig;
  /** The caller's tenant from its API key (401 when missing or bad), as the other /v1 routes check it. */
  callerTenant: (req: FastifyRequest) => Promise<string>;
  /** Validates a query; answers 400 with field paths on bad input. */
  parse: <T>(schema: z.ZodType<T>, input: unknown) => T;
}

// ---------------------------------------------------------------------------------------------
// The budget's share and its step on the enforcement ladder (governance/ladder.ts). Pure.

/** Spent over limit; a zero limit with spend is infinitely over, with none it is untouched. */
export function budgetShare(spentMicros: number, limitMicros: number): number {
  if (limitMicros > 0) return spentMicros / limitMicros;
  return spentMicros > 0 ? Number.POSITIVE_INFINITY : 0;
}

// ---------------------------------------------------------------------------------------------
// Enforcement actions in the audit log. Pure.

/** What the dashboard counts as an enforcement action: the audit rows of a "no", a hold, a stop or an undo. */
export const EnforcementKinds = [
  'admission-rejected',
  'queued',
  'budget-rejected',
  'step-denied',
  'step-degraded',
  'held-for-approval',
  'approval-escalated',
  'approved',
  'approval-rejected',
  'approval-expired',
  'approval-refused',
  'cap-stop',
  'cancelled',
  'compensated',
  'compensation-failed',
  'operator-resolved',
] as const;
export type EnforcementKind = (typeof EnforcementKinds)[number];

/** Audit actions that can be enforcement (a prefilter for the query; `enforcementKind` decides). */
const enforcementActions = ['admission', 'reserve', 'step', 'approval', 'approval.escalated', 'approval.refused', 'settle', 'compensation', 'operator.resolve'];

/** The kind of enforcement an audit row records (ledger/audit.ts writers), or null when it is none. */
export function enforcementKind(action: string, decision: string): EnforcementKind | null {
  switch (action) {
    case 'admission':
      return decision === 'rejected' ? 'admission-rejected' : decision === 'queued' ? 'queued' : null;
    case 'reserve':
      return decision === 'rejected' ? 'budget-rejected' : null;
    case 'step':
      return decision === 'deny' ? 'step-denied' : decision === 'degrade' ? 'step-degraded' : decision === 'await-approval' ? 'held-for-approval' : null;
    case 'approval':
      return decision === 'approved' ? 'approved' : decision === 'rejected' ? 'approval-rejected' : decision === 'expired' ? 'approval-expired' : null;
    case 'approval.escalated':
      return 'approval-escalated';
    case 'approval.refused':
      return 'approval-refused';
    case 'settle':
      return decision === 'CapExceeded' ? 'cap-stop' : decision === 'Cancelled' ? 'cancelled' : null;
    case 'compensation':
      return decision === 'done' ? 'compensated' : decision === 'failed' ? 'compensation-failed' : null;
    case 'operator.resolve':
      return 'operator-resolved';
    default:
      return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Weeks. Pure.

const DAY_MS = 86_400_000;

/** Monday 00:00 UTC of the ISO week that holds `at`. */
export function weekStart(at: Date): Date {
  const midnight = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
  const sinceMonday = (new Date(midnight).getUTCDay() + 6) % 7;
  return new Date(midnight - sinceMonday * DAY_MS);
}

/** The last `n` ISO weeks up to and including the one that holds `now`, oldest first. */
export function lastWeeks(now: Date, n: number): { start: Date; end: Date }[] {
  const current = weekStart(now).getTime();
  return Array.from({ length: n }, (_, i) => {
    const start = current - (n - 1 - i) * 7 * DAY_MS;
    return { start: new Date(start), end: new Date(start + 7 * DAY_MS) };
  });
}

/** The page in Temporal UI of a governed task (its workflow id is the task id). */
export function temporalTaskUrl(config: DashboardConfig, taskId: string): string | null {
  if (!config.temporalUiUrl) return null;
  const base = config.temporalUiUrl.replace(/\/+$/, '');
  return `${base}/namespaces/${encodeURIComponent(config.temporalNamespace ?? 'default')}/workflows/${encodeURIComponent(taskId)}`;
}

// ---------------------------------------------------------------------------------------------
// Reads.

export interface UsageFigures {
  costUsd: number;
  tokens: number;
  gpuHours: number;
}

export interface WeeklyRow extends UsageFigures {
  /** Monday of the week, YYYY-MM-DD. */
  week: string;
  /** The team, `team/project`, or the model. */
  key: string;
}

export interface BudgetBurn extends BudgetView {
  /** Spent over limit (null: a zero limit with spend, infinitely over). */
  share: number | null;
  /** Spent plus reserved over limit (null as for share). */
  committedShare: number | null;
  /** The ladder step this budget's spent + reserved puts it at (what its budget controller enforces). */
  step: LadderStep;
}

export interface Spender {
  key: string;
  costUsd: number;
}

export interface TaskSpender extends Spender {
  name: string | null;
  team: string;
  project: string;
  temporalUrl: string | null;
}

export interface EnforcementDay {
  /** YYYY-MM-DD (UTC). */
  day: string;
  kind: EnforcementKind;
  count: number;
}

export interface DashboardTask {
  taskId: string;
  name: string;
  kind: string;
  state: string;
  decision: string | null;
  team: string;
  project: string;
  model: string;
  costUsd: number;
  createdAt: string;
  finishedAt: string | null;
  temporalUrl: string | null;
}

export interface Dashboard {
  tenant: string;
  generatedAt: string;
  from: string;
  to: string;
  /** The weeks shown, oldest first: Monday dates (UTC). */
  weeks: string[];
  totals: UsageFigures & { events: number };
  weekly: { team: WeeklyRow[]; project: WeeklyRow[]; model: WeeklyRow[] };
  budgets: BudgetBurn[];
  top: { teams: Spender[]; projects: Spender[]; tasks: TaskSpender[] };
  enforcement: EnforcementDay[];
  tasks: DashboardTask[];
  temporal: { uiUrl: string; namespace: string } | null;
}

const usd = (micros: number) => micros / 1e6;
const isoDay = (d: Date) => d.toISOString().slice(0, 10);
const label = (v: string) => (v === '' ? UNATTRIBUTED : v);
const finiteOrNull = (x: number) => (Number.isFinite(x) ? x : null);

interface WeekCell {
  week: Date;
  team: string;
  project: string;
  model: string;
  cost: number;
  gpu_seconds: number;
  tokens: number;
  events: number;
}

/** Sums rows by (week, key) and orders each week's rows by cost, highest first. */
function weeklyBy(cells: WeekCell[], key: (c: WeekCell) => string): WeeklyRow[] {
  const acc = new Map<string, WeeklyRow & { micros: number }>();
  for (const c of cells) {
    const week = isoDay(c.week);
    const k = key(c);
    const id = `${week}\u0000${k}`;
    const row = acc.get(id) ?? { week, key: k, micros: 0, costUsd: 0, tokens: 0, gpuHours: 0 };
    row.micros += Number(c.cost);
    row.tokens += Number(c.tokens);
    row.gpuHours += Number(c.gpu_seconds) / 3600;
    acc.set(id, row);
  }
  return [...acc.values()]
    .map(({ micros, ...r }) => ({ ...r, costUsd: usd(micros) }))
    .sort((a, b) => a.week.localeCompare(b.week) || b.costUsd - a.costUsd || a.key.localeCompare(b.key));
}

function topBy(cells: WeekCell[], key: (c: WeekCell) => string, n: number): Spender[] {
  const acc = new Map<string, number>();
  for (const c of cells) acc.set(key(c), (acc.get(key(c)) ?? 0) + Number(c.cost));
  return [...acc.entries()]
    .map(([k, micros]) => ({ key: k, costUsd: usd(micros) }))
    .sort((a, b) => b.costUsd - a.costUsd || a.key.localeCompare(b.key))
    .slice(0, n);
}

export function budgetBurn(b: BudgetView, ladder: LadderConfig = DEFAULT_LADDER): BudgetBurn {
  // From micros, so that 80 of 100 is exactly 0.8 and lands on its step.
  const limit = Math.round(b.limitUsd * 1e6);
  const share = budgetShare(Math.round(b.spentUsd * 1e6), limit);
  const committed = budgetShare(Math.round((b.spentUsd + b.reservedUsd) * 1e6), limit);
  return {
    ...b,
    share: finiteOrNull(share),
    committedShare: finiteOrNull(committed),
    step: ladderStep(burnShare({ limitMicros: limit, spentMicros: Math.round(b.spentUsd * 1e6), reservedMicros: Math.round(b.reservedUsd * 1e6) }), ladder),
  };
}

export interface TaskFilter {
  team?: string | undefined;
  project?: string | undefined;
  model?: string | undefined;
  state?: string | undefined;
  limit: number;
}

/** A tenant's most recent tasks (newest first), optionally of one team / project / model / state. */
export async function dashboardTasks(q: Queryable, tenant: string, filter: TaskFilter, config: DashboardConfig): Promise<DashboardTask[]> {
  const { rows } = await q.query<{
    task_id: string;
    name: string;
    kind: string;
    state: string;
    decision: string | null;
    team: string;
    project: string;
    model: string;
    cost_micros: number;
    created_at: Date;
    finished_at: Date | null;
  }>(
    `SELECT t.task_id, t.name, t.kind, t.state, t.decision, a.team, a.project, a.model, t.cost_micros, t.created_at, t.finished_at
       FROM tasks t JOIN attributions a ON a.id = t.attribution_id
      WHERE a.tenant = $1 AND ($2::text IS NULL OR a.team = $2) AND ($3::text IS NULL OR a.project = $3)
        AND ($4::text IS NULL OR a.model = $4) AND ($5::text IS NULL OR t.state = $5)
      ORDER BY t.created_at DESC, t.task_id
      LIMIT $6`,
    [tenant, filter.team ?? null, filter.project ?? null, filter.model ?? null, filter.state ?? null, filter.limit],
  );
  return rows.map((r) => ({
    taskId: r.task_id,
    name: r.name,
    kind: r.kind,
    state: r.state,
    decision: r.decision,
    team: r.team,
    project: r.project,
    model: r.model,
    costUsd: usd(Number(r.cost_micros)),
    createdAt: r.created_at.toISOString(),
    finishedAt: r.finished_at?.toISOString() ?? null,
    temporalUrl: temporalTaskUrl(config, r.task_id),
  }));
}

/**
 * Everything the dashboard shows for one tenant over the last `weeks` ISO weeks. Brings the usage
 * rollups up to date first (idempotent, what the meteringRollup schedule does), so the weekly
 * figures equal usage_events exactly.
 */
export async function dashboard(
  db: Db,
  tenant: string,
  opts: { weeks: number; now: Date; config: DashboardConfig; topN?: number; recentTasks?: number },
): Promise<Dashboard> {
  const { now, config } = opts;
  const topN = opts.topN ?? 10;
  const weeks = lastWeeks(now, opts.weeks);
  const from = weeks[0]!.start;
  const to = weeks[weeks.length - 1]!.end;
  await rollUp(db);
  // Day buckets: weeks start at UTC midnight, so days cover them exactly.
  const { rows: cells } = await db.query<WeekCell>(
    `SELECT date_trunc('week', r.bucket, 'UTC') AS week, a.team, a.project, a.model,
            SUM(r.cost_micros)::float8 AS cost,
            SUM(CASE WHEN r.meter = 'gpu_seconds' THEN r.quantity ELSE 0 END) AS gpu_seconds,
            SUM(CASE WHEN r.meter IN ('tokens_in','tokens_out','tokens_processed') THEN r.quantity ELSE 0 END) AS tokens,
            SUM(r.events)::bigint AS events
       FROM usage_rollups r JOIN attributions a ON a.id = r.attribution_id
      WHERE r.grain = 'day' AND r.bucket >= $1 AND r.bucket < $2 AND a.tenant = $3
      GROUP BY 1, 2, 3, 4`,
    [from, to, tenant],
  );
  const teamKey = (c: WeekCell) => label(c.team);
  const projectKey = (c: WeekCell) => `${label(c.team)}/${label(c.project)}`;
  const modelKey = (c: WeekCell) => label(c.model);

  const { rows: taskCost } = await db.query<{ task_id: string; cost: number; name: string | null; team: string; project: string }>(
    `SELECT u.task_id, SUM(u.cost_micros)::float8 AS cost, t.name, a.team, a.project
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id LEFT JOIN tasks t ON t.task_id = u.task_id
      WHERE a.tenant = $1 AND u.occurred_at >= $2 AND u.occurred_at < $3 AND u.task_id IS NOT NULL
      GROUP BY u.task_id, t.name, a.team, a.project
      ORDER BY cost DESC, u.task_id
      LIMIT $4`,
    [tenant, from, to, topN],
  );

  const { rows: audit } = await db.query<{ day: Date; action: string; decision: string; n: number }>(
    `SELECT date_trunc('day', l.at, 'UTC') AS day, l.action, l.decision, COUNT(*)::int AS n
       FROM audit_log l JOIN tasks t ON t.task_id = l.task_id JOIN attributions a ON a.id = t.attribution_id
      WHERE a.tenant = $1 AND l.at >= $2 AND l.at < $3 AND l.action = ANY($4)
      GROUP BY 1, 2, 3`,
    [tenant, from, to, enforcementActions],
  );
  const byDayKind = new Map<string, EnforcementDay>();
  for (const r of audit) {
    const kind = enforcementKind(r.action, r.decision);
    if (kind === null) continue;
    const day = isoDay(r.day);
    const e = byDayKind.get(`${day}|${kind}`) ?? { day, kind, count: 0 };
    e.count += Number(r.n);
    byDayKind.set(`${day}|${kind}`, e);
  }

  const totalMicros = cells.reduce((s, c) => s + Number(c.cost), 0);
  return {
    tenant,
    generatedAt: now.toISOString(),
    from: from.toISOString(),
    to: to.toISOString(),
    weeks: weeks.map((w) => isoDay(w.start)),
    totals: {
      costUsd: usd(totalMicros),
      tokens: cells.reduce((s, c) => s + Number(c.tokens), 0),
      gpuHours: cells.reduce((s, c) => s + Number(c.gpu_seconds), 0) / 3600,
      events: cells.reduce((s, c) => s + Number(c.events), 0),
    },
    weekly: { team: weeklyBy(cells, teamKey), project: weeklyBy(cells, projectKey), model: weeklyBy(cells, modelKey) },
    budgets: (await showBudgets(db, { tenant }, now)).map((b) => budgetBurn(b, config.ladder)),
    top: {
      teams: topBy(cells, teamKey, topN),
      projects: topBy(cells, projectKey, topN),
      tasks: taskCost.map((r) => ({
        key: r.task_id,
        costUsd: usd(Number(r.cost)),
        name: r.name,
        team: label(r.team),
        project: label(r.project),
        temporalUrl: temporalTaskUrl(config, r.task_id),
      })),
    },
    enforcement: [...byDayKind.values()].sort((a, b) => a.day.localeCompare(b.day) || EnforcementKinds.indexOf(a.kind) - EnforcementKinds.indexOf(b.kind)),
    tasks: await dashboardTasks(db, tenant, { limit: opts.recentTasks ?? 25 }, config),
    temporal: config.temporalUiUrl ? { uiUrl: config.temporalUiUrl, namespace: config.temporalNamespace ?? 'default' } : null,
  };
}

// ---------------------------------------------------------------------------------------------
// Routes.

const DashboardQuery = z.strictObject({
  weeks: z.coerce.number({ error: 'must be a whole number of weeks' }).int().min(1).max(26).default(4),
});
const name = z.string().min(1).max(63);
const TasksQuery = z.strictObject({
  team: name.optional(),
  project: name.optional(),
  model: z.string().min(1).max(128).optional(),
  state: name.optional(),
  limit: z.coerce.number({ error: 'must be a number' }).int().min(1).max(500).default(100),
});

const assetDir = join(dirname(fileURLToPath(import.meta.url)), 'dashboard');
/** Chart.js's UMD build, from node_modules (its package exports do not list dist/ files). */
const chartJsPath = join(dirname(createRequire(import.meta.url).resolve('chart.js')), 'chart.umd.min.js');

/** The page's own origin only: no inline script, no CDN, nothing framed, no referrer sent to Temporal UI. */
const pageHeaders = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-cache',
};

export function registerDashboard(app: FastifyInstance, deps: DashboardDeps): void {
  const { db, clock, config, callerTenant, parse } = deps;
  const assets: Record<string, { type: string; body: string }> = {
    '/dashboard': { type: 'text/html; charset=utf-8', body: readFileSync(join(assetDir, 'index.html'), 'utf8') },
    '/dashboard/app.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(join(assetDir, 'app.js'), 'utf8') },
    '/dashboard/app.css': { type: 'text/css; charset=utf-8', body: readFileSync(join(assetDir, 'app.css'), 'utf8') },
    '/dashboard/chart.umd.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(chartJsPath, 'utf8') },
  };
  for (const [url, asset] of Object.entries(assets)) {
    app.get(url, async (_req, reply) => reply.headers(pageHeaders).type(asset.type).send(asset.body));
  }

  app.get('/v1/dashboard', async (req, reply) => {
    const tenant = await callerTenant(req);
    const q = parse(DashboardQuery, req.query);
    void reply.header('cache-control', 'no-store');
    return dashboard(db, tenant, { weeks: q.weeks, now: clock(), config });
  });

  app.get('/v1/dashboard/tasks', async (req, reply) => {
    const tenant = await callerTenant(req);
    const q = parse(TasksQuery, req.query);
    void reply.header('cache-control', 'no-store');
    return { tenant, tasks: await dashboardTasks(db, tenant, q, config) };
  });
}
