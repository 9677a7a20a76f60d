import { decideFlatQuota } from '../governance/flat-quota';
import { type BudgetHeadroom, decideBudgets } from '../governance/headroom';
import type { Attribution } from '../governance/intent';
import type { LadderStep } from '../governance/ladder';
import { type Period, windowKey } from '../governance/periods';
import { microsToUsd, usdToMicros } from '../governance/pricing';
import { type Reason, ReasonCode } from '../governance/reasons';
import { appendAudit } from './audit';
import { type Db, type Queryable, overLimit } from './db';
import { teamGpusInUse } from './tasks';
import { type OptionalBudgetScope, scopeLabel, scopeOf } from '../governance/budget-scope';

export { type BudgetChange, type ChangeAuthority, requestBudgetChange, type RaiseDecision, decideRaise } from './budget-changes';

export interface WindowRow {
  budget_id: number;
  tenant: string;
  team: string;
  project: string;
  period: Period;
  window_key: string;
  limit_micros: number;
  reserved_micros: number;
  spent_micros: number;
  ladder_step: LadderStep;
}

export async function setBudget(db: Db, scope: OptionalBudgetScope, period: Period, usd: number, actor: string): Promise<void> {
  const k = scopeOf(scope);
  await db.tx(async (c) => {
    await c.query(
      `INSERT INTO budgets (tenant, team, project, period, limit_micros) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (tenant, team, project, period, unit) DO UPDATE SET limit_micros = EXCLUDED.limit_micros, updated_at = now()`,
      [k.tenant, k.team, k.project, period, usdToMicros(usd)],
    );
    await appendAudit(c, { actor, taskId: null, action: 'budget.set', decision: 'recorded', detail: { scope: scopeLabel(scope), period, usd } });
  });
}

/** SQL: budget row `b` covers the attribution given as $1 tenant, $2 team, $3 project. */
export const coversAttributionSql = (b: string): string =>
  `${b}.tenant = $1 AND (${b}.team = '*' OR ${b}.team = $2) AND (${b}.project = '*' OR (${b}.team = $2 AND ${b}.project = $3))`;
/** SQL: budget row `b`'s current window key, given the day, week and month keys as $4, $5, $6. */
export const currentWindowKeySql = (b: string): string => `CASE ${b}.period WHEN 'day' THEN $4 WHEN 'week' THEN $5 WHEN 'month' THEN $6 ELSE 'total' END`;

/**
 * The windows (current period of each budget) that cover an attribution at `at`, created on first
 * use. With `lock`, the rows are locked in a fixed order so concurrent writers cannot deadlock.
 */
export async function coveringWindows(q: Queryable, a: Pick<Attribution, 'tenant' | 'team' | 'project'>, at: Date, lock: boolean): Promise<WindowRow[]> {
  // One round trip when every covering budget has its current window already (every step after a
  // scope's first of the period): the budgets joined to their windows, and how many budgets there are.
  const { rows: found } = await q.query<WindowRow & { budgets: number }>(
    `SELECT w.budget_id, b.tenant, b.team, b.project, b.period, w.window_key, b.limit_micros, w.reserved_micros, w.spent_micros, w.ladder_step,
            (SELECT count(*) FROM budgets c WHERE ${coversAttributionSql('c')})::int AS budgets
       FROM budgets b JOIN budget_windows w ON w.budget_id = b.id AND w.window_key = ${currentWindowKeySql('b')}
      WHERE ${coversAttributionSql('b')}
      ORDER BY w.budget_id ${lock ? 'FOR UPDATE OF w' : ''}`,
    [a.tenant, a.team, a.project, windowKey('day', at), windowKey('week', at), windowKey('month', at)],
  );
  if (found.length > 0 && found.length === found[0]!.budgets) return found.map(({ budgets: _, ...w }) => w);
  const { rows: budgets } = await q.query<{ id: number; period: Period }>(
    `SELECT b.id, b.period FROM budgets b WHERE ${coversAttributionSql('b')} ORDER BY b.id`,
    [a.tenant, a.team, a.project],
  );
  if (budgets.length === 0) return [];
  const ids = budgets.map((b) => b.id);
  const keys = budgets.map((b) => windowKey(b.period, at));
  await q.query(
    `INSERT INTO budget_windows (budget_id, window_key) SELECT * FROM unnest($1::bigint[], $2::text[])
     ON CONFLICT DO NOTHING`,
    [ids, keys],
  );
  const { rows } = await q.query<WindowRow>(
    `SELECT w.budget_id, b.tenant, b.team, b.project, b.period, w.window_key, b.limit_micros, w.reserved_micros, w.spent_micros, w.ladder_step
     FROM budget_windows w JOIN budgets b ON b.id = w.budget_id
     JOIN unnest($1::bigint[], $2::text[]) AS k(id, key) ON k.id = w.budget_id AND k.key = w.window_key
     ORDER BY w.budget_id ${lock ? 'FOR UPDATE OF w' : ''}`,
    [ids, keys],
  );
  return rows;
}

const toHeadroom = (w: WindowRow): BudgetHeadroom => ({
  scope: scopeLabel(w),
  period: w.period,
  window: w.window_key,
  limitMicros: w.limit_micros,
  reservedMicros: w.reserved_micros,
  spentMicros: w.spent_micros,
  ladderStep: w.ladder_step,
});

export async function budgetHeadroom(q: Queryable, a: Pick<Attribution, 'tenant' | 'team' | 'project'>, at: Date): Promise<BudgetHeadroom[]> {
  return (await coveringWindows(q, a, at, false)).map(toHeadroom);
}

export interface GpuQuotaCheck {
  gpuType: string;
  gpus: number;
  quota: number;
  policy: string;
  /** Serializes the check (default: the team's flat quota); a cohort's quota takes the cohort's key. */
  lockKey?: string;
  /** Replaces the flat check (cohorts: governance/quota.ts over a fresh snapshot); a reason means wait. */
  recheck?: (q: Queryable) => Promise<Reason | null>;
}

/** `retry`: nothing is wrong with the task, it must wait for the team's GPUs to free up. */
export type ReserveResult = { ok: true; amountMicros: number } | { ok: false; retry: boolean; reasons: Reason[] };

/**
 * Reserves a task's worst case against every budget window that covers it, all or nothing, in one
 * transaction with the windows locked: concurrent reservations can never overspend a budget.
 * Idempotent by task id, overlapping calls for one task included. The task moves to Reserved in the same transaction.
 */
export async function reserve(
  db: Db,
  taskId: string,
  a: Attribution,
  amountMicros: number,
  at: Date,
  quota?: GpuQuotaCheck,
  opts: { requeued?: boolean } = {},
): Promise<ReserveResult> {
  return db.tx(async (c) => {
    // One reserve() of a task at a time. An activity retried after a timeout while its first
    // attempt still runs would otherwise pass the look for an existing reservation below alongside
    // it, queue on the window locks, and insert a second row (reservations_pkey) instead of
    // answering ok. The later call waits here and then finds the earlier one's row. Taken first,
    // before the quota lock and the window rows, so the lock order is the same for every caller;
    // the smallest fix: no retry loop (ON CONFLICT would have to undo the window updates) and no
    // serializable transaction (its aborts would hit every concurrent reservation of a budget).
    await c.query("SELECT pg_advisory_xact_lock(hashtext('reserve/' || $1))", [taskId]);
    const existing = await c.query<{ amount_micros: number }>('SELECT amount_micros FROM reservations WHERE task_id = $1', [taskId]);
    // A preempted task keeps its budget reservation while it waits; its quota is checked again.
    if (existing.rows[0] && !opts.requeued) {
      // Held already: an earlier attempt of this call reserved. A retried admitTask (with `reserve`)
      // ran admission again before this and put the task back to its answer: it is Reserved.
      await c.query(`UPDATE tasks SET state = 'Reserved' WHERE task_id = $1 AND state IN ('Admitting', 'Queued')`, [taskId]);
      return { ok: true, amountMicros: existing.rows[0].amount_micros };
    }
    if (quota) {
      // The team's GPU quota is checked again under a lock, so two tasks admitted at once cannot both take the last GPUs.
      await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [quota.lockKey ?? `quota/${a.tenant}/${a.team}/${quota.gpuType}`]);
      // The same rules admission decided optimistically: cohorts through `recheck` (governance/quota.ts), a flat quota through governance/flat-quota.ts.
      const refused = quota.recheck
        ? await quota.recheck(c)
        : decideFlatQuota({
            team: a.team,
            gpuType: quota.gpuType,
            asked: quota.gpus,
            inUse: await teamGpusInUse(c, a.tenant, a.team, quota.gpuType, taskId),
            quota: quota.quota,
            policy: quota.policy,
          });
      // GPU_QUOTA_EXCEEDED (more than the quota, only if the policy changed since admission) never fits; anything else waits.
      if (refused) return { ok: false, retry: refused.code !== ReasonCode.GpuQuotaExceeded, reasons: [refused] };
    }
    if (existing.rows[0]) {
      await c.query(`UPDATE tasks SET state = 'Reserved' WHERE task_id = $1`, [taskId]);
      return { ok: true, amountMicros: existing.rows[0].amount_micros };
    }
    const windows = await coveringWindows(c, a, at, true);
    // The same rule admission decided optimistically (governance/headroom.ts), now with the windows locked:
    // the ladder at its queue step (or above) holds new work however much is left; a shortfall refuses it.
    const budgets = decideBudgets(windows.map(toHeadroom), amountMicros);
    if (!budgets.ok) {
      if (budgets.retry) return budgets;
      await appendAudit(c, {
        actor: 'govloop',
        taskId,
        action: 'reserve',
        decision: 'rejected',
        detail: { reasons: budgets.reasons },
        dedupeKey: `${taskId}:reserve`,
      });
      return budgets;
    }
    for (const w of windows) {
      await c.query('UPDATE budget_windows SET reserved_micros = reserved_micros + $3 WHERE budget_id = $1 AND window_key = $2', [
        w.budget_id,
        w.window_key,
        amountMicros,
      ]);
    }
    await c.query(`INSERT INTO reservations (task_id, amount_micros, remaining_micros, state) VALUES ($1, $2, $2, 'held')`, [taskId, amountMicros]);
    if (windows.length > 0) {
      await c.query('INSERT INTO reservation_holds (task_id, budget_id, window_key) SELECT $1, * FROM unnest($2::bigint[], $3::text[])', [
        taskId,
        windows.map((w) => w.budget_id),
        windows.map((w) => w.window_key),
      ]);
    }
    await c.query(`UPDATE tasks SET state = 'Reserved' WHERE task_id = $1`, [taskId]);
    await appendAudit(c, {
      actor: 'govloop',
      taskId,
      action: 'reserve',
      decision: 'held',
      detail: { usd: microsToUsd(amountMicros), budgets: windows.map((w) => `${scopeLabel(w)}:${w.period}:${w.window_key}`) },
      dedupeKey: `${taskId}:reserve`,
    });
    return { ok: true, amountMicros };
  });
}

/** What one charge did: the part charged to the budget windows and the part past the reservation. */
export interface Charge {
  /** Added to the spent of every window covering the usage. */
  chargedMicros: number;
  /** Past what the task reserved: recorded in `overages`, charged to no budget (decision 0023). */
  overageMicros: number;
  /** The task's overage over its whole life, this charge included (0 for usage without a reservation). */
  taskOverageMicros: number;
}

/**
 * Charges `costMicros` of usage to the budget windows that cover it, in the transaction that
 * records the usage; `key` is the idempotency key of (one of) the usage event(s) it charges.
 *
 * A task with a reservation (held or released) is charged at most what it reserved, over its whole
 * life (reservations.charged_micros): while held, the charge moves from reserved to spent; after
 * release, it is spent without a hold. The rest is overage: recorded with the task's attribution
 * and audited, but added to no window's spent, so a task stopped late never pushes its budget past
 * what admission let it hold (decision 0023). The task's own cost (tasks.cost_micros, written by
 * the caller) still carries the whole cost. Usage without a task, or of a task that never reserved,
 * is spent in full, as before.
 */
export async function chargeBudgets(
  q: Queryable,
  taskId: string | null,
  a: Pick<Attribution, 'tenant' | 'team' | 'project'>,
  costMicros: number,
  at: Date,
  key: string,
): Promise<Charge> {
  const cost = Math.max(0, costMicros);
  let charged = cost;
  let consumed = 0;
  let overage = 0;
  let taskOverage = 0;
  let reservation: { amount_micros: number; remaining_micros: number; charged_micros: number; state: 'held' | 'released' } | undefined;
  let holds: { budget_id: number; window_key: string }[] = [];
  if (taskId !== null) {
    // The row lock serializes every charge of one task: two concurrent charges cannot both take the last of its room.
    const r = await q.query<NonNullable<typeof reservation>>(
      'SELECT amount_micros, remaining_micros, charged_micros, state FROM reservations WHERE task_id = $1 FOR UPDATE',
      [taskId],
    );
    reservation = r.rows[0];
    if (reservation) {
      charged = Math.min(cost, Math.max(0, reservation.amount_micros - reservation.charged_micros));
      overage = cost - charged;
      consumed = reservation.state === 'held' ? Math.min(charged, reservation.remaining_micros) : 0;
      // The update returns, in the same round trip, the reservation's holds and the task's overage
      // so far: its snapshot is taken with the lock held, so it sees every earlier charge's rows.
      const u = await q.query<{ holds: { budget_id: number; window_key: string }[]; overage_micros: number }>(
        `UPDATE reservations r SET remaining_micros = remaining_micros - $2, charged_micros = charged_micros + $3 WHERE r.task_id = $1
         RETURNING (SELECT COALESCE(json_agg(json_build_object('budget_id', h.budget_id, 'window_key', h.window_key) ORDER BY h.budget_id), '[]'::json)
                      FROM reservation_holds h WHERE h.task_id = r.task_id) AS holds,
                   (SELECT COALESCE(SUM(o.micros), 0)::float8 FROM overages o WHERE o.task_id = r.task_id) AS overage_micros`,
        [taskId, consumed, charged],
      );
      taskOverage = Number(u.rows[0]!.overage_micros);
      if (reservation.state === 'held') holds = u.rows[0]!.holds.map((h) => ({ budget_id: Number(h.budget_id), window_key: h.window_key }));
    }
  }
  const windows = await coveringWindows(q, a, at, true);
  for (const h of holds) {
    await q.query('UPDATE budget_windows SET reserved_micros = GREATEST(0, reserved_micros - $3) WHERE budget_id = $1 AND window_key = $2', [
      h.budget_id,
      h.window_key,
      consumed,
    ]);
  }
  if (charged > 0) {
    for (const w of windows) {
      await q
        .query('UPDATE budget_windows SET spent_micros = spent_micros + $3 WHERE budget_id = $1 AND window_key = $2', [w.budget_id, w.window_key, charged])
        .catch((err: unknown) => {
          throw overLimit(err, `the spend of budget ${scopeLabel(w)} ${w.period} window ${w.window_key}`, charged) ?? err;
        });
    }
  }
  if (reservation && taskId !== null) {
    if (overage > 0) {
      await q
        .query('INSERT INTO overages (task_id, charge_key, tenant, team, project, micros, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7)', [
          taskId,
          key,
          a.tenant,
          a.team,
          a.project,
          overage,
          at,
        ])
        .catch((err: unknown) => {
          throw overLimit(err, `task ${taskId}'s overage`, overage) ?? err;
        });
      taskOverage += overage;
      await appendAudit(q, {
        actor: 'govloop',
        taskId,
        action: 'overage',
        decision: 'recorded',
        detail: {
          usd: microsToUsd(overage),
          chargedUsd: microsToUsd(charged),
          costUsd: microsToUsd(cost),
          reservedUsd: microsToUsd(reservation.amount_micros),
          taskOverageUsd: microsToUsd(taskOverage),
          reservation: reservation.state,
          scope: scopeLabel(a),
          usageKey: key,
        },
        dedupeKey: `${key}:overage`,
      });
    }
  }
  return { chargedMicros: charged, overageMicros: overage, taskOverageMicros: taskOverage };
}

/** Releases what is left of a task's reservation. Idempotent. Returns the micros released. */
export async function release(db: Db, taskId: string): Promise<number> {
  return db.tx((c) => releaseIn(c, taskId));
}

/** release() inside the caller's transaction (the reconciler settles and releases in one). */
export async function releaseIn(c: Queryable, taskId: string): Promise<number> {
  const r = await c.query<{ remaining_micros: number }>(`SELECT remaining_micros FROM reservations WHERE task_id = $1 AND state = 'held' FOR UPDATE`, [taskId]);
  const row = r.rows[0];
  if (!row) return 0;
  const holds = await c.query<{ budget_id: number; window_key: string }>(
    'SELECT budget_id, window_key FROM reservation_holds WHERE task_id = $1 ORDER BY budget_id',
    [taskId],
  );
  for (const h of holds.rows) {
    await c.query('SELECT 1 FROM budget_windows WHERE budget_id = $1 AND window_key = $2 FOR UPDATE', [h.budget_id, h.window_key]);
    await c.query('UPDATE budget_windows SET reserved_micros = GREATEST(0, reserved_micros - $3) WHERE budget_id = $1 AND window_key = $2', [
      h.budget_id,
      h.window_key,
      row.remaining_micros,
    ]);
  }
  await c.query(`UPDATE reservations SET state = 'released', remaining_micros = 0, released_at = now() WHERE task_id = $1`, [taskId]);
  await appendAudit(c, {
    actor: 'govloop',
    taskId,
    action: 'release',
    decision: 'released',
    detail: { usd: microsToUsd(row.remaining_micros) },
    dedupeKey: `${taskId}:release`,
  });
  return row.remaining_micros;
}

export interface BudgetView {
  budgetId: number;
  scope: string;
  period: Period;
  window: string;
  limitUsd: number;
  reservedUsd: number;
  spentUsd: number;
}

/** Which budgets `showBudgets` lists: a level left out matches every team or project (a '*' given matches '*' only). */
export interface BudgetFilter {
  tenant: string;
  team?: string;
  project?: string;
  period?: Period;
}

export async function showBudgets(q: Queryable, filter: BudgetFilter, at: Date): Promise<BudgetView[]> {
  const { rows } = await q.query<{ tenant: string; team: string; project: string; period: Period; limit_micros: number; id: number }>(
    `SELECT id, tenant, team, project, period, limit_micros FROM budgets
     WHERE tenant = $1 AND ($2::text IS NULL OR team = $2) AND ($3::text IS NULL OR project = $3) AND ($4::text IS NULL OR period = $4)
     ORDER BY team, project, period`,
    [filter.tenant, filter.team ?? null, filter.project ?? null, filter.period ?? null],
  );
  const out: BudgetView[] = [];
  for (const b of rows) {
    const key = windowKey(b.period, at);
    const w = await q.query<{ reserved_micros: number; spent_micros: number }>(
      'SELECT reserved_micros, spent_micros FROM budget_windows WHERE budget_id = $1 AND window_key = $2',
      [b.id, key],
    );
    out.push({
      budgetId: b.id,
      scope: scopeLabel(b),
      period: b.period,
      window: key,
      limitUsd: microsToUsd(b.limit_micros),
      reservedUsd: microsToUsd(w.rows[0]?.reserved_micros ?? 0),
      spentUsd: microsToUsd(w.rows[0]?.spent_micros ?? 0),
    });
  }
  return out;
}
