/**
 * The flat GPU quota of a team in no cohort: how many GPUs of a type it may hold at once. One pure
 * function decides it, called twice: optimistically at admission (by governance/quota.ts
 * `admitQuota()`, which adds preemption of the team's own lower-priority work on top, or by
 * governance/admission.ts `admit()` when no quota decision was made) and again by the reservation
 * under the team's quota lock (ledger/budgets.ts `reserve()`), so two tasks admitted at once cannot
 * both take the last GPUs. A team in a cohort (borrowing, lending) is decided by `admitQuota()`.
 */
import type { Policies } from '../config/schema';
import { type Reason, ReasonCode, reason } from './reasons';

/** GPU counts are whole or thousandths (shares, MIG slices): sums are kept to three decimals so 7 × 1/7 is 1. */
export function addGpus(a: number, b: number): number {
  return Math.round((a + b) * 1000) / 1000;
}

/** A team's GPU quota for one type, and the policy line it comes from. */
export function gpuQuotaFor(policies: Policies, a: { tenant: string; team: string }, gpuType: string): { quota: number; policy: string } {
  const row = policies.gpuQuotas.find((q) => q.tenant === a.tenant && q.team === a.team && q.gpuType === gpuType);
  return row
    ? { quota: row.gpus, policy: `policies/${policies.name}#gpuQuotas[${a.tenant}/${a.team}/${gpuType}]` }
    : { quota: policies.defaultGpuQuota, policy: `policies/${policies.name}#defaultGpuQuota` };
}

export interface FlatQuotaAsk {
  team: string;
  gpuType: string;
  /** GPUs the task asks for, as quota counts them (governance/plan.ts `quotaGpus`). */
  asked: number;
  /** GPUs of the type the team holds now, the task excluded. */
  inUse: number;
  /** The team's quota and the policy line it comes from (`gpuQuotaFor`). */
  quota: number;
  policy: string;
}

/**
 * null: the task fits the team's quota now. GPU_QUOTA_EXCEEDED: it asks for more than the quota,
 * and can never fit. GPU_QUOTA_BUSY: it would fit once the team's other work frees its GPUs; it waits.
 * Sums are kept to three decimals (`addGpus`), so shares and MIG slices add up exactly.
 */
export function decideFlatQuota(q: FlatQuotaAsk): Reason | null {
  if (q.asked > q.quota) {
    return reason(ReasonCode.GpuQuotaExceeded, `${q.asked} ${q.gpuType} GPUs is above team ${q.team}'s quota ${q.quota}`, q.quota, q.asked, q.policy);
  }
  if (addGpus(q.inUse, q.asked) > q.quota) {
    return reason(
      ReasonCode.GpuQuotaBusy,
      `team ${q.team} holds ${q.inUse} of ${q.quota} ${q.gpuType} GPUs; ${q.asked} more must wait`,
      q.quota - q.inUse,
      q.asked,
      q.policy,
    );
  }
  return null;
}
