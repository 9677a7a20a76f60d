import { type LadderConfig, type LadderStep, leaseSize, queuesAdmissions, stepRank } from '../governance/ladder';
import { microsToUsd, priceVersionAt } from '../governance/pricing';
import { type Reason, ReasonCode, reason } from '../governance/reasons';
import type { PriceBookVersion } from '../config/schema';
import { attributionId } from './attribution';
import { appendAudit } from './audit';
import { type OptionalBudgetScope, scopeLabel } from '../governance/budget-scope';
import { coveringWindows } from './budgets';
import type { Db, Queryable } from './db';

/**
 * Budget leases: a slice of a scope's budget held, like a task's reservation, on every budget
 * window that covers the scope, for a client that spends it in process (the SDK's `lease()`).
 * Reported spend moves from held to spent and is recorded as usage (meter `usd`, idempotent by
 * lease and report sequence); what is left goes back when the lease is returned or expires.
 *
 * Overspend bound: a grant holds its amount before anything is spent, so spent + held never
 * passes a limit through leases. A holder that spends past its lease (a call that cost more than
 * it checked for) is charged in full; the SDK lets a holder spend only what its leases hold, so
 * a scope's overspend is bounded by what its outstanding leases hold and is zero for holders
 * that check before they spend.
 */
export type LeaseScope = OptionalBudgetScope;

export type LeaseGrant =
  | { granted: true; leaseId: string; amountMicros: number; expiresAt: string; step: LadderStep; idempotent: boolean }
  | { granted: false; leaseId: string; reason: Reason };

const attributionOf = (s: LeaseScope) => ({ tenant: s.tenant, team: s.team ?? '', project: s.project ?? '' });
/** The scope a lease row stores ('' for a level not narrowed, as attributionOf writes it), as its grant named it. */
const leaseScopeOf = (r: { tenant: string; team: string; project: string }): LeaseScope => ({
  tenant: r.tenant,
  ...(r.team ? { team: r.team } : {}),
  ...(r.project ? { project: r.project } : {}),
});

/** Grants a lease (idempotent by lease id), sized by governance/ladder.ts `leaseSize`. */
export async function grantLease(
  db: Db,
  x: {
    leaseId: string;
    scope: LeaseScope;
    holder: string;
    requestedMicros: number;
    ttlSeconds: number;
    burnMicrosPerHour: number;
    now: Date;
    ladder: LadderConfig;
  },
): Promise<LeaseGrant> {
  return db.tx(async (c) => {
    const existing = await c.query<{ amount_micros: number; expires_at: Date }>('SELECT amount_micros, expires_at FROM leases WHERE lease_id = $1', [
      x.leaseId,
    ]);
    if (existing.rows[0])
      return {
        granted: true,
        leaseId: x.leaseId,
        amountMicros: existing.rows[0].amount_micros,
        expiresAt: existing.rows[0].expires_at.toISOString(),
        step: 'ok',
        idempotent: true,
      };
    const windows = await coveringWindows(c, attributionOf(x.scope), x.now, true);
    const label = scopeLabel(x.scope);
    if (windows.length === 0)
      return {
        granted: false,
        leaseId: x.leaseId,
        reason: reason(ReasonCode.BudgetMissing, `no budget covers ${label}: a lease is a slice of a budget`, null, microsToUsd(x.requestedMicros), 'budgets'),
      };
    const step = windows.reduce<LadderStep>((s, w) => (stepRank(w.ladder_step) > stepRank(s) ? w.ladder_step : s), 'ok');
    const headroom = Math.min(...windows.map((w) => w.limit_micros - w.reserved_micros - w.spent_micros));
    const amount = leaseSize(
      { requestedMicros: x.requestedMicros, burnMicrosPerHour: x.burnMicrosPerHour, ttlSeconds: x.ttlSeconds, step, headroomMicros: Math.max(0, headroom) },
      x.ladder,
    );
    if (amount <= 0) {
      const r = queuesAdmissions(step)
        ? reason(
            ReasonCode.BudgetLadderQueue,
            `budget of ${label} is at its ${step} step: no new leases`,
            null,
            microsToUsd(x.requestedMicros),
            'policies#ladder.queueAt',
          )
        : reason(
            ReasonCode.BudgetExceeded,
            `$${microsToUsd(Math.max(0, headroom)).toFixed(6)} left of the budgets of ${label}: too little to lease`,
            microsToUsd(Math.max(0, headroom)),
            microsToUsd(x.requestedMicros),
            'budgets',
          );
      return { granted: false, leaseId: x.leaseId, reason: r };
    }
    for (const w of windows)
      await c.query('UPDATE budget_windows SET reserved_micros = reserved_micros + $3 WHERE budget_id = $1 AND window_key = $2', [
        w.budget_id,
        w.window_key,
        amount,
      ]);
    const a = attributionOf(x.scope);
    const expiresAt = new Date(x.now.getTime() + x.ttlSeconds * 1000);
    await c.query(
      'INSERT INTO leases (lease_id, tenant, team, project, holder, amount_micros, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)',
      [x.leaseId, a.tenant, a.team, a.project, x.holder, amount, x.now, expiresAt],
    );
    await c.query('INSERT INTO lease_holds (lease_id, budget_id, window_key) SELECT $1, * FROM unnest($2::bigint[], $3::text[])', [
      x.leaseId,
      windows.map((w) => w.budget_id),
      windows.map((w) => w.window_key),
    ]);
    await appendAudit(c, {
      actor: x.holder,
      taskId: null,
      action: 'lease.grant',
      decision: 'granted',
      detail: {
        leaseId: x.leaseId,
        scope: label,
        usd: microsToUsd(amount),
        requestedUsd: microsToUsd(x.requestedMicros),
        step,
        expiresAt: expiresAt.toISOString(),
      },
      dedupeKey: `lease:${x.leaseId}:grant`,
    });
    return { granted: true, leaseId: x.leaseId, amountMicros: amount, expiresAt: expiresAt.toISOString(), step, idempotent: false };
  });
}

export type LeaseReport =
  { recorded: true; spentMicros: number; leftMicros: number; duplicate: boolean } | { recorded: false; code: 'not-found' | 'closed'; message: string };

/**
 * Records spend reported on a lease, idempotent by (lease, seq): held → spent on the lease's
 * windows (beyond what the lease holds: spent without a hold), and one usage row (meter `usd`).
 */
export async function reportLease(
  db: Db,
  x: { leaseId: string; seq: number; micros: number; model?: string; useCase?: string; at: Date; priceBook: PriceBookVersion[] },
): Promise<LeaseReport> {
  return db.tx(async (c) => {
    const l = await c.query<{ tenant: string; team: string; project: string; amount_micros: number; spent_micros: number; state: string }>(
      'SELECT tenant, team, project, amount_micros, spent_micros, state FROM leases WHERE lease_id = $1 FOR UPDATE',
      [x.leaseId],
    );
    const lease = l.rows[0];
    if (!lease) return { recorded: false, code: 'not-found', message: `no lease ${x.leaseId}` };
    const dup = await c.query('INSERT INTO lease_reports (lease_id, seq, micros) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING seq', [
      x.leaseId,
      x.seq,
      x.micros,
    ]);
    if (!dup.rowCount)
      return { recorded: true, spentMicros: lease.spent_micros, leftMicros: Math.max(0, lease.amount_micros - lease.spent_micros), duplicate: true };
    // Spend reported after the lease closed was still spent: charged in full, without a hold.
    const held = lease.state === 'held' ? Math.max(0, Math.min(x.micros, lease.amount_micros - lease.spent_micros)) : 0;
    const holds = await c.query<{ budget_id: number; window_key: string }>(
      'SELECT budget_id, window_key FROM lease_holds WHERE lease_id = $1 ORDER BY budget_id',
      [x.leaseId],
    );
    for (const h of holds.rows) {
      await c.query(
        'UPDATE budget_windows SET reserved_micros = GREATEST(0, reserved_micros - $3), spent_micros = spent_micros + $4 WHERE budget_id = $1 AND window_key = $2',
        [h.budget_id, h.window_key, held, x.micros],
      );
    }
    await c.query('UPDATE leases SET spent_micros = spent_micros + $2 WHERE lease_id = $1', [x.leaseId, x.micros]);
    const attr = await attributionId(c, { tenant: lease.tenant, team: lease.team, project: lease.project, model: x.model ?? '', useCase: x.useCase ?? '' });
    await c.query(
      `INSERT INTO usage_events (idempotency_key, task_id, attribution_id, meter, subject, quantity, price_version, cost_micros, occurred_at)
       VALUES ($1, NULL, $2, 'usd', $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING`,
      [
        `lease:${x.leaseId}:${x.seq}`,
        attr,
        `lease:${x.leaseId}`,
        microsToUsd(x.micros),
        priceVersionAt(x.priceBook, x.at.toISOString()).version,
        x.micros,
        x.at,
      ],
    );
    const spent = lease.spent_micros + x.micros;
    return { recorded: true, spentMicros: spent, leftMicros: Math.max(0, lease.amount_micros - spent), duplicate: false };
  });
}

/** Returns what is left of a lease to its budgets (returned by its holder, or expired). Idempotent. */
export async function closeLease(db: Db, leaseId: string, state: 'returned' | 'expired', by: string): Promise<{ closed: boolean; releasedMicros: number }> {
  return db.tx(async (c) => {
    const l = await c.query<{ amount_micros: number; spent_micros: number; state: string; tenant: string; team: string; project: string }>(
      'SELECT amount_micros, spent_micros, state, tenant, team, project FROM leases WHERE lease_id = $1 FOR UPDATE',
      [leaseId],
    );
    const lease = l.rows[0];
    if (!lease || lease.state !== 'held') return { closed: false, releasedMicros: 0 };
    const left = Math.max(0, lease.amount_micros - lease.spent_micros);
    const holds = await c.query<{ budget_id: number; window_key: string }>(
      'SELECT budget_id, window_key FROM lease_holds WHERE lease_id = $1 ORDER BY budget_id',
      [leaseId],
    );
    for (const h of holds.rows) {
      await c.query('SELECT 1 FROM budget_windows WHERE budget_id = $1 AND window_key = $2 FOR UPDATE', [h.budget_id, h.window_key]);
      await c.query('UPDATE budget_windows SET reserved_micros = GREATEST(0, reserved_micros - $3) WHERE budget_id = $1 AND window_key = $2', [
        h.budget_id,
        h.window_key,
        left,
      ]);
    }
    await c.query('UPDATE leases SET state = $2, closed_at = now() WHERE lease_id = $1', [leaseId, state]);
    await appendAudit(c, {
      actor: by,
      taskId: null,
      action: 'lease.close',
      decision: state,
      detail: { leaseId, scope: scopeLabel(leaseScopeOf(lease)), spentUsd: microsToUsd(lease.spent_micros), returnedUsd: microsToUsd(left) },
      dedupeKey: `lease:${leaseId}:close`,
    });
    return { closed: true, releasedMicros: left };
  });
}

/** Of these leases, closes those past their expiry; returns the ids no longer held (expired now or closed before). */
export async function expireLeases(db: Db, leaseIds: string[], now: Date): Promise<string[]> {
  const { rows } = await db.query<{ lease_id: string; state: string; expires_at: Date }>(
    'SELECT lease_id, state, expires_at FROM leases WHERE lease_id = ANY($1) ORDER BY lease_id',
    [leaseIds],
  );
  const gone = new Set(leaseIds.filter((id) => !rows.some((r) => r.lease_id === id)));
  for (const r of rows) {
    if (r.state !== 'held') gone.add(r.lease_id);
    else if (r.expires_at.getTime() <= now.getTime()) {
      await closeLease(db, r.lease_id, 'expired', 'govloop');
      gone.add(r.lease_id);
    }
  }
  return [...gone].sort();
}

/** What a scope spent over the last hour, per hour (micro-dollars): the burn rate leases are sized by. */
export async function scopeBurnMicrosPerHour(q: Queryable, s: LeaseScope, now: Date): Promise<number> {
  const { rows } = await q.query<{ cost: number | null }>(
    `SELECT SUM(u.cost_micros)::float8 AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
      WHERE a.tenant = $1 AND ($2::text IS NULL OR a.team = $2) AND ($3::text IS NULL OR a.project = $3) AND u.occurred_at > $4 AND u.occurred_at <= $5`,
    [s.tenant, s.team ?? null, s.project ?? null, new Date(now.getTime() - 3_600_000), now],
  );
  return Number(rows[0]?.cost ?? 0);
}
