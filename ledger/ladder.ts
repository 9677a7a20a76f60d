import type { Attribution } from '../governance/intent';
import { type LadderConfig, type LadderStep, LadderSteps, burnShare, forecast, ladderStep, stepRank } from '../governance/ladder';
import { type Period, windowBounds, windowKey } from '../governance/periods';
import { microsToUsd } from '../governance/pricing';
import { appendAudit } from './audit';
import { type BudgetKey, scopeLabel } from '../governance/budget-scope';
import { coversAttributionSql, currentWindowKeySql } from './budgets';
import type { Db, Queryable } from './db';
import { own } from '../governance/own';

/** One budget's current window as the budget controller sees it. */
export interface BudgetSnapshot {
  budgetId: number;
  scope: string;
  tenant: string;
  team: string;
  project: string;
  period: Period;
  window: string;
  limitMicros: number;
  spentMicros: number;
  reservedMicros: number;
  sharePct: number;
  /** The step recorded for this window (what admission and the gate enforce now). */
  step: LadderStep;
  burnUsdPerHour: number;
  forecastUsd: number | null;
}

/** The budget's current window, created if new (a new window starts at step ok). Null when the budget is gone. */
export async function budgetSnapshot(q: Queryable, budgetId: number, now: Date): Promise<BudgetSnapshot | null> {
  const b = await q.query<{ tenant: string; team: string; project: string; period: Period; limit_micros: number }>(
    'SELECT tenant, team, project, period, limit_micros FROM budgets WHERE id = $1',
    [budgetId],
  );
  const budget = b.rows[0];
  if (!budget) return null;
  const key = windowKey(budget.period, now);
  await q.query('INSERT INTO budget_windows (budget_id, window_key) VALUES ($1, $2) ON CONFLICT DO NOTHING', [budgetId, key]);
  const w = await q.query<{ reserved_micros: number; spent_micros: number; ladder_step: LadderStep }>(
    'SELECT reserved_micros, spent_micros, ladder_step FROM budget_windows WHERE budget_id = $1 AND window_key = $2',
    [budgetId, key],
  );
  const row = w.rows[0]!;
  const bounds = windowBounds(budget.period, now);
  // Burn over the last hour of the scope's usage (a fresh window: since its start).
  const since = new Date(Math.max(bounds.start.getTime(), now.getTime() - 3_600_000));
  const recent = await q.query<{ cost: number | null }>(
    `SELECT SUM(u.cost_micros)::float8 AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
      WHERE a.tenant = $1 AND ($2 = '*' OR a.team = $2) AND ($3 = '*' OR a.project = $3) AND u.occurred_at >= $4 AND u.occurred_at <= $5`,
    [budget.tenant, budget.team, budget.project, since, now],
  );
  const hours = Math.max(1 / 60, (now.getTime() - since.getTime()) / 3_600_000);
  const f = forecast({
    spentUsd: microsToUsd(row.spent_micros),
    windowStart: bounds.start,
    windowEnd: bounds.end,
    now,
    recentUsdPerHour: microsToUsd(Number(recent.rows[0]?.cost ?? 0)) / hours,
  });
  return {
    budgetId,
    scope: scopeLabel(budget),
    tenant: budget.tenant,
    team: budget.team,
    project: budget.project,
    period: budget.period,
    window: key,
    limitMicros: budget.limit_micros,
    spentMicros: row.spent_micros,
    reservedMicros: row.reserved_micros,
    sharePct: burnShare({ limitMicros: budget.limit_micros, spentMicros: row.spent_micros, reservedMicros: row.reserved_micros }),
    step: row.ladder_step,
    burnUsdPerHour: f.burnUsdPerHour,
    forecastUsd: f.forecastUsd,
  };
}

export interface LadderChange {
  budgetId: number;
  window: string;
  /** The controller's count of upward moves in this window: a step fires once per crossing. */
  crossing: number;
  from: LadderStep;
  to: LadderStep;
  /** Steps crossed upwards, lowest first (empty on the way down). */
  fired: LadderStep[];
  sharePct: number;
}

/**
 * Records a ladder move: the window's step, one ladder_events row per step fired (unique per
 * crossing, so a retried activity fires nothing twice) and an audit row for each. Returns the
 * steps that fired now for the first time (the caller notifies for those).
 */
export async function applyLadderChange(db: Db, c: LadderChange, actor = 'budget-controller'): Promise<LadderStep[]> {
  return db.tx(async (q) => {
    await q.query('UPDATE budget_windows SET ladder_step = $3, ladder_changed_at = now() WHERE budget_id = $1 AND window_key = $2', [
      c.budgetId,
      c.window,
      c.to,
    ]);
    const fresh: LadderStep[] = [];
    for (const step of c.fired) {
      const r = await q.query(
        `INSERT INTO ladder_events (budget_id, window_key, crossing, step, action, share_pct) VALUES ($1, $2, $3, $4, $4, $5)
         ON CONFLICT DO NOTHING RETURNING id`,
        [c.budgetId, c.window, c.crossing, step, c.sharePct],
      );
      if (r.rowCount) fresh.push(step);
    }
    const scope = await q.query<{ tenant: string; team: string; project: string; period: string }>(
      'SELECT tenant, team, project, period FROM budgets WHERE id = $1',
      [c.budgetId],
    );
    const b = scope.rows[0];
    const label = b ? `${scopeLabel(b)}:${b.period}:${c.window}` : String(c.budgetId);
    if (c.fired.length === 0) {
      await appendAudit(q, {
        actor,
        taskId: null,
        action: 'budget.ladder',
        decision: c.to,
        detail: { budget: label, from: c.from, sharePct: round(c.sharePct) },
        dedupeKey: `ladder:${c.budgetId}:${c.window}:${c.crossing}:down:${c.to}`,
      });
    }
    for (const step of fresh) {
      await appendAudit(q, {
        actor,
        taskId: null,
        action: 'budget.ladder',
        decision: step,
        detail: { budget: label, from: c.from, sharePct: round(c.sharePct) },
        dedupeKey: `ladder:${c.budgetId}:${c.window}:${c.crossing}:${step}`,
      });
    }
    return fresh;
  });
}

const round = (x: number) => (Number.isFinite(x) ? Math.round(x * 100) / 100 : x);

/** Records a preemption the controller made (idempotent per crossing and victim). */
export async function recordBudgetPreemption(
  db: Db,
  p: { budgetId: number; window: string; crossing: number; taskId: string; sharePct: number },
): Promise<boolean> {
  return db.tx(async (q) => {
    const r = await q.query(
      `INSERT INTO ladder_events (budget_id, window_key, crossing, step, action, share_pct, detail) VALUES ($1, $2, $3, 'preempt', $4, $5, $6)
       ON CONFLICT DO NOTHING RETURNING id`,
      [p.budgetId, p.window, p.crossing, `preempt:${p.taskId}`, p.sharePct, { taskId: p.taskId }],
    );
    if (!r.rowCount) return false;
    await appendAudit(q, {
      actor: 'budget-controller',
      taskId: p.taskId,
      action: 'preempt',
      decision: 'stopped',
      detail: { budgetId: p.budgetId, window: p.window, sharePct: round(p.sharePct) },
      dedupeKey: `preempt:${p.budgetId}:${p.window}:${p.crossing}:${p.taskId}`,
    });
    return true;
  });
}

/** The step in force (as its controller recorded it) and the share of each budget window that covers an attribution now. */
export interface WindowLadder {
  budgetId: number;
  window: string;
  budget: BudgetKey;
  step: LadderStep;
  sharePct: number;
  scope: string;
}

export async function scopeLadder(q: Queryable, a: Pick<Attribution, 'tenant' | 'team' | 'project'>, now: Date): Promise<WindowLadder[]> {
  // One query (the step gate runs this on every agent step): each covering budget joined to its
  // current window; a budget whose window has no row yet has nothing spent or reserved in it.
  const { rows } = await q.query<{
    id: number;
    window_key: string;
    tenant: string;
    team: string;
    project: string;
    period: Period;
    limit_micros: number;
    ladder_step: LadderStep;
    reserved_micros: number;
    spent_micros: number;
  }>(
    `SELECT b.id, w.window_key, b.tenant, b.team, b.project, b.period, b.limit_micros, w.ladder_step, w.reserved_micros, w.spent_micros
       FROM budgets b JOIN budget_windows w ON w.budget_id = b.id
        AND w.window_key = ${currentWindowKeySql('b')}
      WHERE ${coversAttributionSql('b')}
      ORDER BY b.id`,
    [a.tenant, a.team, a.project, windowKey('day', now), windowKey('week', now), windowKey('month', now)],
  );
  return rows.map((r) => ({
    budgetId: r.id,
    window: r.window_key,
    budget: { tenant: r.tenant, team: r.team, project: r.project, period: r.period },
    step: r.ladder_step,
    sharePct: burnShare({ limitMicros: r.limit_micros, spentMicros: r.spent_micros, reservedMicros: r.reserved_micros }),
    scope: `${scopeLabel(r)}:${r.period}`,
  }));
}

/** Running GPU work of a budget's scope, for the preempt step. */
export async function runningGpuWork(
  q: Queryable,
  budgetId: number,
  priorities: Record<string, number>,
  critical: string[],
  now: Date,
): Promise<{ taskId: string; priority: number; critical: boolean; gpuHoursAtRisk: number }[]> {
  const { rows } = await q.query<{ task_id: string; priority: string; gpus: number; started: Date }>(
    `SELECT t.task_id, t.priority, COALESCE((t.plan->'gpu'->>'count')::int, 0) AS gpus, t.created_at AS started
       FROM tasks t JOIN attributions a ON a.id = t.attribution_id JOIN budgets b ON b.id = $1
      WHERE t.state = 'Running' AND t.finished_at IS NULL AND t.plan->>'placement' = 'cluster'
        AND a.tenant = b.tenant AND (b.team = '*' OR a.team = b.team) AND (b.project = '*' OR a.project = b.project)`,
    [budgetId],
  );
  return rows.map((r) => ({
    taskId: r.task_id,
    priority: own(priorities, r.priority) ?? 0,
    critical: critical.includes(r.priority),
    gpuHoursAtRisk: (r.gpus * Math.max(0, now.getTime() - r.started.getTime())) / 3_600_000,
  }));
}

/** Every budget's key, for starting controllers. */
export async function listBudgets(q: Queryable): Promise<BudgetKey[]> {
  const { rows } = await q.query<BudgetKey>('SELECT tenant, team, project, period FROM budgets ORDER BY id');
  return rows;
}

/** The id of the budget with this key (scope levels it does not narrow are '*'), or null. */
export async function budgetIdOf(q: Queryable, k: { tenant: string; team: string; project: string; period: string }): Promise<number | null> {
  const { rows } = await q.query<{ id: number }>(`SELECT id FROM budgets WHERE tenant = $1 AND team = $2 AND project = $3 AND period = $4 AND unit = 'usd'`, [
    k.tenant,
    k.team,
    k.project,
    k.period,
  ]);
  return rows[0]?.id ?? null;
}

export const isLadderStep = (s: string): s is LadderStep => (LadderSteps as readonly string[]).includes(s);
export type { LadderConfig };

/**
 * Budgets covering an attribution whose share has passed the next threshold above the step their
 * controller last recorded: their controllers should look now rather than at their next poll.
 */
export async function crossedBudgets(
  q: Queryable,
  a: Pick<Attribution, 'tenant' | 'team' | 'project'>,
  now: Date,
  ladder: LadderConfig,
): Promise<WindowLadder['budget'][]> {
  const windows = await scopeLadder(q, a, now);
  return windows.filter((w) => stepRank(ladderStep(w.sharePct, ladder)) > stepRank(w.step)).map((w) => w.budget);
}

export interface RaiseView {
  raiseId: number;
  scope: string;
  period: string;
  fromUsd: number;
  toUsd: number;
  requestedBy: string;
  reason: string;
  state: string;
  decidedBy: string | null;
  requestedAt: string;
}

/** Budget raises of a tenant, pending first then newest (what `govloop budget raises` lists). */
export async function listRaises(q: Queryable, tenant: string, pendingOnly: boolean): Promise<RaiseView[]> {
  const { rows } = await q.query<{
    id: number;
    tenant: string;
    team: string;
    project: string;
    period: string;
    from_micros: number;
    to_micros: number;
    requested_by: string;
    reason: string;
    state: string;
    decided_by: string | null;
    requested_at: Date;
  }>(
    `SELECT r.id, b.tenant, b.team, b.project, b.period, r.from_micros, r.to_micros, r.requested_by, r.reason, r.state, r.decided_by, r.requested_at
       FROM budget_raises r JOIN budgets b ON b.id = r.budget_id
      WHERE b.tenant = $1 AND (NOT $2 OR r.state = 'pending')
      ORDER BY (r.state = 'pending') DESC, r.id DESC LIMIT 200`,
    [tenant, pendingOnly],
  );
  return rows.map((r) => ({
    raiseId: r.id,
    scope: scopeLabel(r),
    period: r.period,
    fromUsd: microsToUsd(r.from_micros),
    toUsd: microsToUsd(r.to_micros),
    requestedBy: r.requested_by,
    reason: r.reason,
    state: r.state,
    decidedBy: r.decided_by,
    requestedAt: r.requested_at.toISOString(),
  }));
}
