/** Budget changes: a request (applied, or pending a second person) and the decision on a pending raise (ledger/budgets.ts). */
import { type Principal, actorName, budgetChangeNeedsSecondPerson } from '../governance/authz';
import { checkAccess } from './authz';
import { sameIdentity } from './approvals';
import type { Period } from '../governance/periods';
import { microsToUsd, usdToMicros } from '../governance/pricing';
import { appendAudit } from './audit';
import type { Db } from './db';
import { type OptionalBudgetScope, scopeLabel, scopeOf } from '../governance/budget-scope';

export type BudgetChange =
  | { applied: true; budgetId: number; limitUsd: number }
  /** A raise of an existing budget, or a lowering past the configured share, waits for someone other than the requester. */
  | { applied: false; raiseId: number; budgetId: number; fromUsd: number; toUsd: number }
  /** The caller may not set budgets in the tenant (audited; nothing else changed). */
  | { applied: false; refused: { code: string; message: string } };

/** Who asks for a budget change, and from what share a lowering needs a second person (auth.budgetLowerSecondPersonAbove). */
export interface ChangeAuthority {
  principal: Principal;
  lowerSecondPersonAbove: number;
}

/**
 * What `govloop budget set` does: a new budget, or a lower limit, applies at once; a raise of an
 * existing limit is recorded as pending until another person approves it (four eyes).
 */
export async function requestBudgetChange(
  db: Db,
  scope: OptionalBudgetScope,
  period: Period,
  usd: number,
  who: string | ChangeAuthority,
  why: string,
): Promise<BudgetChange> {
  const micros = usdToMicros(usd);
  const actor = typeof who === 'string' ? who : actorName(who.principal);
  const k = scopeOf(scope);
  return db.tx(async (c) => {
    if (typeof who !== 'string') {
      const d = await checkAccess(c, who.principal, 'budget.set', scope.tenant, { detail: { scope: scopeLabel(scope), period, usd } });
      if (!d.allowed) return { applied: false, refused: { code: d.code, message: d.message } };
    }
    const cur = await c.query<{ id: number; limit_micros: number }>(
      `SELECT id, limit_micros FROM budgets WHERE tenant = $1 AND team = $2 AND project = $3 AND period = $4 AND unit = 'usd' FOR UPDATE`,
      [k.tenant, k.team, k.project, period],
    );
    const row = cur.rows[0];
    // A raise always waits for a second person; a lowering does past the configured share (it can queue and preempt a tenant's work).
    const lowerShare = typeof who === 'string' ? 1 : who.lowerSecondPersonAbove;
    if (row && budgetChangeNeedsSecondPerson(row.limit_micros, micros, lowerShare)) {
      const r = await c.query<{ id: number }>(
        `INSERT INTO budget_raises (budget_id, from_micros, to_micros, requested_by, reason) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
        [row.id, row.limit_micros, micros, actor, why],
      );
      const raiseId = r.rows[0]!.id;
      await appendAudit(c, {
        actor,
        taskId: null,
        action: micros > row.limit_micros ? 'budget.raise' : 'budget.lower',
        decision: 'requested',
        detail: { raiseId, scope: scopeLabel(scope), period, fromUsd: microsToUsd(row.limit_micros), toUsd: usd, reason: why },
      });
      return { applied: false, raiseId, budgetId: row.id, fromUsd: microsToUsd(row.limit_micros), toUsd: usd };
    }
    const up = await c.query<{ id: number }>(
      `INSERT INTO budgets (tenant, team, project, period, limit_micros) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (tenant, team, project, period, unit) DO UPDATE SET limit_micros = EXCLUDED.limit_micros, updated_at = now()
       RETURNING id`,
      [k.tenant, k.team, k.project, period, micros],
    );
    await appendAudit(c, { actor, taskId: null, action: 'budget.set', decision: 'recorded', detail: { scope: scopeLabel(scope), period, usd, reason: why } });
    return { applied: true, budgetId: up.rows[0]!.id, limitUsd: usd };
  });
}

export type RaiseDecision =
  | {
      recorded: true;
      raiseId: number;
      budgetId: number;
      budget: { tenant: string; team: string; project: string; period: Period };
      state: 'approved' | 'rejected';
      limitUsd: number;
    }
  | { recorded: false; raiseId: number; code: 'not-found' | 'self-approval' | 'already-decided' | 'FORBIDDEN' | 'TENANT_SCOPE'; message: string };

/** Approves or rejects a pending raise; the requester cannot decide their own. */
export async function decideRaise(db: Db, raiseId: number, decision: 'approve' | 'reject', who: string | Principal, why: string): Promise<RaiseDecision> {
  const by = typeof who === 'string' ? who : actorName(who);
  return db.tx(async (c) => {
    const r = await c.query<{
      budget_id: number;
      to_micros: number;
      from_micros: number;
      requested_by: string;
      state: string;
      tenant: string;
      team: string;
      project: string;
      period: Period;
    }>(
      `SELECT r.budget_id, r.to_micros, r.from_micros, r.requested_by, r.state, b.tenant, b.team, b.project, b.period
         FROM budget_raises r JOIN budgets b ON b.id = r.budget_id WHERE r.id = $1 FOR UPDATE OF r`,
      [raiseId],
    );
    const row = r.rows[0];
    if (!row) return { recorded: false, raiseId, code: 'not-found', message: `no budget raise ${raiseId}` };
    if (typeof who !== 'string') {
      const d = await checkAccess(c, who, 'budget.decide', row.tenant, { detail: { raiseId } });
      if (!d.allowed) return { recorded: false, raiseId, code: d.code, message: d.message };
    }
    const refuse = async (code: 'already-decided' | 'self-approval', message: string): Promise<RaiseDecision> => {
      await appendAudit(c, { actor: by, taskId: null, action: 'authz.refused', decision: code, detail: { attempted: `budget.${decision}`, raiseId, message } });
      return { recorded: false, raiseId, code, message };
    };
    if (row.state !== 'pending') return refuse('already-decided', `budget change ${raiseId} was already ${row.state}`);
    if (sameIdentity(row.requested_by, by)) return refuse('self-approval', `${by} requested change ${raiseId} and cannot decide it (four eyes)`);
    const state = decision === 'approve' ? 'approved' : 'rejected';
    await c.query('UPDATE budget_raises SET state = $2, decided_by = $3, decided_at = now() WHERE id = $1', [raiseId, state, by]);
    if (state === 'approved') await c.query('UPDATE budgets SET limit_micros = $2, updated_at = now() WHERE id = $1', [row.budget_id, row.to_micros]);
    await appendAudit(c, {
      actor: by,
      taskId: null,
      action: row.to_micros > row.from_micros ? 'budget.raise' : 'budget.lower',
      decision: state,
      detail: { raiseId, budgetId: row.budget_id, fromUsd: microsToUsd(row.from_micros), toUsd: microsToUsd(row.to_micros), reason: why },
    });
    return {
      recorded: true,
      raiseId,
      budgetId: row.budget_id,
      budget: { tenant: row.tenant, team: row.team, project: row.project, period: row.period },
      state,
      limitUsd: microsToUsd(state === 'approved' ? row.to_micros : row.from_micros),
    };
  });
}
