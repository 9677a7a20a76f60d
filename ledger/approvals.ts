import { type Principal, actorName } from '../governance/authz';
import { appendAudit } from './audit';
import { Db, type Queryable } from './db';

/** Why an approval or rejection was not recorded. The CLI prints the code and exits 3. */
export type RefusalCode = 'self-approval' | 'missing-role' | 'expired' | 'already-decided' | 'not-found' | 'not-expired' | 'TENANT_SCOPE';
export type ApprovalState = 'pending' | 'approved' | 'rejected' | 'expired';

export type DecideResult =
  | { recorded: true; approvalId: string; taskId: string; state: Exclude<ApprovalState, 'pending'>; by: string; idempotent: boolean }
  | { recorded: false; approvalId: string; taskId: string | null; state: ApprovalState | null; code: RefusalCode | IdentityRefusal; message: string };
/** Refused before the decision was looked at: the caller has no identity (identity/errors.ts codes). */
export type IdentityRefusal = string & {};

export interface ApprovalRow {
  approvalId: string;
  taskId: string;
  /** The workflow run and step it was asked for (null: asked before runs were kept). */
  runId: string | null;
  seq: number | null;
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

const columns = `approval_id, task_id, run_id, seq, tenant, tool, args_digest, requester, cost_so_far_micros, tier, state, requested_at, escalate_at, expires_at, decided_by, decided_at, reason`;
const toRow = (r: Record<string, any>): ApprovalRow => ({
  approvalId: r.approval_id,
  taskId: r.task_id,
  runId: r.run_id ?? null,
  seq: r.seq ?? null,
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

/**
 * Grants a role (idempotent), audited as `access.grant` by `by`, inside the caller's transaction
 * (where the granter's own right was checked) or a new one.
 */
export async function grantAccess(q: Db | Queryable, g: { tenant: string; user: string; role: string; by: string }): Promise<boolean> {
  const run = async (c: Queryable) => {
    const r = await c.query('INSERT INTO access_grants (tenant, user_name, role, granted_by) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING', [
      g.tenant,
      g.user,
      g.role,
      g.by,
    ]);
    await appendAudit(c, {
      actor: g.by,
      taskId: null,
      action: 'access.grant',
      decision: r.rowCount ? 'recorded' : 'unchanged',
      detail: { tenant: g.tenant, user: g.user, role: g.role },
    });
    return (r.rowCount ?? 0) > 0;
  };
  return q instanceof Db ? q.tx(run) : run(q);
}

export async function revokeAccess(q: Db | Queryable, g: { tenant: string; user: string; role: string; by: string }): Promise<boolean> {
  const run = async (c: Queryable) => {
    const r = await c.query('DELETE FROM access_grants WHERE tenant = $1 AND user_name = $2 AND role = $3', [g.tenant, g.user, g.role]);
    await appendAudit(c, {
      actor: g.by,
      taskId: null,
      action: 'access.revoke',
      decision: r.rowCount ? 'recorded' : 'unchanged',
      detail: { tenant: g.tenant, user: g.user, role: g.role },
    });
    return (r.rowCount ?? 0) > 0;
  };
  return q instanceof Db ? q.tx(run) : run(q);
}

export async function listAccess(
  q: Queryable,
  tenant?: string | string[],
): Promise<{ tenant: string; user: string; role: string; grantedBy: string; grantedAt: Date }[]> {
  const { rows } = await q.query(
    `SELECT tenant, user_name, role, granted_by, granted_at FROM access_grants WHERE ($1::text[] IS NULL OR tenant = ANY($1)) ORDER BY tenant, user_name, role`,
    [tenant === undefined ? null : Array.isArray(tenant) ? tenant : [tenant]],
  );
  return rows.map((r) => ({ tenant: r.tenant, user: r.user_name, role: r.role, grantedBy: r.granted_by, grantedAt: r.granted_at }));
}

/**
 * Opens an approval request; idempotent by id (a retried activity finds the row it wrote). The
 * caller checks the row it gets back with `approvalMatches`: a row another run or other
 * arguments wrote under the same id is never adopted.
 */
export async function requestApproval(
  q: Queryable,
  a: {
    approvalId: string;
    taskId: string;
    runId?: string;
    seq?: number;
    tenant: string;
    tool: string;
    argsDigest: string;
    requester: string;
    costSoFarMicros: number;
    requestedAt: Date;
    escalateAt: Date;
    expiresAt: Date;
  },
): Promise<ApprovalRow> {
  await q.query(
    `INSERT INTO approvals (approval_id, task_id, tenant, tool, args_digest, requester, cost_so_far_micros, state, requested_at, escalate_at, expires_at, run_id, seq)
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12) ON CONFLICT (approval_id) DO NOTHING`,
    [
      a.approvalId,
      a.taskId,
      a.tenant,
      a.tool,
      a.argsDigest,
      a.requester,
      a.costSoFarMicros,
      a.requestedAt,
      a.escalateAt,
      a.expiresAt,
      a.runId ?? null,
      a.seq ?? null,
    ],
  );
  return (await getApproval(q, a.approvalId))!;
}

/** Is `row` the approval of exactly this call: its run, its step, its tool, its arguments? */
export function approvalMatches(
  row: Pick<ApprovalRow, 'runId' | 'seq' | 'tool' | 'argsDigest'>,
  call: { runId: string; seq: number; tool: string; argsDigest: string },
): boolean {
  return (
    (row.runId === null || row.runId === call.runId) &&
    (row.seq === null || row.seq === call.seq) &&
    row.tool === call.tool &&
    row.argsDigest === call.argsDigest
  );
}

/** Two actor names of the same person, whether or not either is marked unverified. */
export const sameIdentity = (a: string, b: string): boolean => a.replace(/ \(unverified\)$/, '') === b.replace(/ \(unverified\)$/, '');

export async function getApproval(q: Queryable, approvalId: string, lock = false): Promise<ApprovalRow | undefined> {
  const { rows } = await q.query(`SELECT ${columns} FROM approvals WHERE approval_id = $1 ${lock ? 'FOR UPDATE' : ''}`, [approvalId]);
  return rows[0] && toRow(rows[0]);
}

/** Requests still waiting for a human, oldest first. */
export async function pendingApprovals(q: Queryable, tenant?: string | string[]): Promise<ApprovalRow[]> {
  const tenants = tenant === undefined ? null : Array.isArray(tenant) ? tenant : [tenant];
  const { rows } = await q.query(
    `SELECT ${columns} FROM approvals WHERE state = 'pending' AND ($1::text[] IS NULL OR tenant = ANY($1)) ORDER BY requested_at, approval_id`,
    [tenants],
  );
  return rows.map(toRow);
}

export interface DecideInput {
  approvalId: string;
  /** approve / reject by a person; expire by govloop when the TTL has passed (or, with force, when the task ended). */
  decision: 'approve' | 'reject' | 'expire';
  /** Who decides: the principal derived from the approver's credential; govloop itself (`by`) for an expiry. */
  principal?: Principal;
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
export async function decideApproval(db: Db, input: DecideInput): Promise<DecideResult> {
  const d = input.principal ? { ...input, by: actorName(input.principal) } : input;
  return db.tx(async (c) => {
    const row = await getApproval(c, d.approvalId, true);
    if (!row)
      return { recorded: false, approvalId: d.approvalId, taskId: null, state: null, code: 'not-found', message: `no approval request ${d.approvalId}` };
    const refuse = async (code: RefusalCode, message: string, state: ApprovalState = row.state): Promise<DecideResult> => {
      if (d.decision !== 'expire') {
        await appendAudit(c, {
          actor: d.by,
          taskId: row.taskId,
          action: 'approval.refused',
          decision: code,
          detail: { approvalId: d.approvalId, attempted: d.decision, reason: d.reason, message },
        });
      }
      return { recorded: false, approvalId: d.approvalId, taskId: row.taskId, state, code, message };
    };
    const want = stateOf[d.decision];
    if (row.state !== 'pending') {
      if (row.state === want && (d.decision === 'expire' || (row.decidedBy !== null && sameIdentity(row.decidedBy, d.by)))) {
        return { recorded: true, approvalId: d.approvalId, taskId: row.taskId, state: want, by: row.decidedBy ?? d.by, idempotent: true };
      }
      if (row.state === 'expired') return refuse('expired', `the request expired at ${row.expiresAt.toISOString()}`);
      return refuse('already-decided', `already ${row.state} by ${row.decidedBy} at ${row.decidedAt?.toISOString()}`);
    }
    const expired = d.now.getTime() >= row.expiresAt.getTime();
    const record = async (state: Exclude<ApprovalState, 'pending'>, by: string, reason: string): Promise<DecideResult> => {
      await c.query('UPDATE approvals SET state = $2, decided_by = $3, decided_at = $4, reason = $5 WHERE approval_id = $1', [
        d.approvalId,
        state,
        by,
        d.now,
        reason,
      ]);
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
    if (sameIdentity(d.by, row.requester)) return refuse('self-approval', `${d.by} requested this tool call and cannot decide it (four eyes)`);
    if (d.principal?.tenantScope && d.principal.tenantScope !== row.tenant)
      return refuse('TENANT_SCOPE', `${d.by}'s key is for tenant ${d.principal.tenantScope}, not ${row.tenant}`);
    const roles = [...new Set(d.tiers.slice(0, row.tier + 1).flat())];
    // Roles are granted to the subject; platform-admin does not stand in for a tool's approver role.
    const subject = d.principal?.subject ?? d.by;
    const { rows: held } = await c.query<{ role: string }>('SELECT role FROM access_grants WHERE tenant = $1 AND user_name = $2 AND role = ANY($3)', [
      row.tenant,
      subject,
      roles,
    ]);
    if (held.length === 0) return refuse('missing-role', `${d.by} holds none of the roles ${roles.join(', ')} for tenant ${row.tenant} and tool ${row.tool}`);
    return record(want, d.by, d.reason);
  });
}

/** Moves a pending request to the next approver tier; idempotent (`fromTier` must still be current). */
export async function escalateApproval(
  db: Db,
  e: { approvalId: string; fromTier: number; roles: string[]; now: Date },
): Promise<{ escalated: boolean; row: ApprovalRow | undefined }> {
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
