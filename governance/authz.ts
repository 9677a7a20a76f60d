/**
 * Authorization: which principal may do what in which tenant (decision 0018). Pure: the grants and
 * the principal come in, a decision goes out; the ledger reads the grants inside the transaction
 * that acts on the decision (ledger/authz.ts).
 */

/** The fixed roles of a tenant. The tool catalog's approver roles (e.g. `payments-approver`) are tenant roles too. */
export const TenantRoles = ['viewer', 'requester', 'approver', 'budget-owner', 'tenant-admin'] as const;
export type TenantRole = (typeof TenantRoles)[number];
export const PLATFORM_ADMIN = 'platform-admin';

/** Who made a call, as govloop derived it from the call's credential. */
export interface Principal {
  /** The user (OIDC subject claim, or the user an API key was issued to). Roles are granted to it. */
  subject: string;
  /** False under `auth: none`, where the subject is a typed name. */
  verified: boolean;
  method: 'oidc' | 'apikey' | 'none';
  /** An API key acts in its own tenant only. */
  tenantScope: string | null;
  /** Holds platform-admin (auth.platformAdmins). */
  platformAdmin: boolean;
}

/** The name the audit log and status outputs show: unverified identities say so. */
export const actorName = (p: Pick<Principal, 'subject' | 'verified'>): string => (p.verified ? p.subject : `${p.subject} (unverified)`);

/** Everything govloop lets someone do, and the roles that allow it. */
export const Actions = {
  read: ['viewer', 'requester', 'approver', 'budget-owner', 'tenant-admin'],
  submit: ['requester', 'tenant-admin'],
  /** Steps, finish and cancel of one's own task; others' tasks need `operate`. */
  'task.own': ['requester', 'tenant-admin'],
  /** Cancel, finish, preempt or resolve any task of the tenant. */
  operate: ['tenant-admin'],
  'budget.set': ['budget-owner', 'tenant-admin'],
  'budget.decide': ['budget-owner', 'tenant-admin'],
  'access.manage': ['tenant-admin'],
  'keys.manage': ['tenant-admin'],
} as const satisfies Record<string, readonly TenantRole[]>;
export type Action = keyof typeof Actions;

export type AuthzDecision = { allowed: true; via: string } | { allowed: false; code: 'FORBIDDEN' | 'TENANT_SCOPE'; message: string };

/**
 * May `p`, holding `roles` in `tenant`, do `action` there? Platform admins may do everything;
 * a key scoped to another tenant may do nothing. `extraRoles` widens the allowed set (the tool's
 * approver roles for an approval).
 */
export function authorize(p: Principal, action: Action, tenant: string, roles: readonly string[], extraRoles: readonly string[] = []): AuthzDecision {
  if (p.tenantScope !== null && p.tenantScope !== tenant) {
    return { allowed: false, code: 'TENANT_SCOPE', message: `${actorName(p)}'s key is for tenant ${p.tenantScope}, not ${tenant}` };
  }
  if (p.platformAdmin) return { allowed: true, via: PLATFORM_ADMIN };
  const allowed: readonly string[] = [...Actions[action], ...extraRoles];
  const held = roles.find((r) => allowed.includes(r));
  if (held !== undefined) return { allowed: true, via: held };
  return {
    allowed: false,
    code: 'FORBIDDEN',
    message: `${actorName(p)} holds none of the roles ${allowed.join(', ')} in tenant ${tenant} (needed to ${action})`,
  };
}

/** Roles `access grant` accepts: the fixed ones, and the approver roles the tool catalog names. */
export function grantableRoles(catalogRoles: readonly string[]): string[] {
  return [...new Set([...TenantRoles, ...catalogRoles])];
}

/**
 * Does lowering a budget from `fromMicros` to `toMicros` need a second person? A raise always
 * does (decision 0015); a lowering does above the configured share of the current limit.
 */
export function budgetChangeNeedsSecondPerson(fromMicros: number | null, toMicros: number, lowerShareAbove: number): boolean {
  if (fromMicros === null) return false;
  if (toMicros > fromMicros) return true;
  if (fromMicros === 0) return false;
  return (fromMicros - toMicros) / fromMicros > lowerShareAbove;
}
