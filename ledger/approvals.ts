import { appendAudit } from './audit';
import type { Db, Queryable } from './db';

/** Why an approval or rejection was not recorded. The CLI prints the code and exits 3. */
export type RefusalCode = 'self-approval' | 'missing-role' | 'expired' | 'already-decided' | 'not-found' | 'not-expired';
export type ApprovalState = 'pending' | 'approved' | 'rejected' | 'expired';

export type DecideResult =
  | { recorded: true; approvalId: string; taskId: string; state: Exclude<ApprovalState, 'pending'>; by: string; idempotent: boolean }
  | { recorded: false; approvalId: string; taskId: string | null; state: ApprovalState | null; code: RefusalCode; message: string };

export interface ApprovalRow {
  approvalId: string;
  taskId: string;
  tenant: string;
  tool: string;
  argsDigest: string;
  requester: string;
  costSoFarUsd: number;
  tier: number;
  state: ApprovalState;
  requestedAt: Date;
  escalateAt: Date;
  expiresAt: Date;
  decidedBy: string | null;
  decidedAt: Date | null;
  reason: string | null;
}

const columns = `approval_id, task_id, tenant, tool, args_digest, requester, cost_so_far_micros, tier, state, requested_at, escalate_at, expires_at, decided_by, decided_at, reason`;
const toRow = (r: Record<string, any>): ApprovalRow => ({
  approvalId: r.approval_id,
  taskId: r.task_id,
  tenant: r.tenant,
  tool: r.tool,
  argsDigest: r.args_digest,
  requester: r.requester,
  costSoFarUsd: r.cost_so_far_micros / 1e6,
  tier: r.tier,
  state: r.state,
  requestedAt: r.requested_at,
  escalateAt: r.escalate_at,
  expiresAt: r.expires_at,
  decidedBy: r.decided_by,
  decidedAt: r.decided_at,
  reason: r.reason,
});

export async function grantAccess(db: Db, g: { tenant: string; user: string; role: string; by: string }): Promise<boolean> {
  return db.tx(async (c) => {
    const r = await c.query('INSERT INTO access_grants (tenant, user_name, role, granted_by) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING', [g.tenant, g.user, g.role, g.by]);
    await appendAudit(c, { actor: g.by, taskId: null, action: 'access.grant', decision: r.rowCount ? 'recorded' : 'unchanged', detail: { tenant: g.tenant, user: g.user, role: g.role } });
    return (r.rowCount ?? 0) > 0;
  });
}

export async function revokeAccess(db: Db, g: { tenant: string; user: string; role: string; by: string }): Promise<boolean> {
  return db.tx(async (c) => {
    const r = await c.query('DELETE FROM access_grants WHERE tenant = $1 AND user_name = $2 AND role = $3', [g.tenant, g.user, g.role]);
    await appendAudit(c, { actor: g.by, taskId: null, action: 'access.revoke', decision: r.rowCount ? 'recorded' : 'unchanged', detail: { tenant: g.tenant, user: g.user, role: g.role } });
    return (r.rowCount ?? 0) > 0;
  });
}

export async function listAccess(q: Queryable, tenant?: string): Promise<{ tenant: string; user: string; role: string; grantedBy: string; grantedAt: Date }[]> {
  const { rows } = await q.query(
    `SELECT tenant, user_name, role, granted_by, granted_at FROM access_grants WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, user_name, role`,
    [tenant ?? null],
  );
  return rows.map((r) => ({ tenant: r.tenant, user: r.user_name, role: r.role, grantedBy: r.granted_by, grantedAt: r.granted_at }));
}

/** Opens an approval request; idempotent by id (a retried activity finds the row it wrote). */
export async function requestApproval(
  q: Queryable,
  a: { approvalId: string; taskId: string; tenant: string; tool: string; argsDigest: string; requester: string; costSoFarMicros: number; requestedAt: Date; escalateAt: Date; expiresAt: Date },
): Promise<ApprovalRow> {
  await q.query(
    `INSERT INTO approvals (approval_id, task_id, tenant, tool, args_digest, requester, cost_so_far_micros, state, requested_at, escalate_at, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10) ON CONFLICT (approval_id) DO NOTHING`,
    [a.approvalId, a.taskId, a.tenant, a.tool, a.argsDigest, a.requester, a.costSoFarMicros, a.requestedAt, a.escalateAt, a.expiresAt],
  );
  return (await getApproval(q, a.approvalId))!;
}

export async function getApproval(q: Queryable, approvalId: string, lock = false): Promise<ApprovalRow | undefined> {
  const { rows } = await q.query(`SELECT ${columns} FROM approvals WHERE approval_id = $1 ${lock ? 'FOR UPDATE' : ''}`, [approvalId]);
  return rows[0] && toRow(rows[0]);
}

/** Requests still waiting for a human, oldest first. */
export async function pendingApprovals(q: Queryable, tenant?: string): Promise<ApprovalRow[]> {
  const { rows } = await q.query(`SELECT ${columns} FROM approvals WHERE state = 'pending' AND ($1::text IS NULL OR tenant = $1) ORDER BY requested_at, approval_id`, [tenant ?? null]);
  return rows.map(toRow);
}

export interface DecideInput {
  approvalId: string;
  /** approve / reject by a person; expire by govloop when the TTL has passed (or, with force, when the task ended). */
  decision: 'approve' | 'reject' | 'expire';
  by: string;
  reason: string;
  /** The tool's approver tiers (roles of tier 0, tier 1, ...); roles of every tier up to the current one may decide. */
  tiers: string[][];
  now: Date;
  force?: boolean;
}

const stateOf = { approve: 'approved', reject: 'rejected', expire: 'expired' } as const;

/**
 * Decides an approval request exactly once. The row is locked, so an approver, a rejecter and the
 * TTL racing each other are serialized: the first that fits wins, the others are refused with
 * `already-decided` (or told, idempotently, that their own identical decision stands).
 * Every outcome, refusals included, is audited.
 */
export async function decideApproval(db: Db, d: DecideInput): Promise<DecideResult> {
  return db.tx(async (c) => {
    const row = await getApproval(c, d.approvalId, true);
    if (!row) return { recorded: false, approvalId: d.approvalId, taskId: null, state: null, code: 'not-found', message: `no approval request ${d.approvalId}` };
    const refuse = async (code: RefusalCode, message: string, state: ApprovalState = row.state): Promise<DecideResult> => {
      if (d.decision !== 'expire') {
        await appendAudit(c, { actor: d.by, taskId: row.taskId, action: 'approval.refused', decision: code, detail: { approvalId: d.approvalId, attempted: d.decision, reason: d.reason, message } });
      }
      return { recorded: false, approvalId: d.approvalId, taskId: row.taskId, state, code, message };
    };
    const want = stateOf[d.decision];
    if (row.state !== 'pending') {
      if (row.state === want && (d.decision === 'expire' || row.decidedBy === d.by)) {
        return { recorded: true, approvalId: d.approvalId, taskId: row.taskId, state: want, by: row.decidedBy ?? d.by, idempotent: true };
      }
      if (row.state === 'expired') return refuse('expired', `the request expired at ${row.expiresAt.toISOString()}`);
      return refuse('already-decided', `already ${row.state} by ${row.decidedBy} at ${row.decidedAt?.toISOString()}`);
    }
    const expired = d.now.getTime() >= row.expiresAt.getTime();
    const record = async (state: Exclude<ApprovalState, 'pending'>, by: string, reason: string): Promise<DecideResult> => {
      await c.query('UPDATE approvals SET state = $2, decided_by = $3, decided_at = $4, reason = $5 WHERE approval_id = $1', [d.approvalId, state, by, d.now, reason]);
      await appendAudit(c, {
        actor: by,
        taskId: row.taskId,
        action: 'approval',
        decision: state,
        detail: { approvalId: d.approvalId, tool: row.tool, argsDigest: row.argsDigest, requester: row.requester, tier: row.tier, reason },
        dedupeKey: `approval:${d.approvalId}`,
        at: d.now,
      });
      return { recorded: true, approvalId: d.approvalId, taskId: row.taskId, state, by, idempotent: false };
    };
    if (d.decision === 'expire') {
      if (!expired && !d.force) return refuse('not-expired', `the request expires at ${row.expiresAt.toISOString()}`);
      return record('expired', d.by, d.reason);
    }
    if (expired) {
      // The TTL passed before this decision arrived: the request expires now, exactly once.
      await record('expired', 'govloop', 'approval TTL passed');
      return refuse('expired', `the request expired at ${row.expiresAt.toISOString()}`, 'expired');
    }
    if (d.by === row.requester) return refuse('self-approval', `${d.by} requested this tool call and cannot decide it (four eyes)`);
    const roles = [...new Set(d.tiers.slice(0, row.tier + 1).flat())];
    const { rows: held } = await c.query<{ role: string }>('SELECT role FROM access_grants WHERE tenant = $1 AND user_name = $2 AND role = ANY($3)', [row.tenant, d.by, roles]);
    if (held.length === 0) return refuse('missing-role', `${d.by} holds none of the roles ${roles.join(', ')} for tenant ${row.tenant} and tool ${row.tool}`);
    return record(want, d.by, d.reason);
  });
}

/** Moves a pending request to the next approver tier; idempotent (`fromTier` must still be current). */
export async function escalateApproval(db: Db, e: { approvalId: string; fromTier: number; roles: string[]; now: Date }): Promise<{ escalated: boolean; row: ApprovalRow | undefined }> {
  return db.tx(async (c) => {
    const r = await c.query("UPDATE approvals SET tier = tier + 1 WHERE approval_id = $1 AND state = 'pending' AND tier = $2", [e.approvalId, e.fromTier]);
    const row = await getApproval(c, e.approvalId);
    if (r.rowCount && row) {
      await appendAudit(c, {
        actor: 'govloop',
        taskId: row.taskId,
        action: 'approval.escalated',
        decision: `tier-${row.tier}`,
        detail: { approvalId: e.approvalId, tool: row.tool, notifyRoles: e.roles },
        dedupeKey: `approval:${e.approvalId}:tier-${row.tier}`,
        at: e.now,
      });
    }
    return { escalated: (r.rowCount ?? 0) > 0, row };
  });
}
