import { type Action, type AuthzDecision, type Principal, actorName, authorize } from '../governance/authz';
import { appendAudit } from './audit';
import type { Queryable } from './db';

/** The roles `subject` holds in `tenant` (access_grants). */
export async function rolesIn(q: Queryable, subject: string, tenant: string): Promise<string[]> {
  const { rows } = await q.query<{ role: string }>('SELECT role FROM access_grants WHERE tenant = $1 AND user_name = $2 ORDER BY role', [tenant, subject]);
  return rows.map((r) => r.role);
}

/** The tenants where `subject` holds any role (what a non-admin may list). */
export async function tenantsOf(q: Queryable, subject: string): Promise<string[]> {
  const { rows } = await q.query<{ tenant: string }>('SELECT DISTINCT tenant FROM access_grants WHERE user_name = $1 ORDER BY tenant', [subject]);
  return rows.map((r) => r.tenant);
}

/** Whether `subject` holds `role` in any tenant (a platform-wide duty such as the program's workload sign-off). */
export async function holdsRoleAnywhere(q: Queryable, subject: string, role: string): Promise<boolean> {
  const { rows } = await q.query('SELECT 1 FROM access_grants WHERE user_name = $1 AND role = $2 LIMIT 1', [subject, role]);
  return rows.length > 0;
}

/** A call refused before it changed anything: the code the caller sees and the message. */
export type Refusal = { allowed: false; code: string; message: string };

/**
 * Checks `p` may do `action` in `tenant`, reading the grants in `q` — the transaction that acts on
 * the answer, so a revoke racing the call is either seen or serialized after it. A refusal is
 * audited (`authz.refused`) in the same transaction; the caller then changes nothing else.
 */
export async function checkAccess(
  q: Queryable,
  p: Principal,
  action: Action,
  tenant: string,
  ctx: { taskId?: string | null; detail?: Record<string, unknown>; extraRoles?: readonly string[] } = {},
): Promise<AuthzDecision> {
  const roles = p.platformAdmin && p.tenantScope === null ? [] : await rolesIn(q, p.subject, tenant);
  const d = authorize(p, action, tenant, roles, ctx.extraRoles);
  if (!d.allowed) await auditRefusal(q, p, action, d, { tenant, ...(ctx.detail ?? {}) }, ctx.taskId ?? null);
  return d;
}

/** Audits a refused call: who (as far as known), what, the code. */
export async function auditRefusal(
  q: Queryable,
  p: Pick<Principal, 'subject' | 'verified'> | null,
  action: string,
  d: { code: string; message: string },
  detail: Record<string, unknown>,
  taskId: string | null = null,
): Promise<void> {
  await appendAudit(q, {
    actor: p ? actorName(p) : 'unauthenticated',
    taskId,
    action: 'authz.refused',
    decision: d.code,
    detail: { attempted: action, message: d.message, ...detail },
  });
}

/** The tenants `p` may read: null for all (a platform admin), else the tenants where it holds a role (a key: its own tenant). */
export async function readableTenants(q: Queryable, p: Principal): Promise<string[] | null> {
  if (p.tenantScope !== null) return p.platformAdmin || (await rolesIn(q, p.subject, p.tenantScope)).length > 0 ? [p.tenantScope] : [];
  if (p.platformAdmin) return null;
  return tenantsOf(q, p.subject);
}
