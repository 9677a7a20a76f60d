/**
 * GPU quotas with borrowing inside a cohort, weighted fair share and preemption: pure functions
 * over plain data (docs/decisions/0013). The ledger reads the state; this module decides.
 *
 * The model (the Kueue one, for one resource: GPUs of one type):
 * - A team of a cohort has a `nominal` quota it is always entitled to. It may use idle quota of
 *   the other teams of its cohort up to its `borrowingLimit` (null: no limit); a team lends at most
 *   `lendingLimit` of its nominal quota (null: all of it). Quota a team has asked for (a queued
 *   request within its nominal) is not idle: nobody may borrow it.
 * - A team in no cohort has the flat quota of `policies.gpuQuotas` / `defaultGpuQuota`.
 * - Contended requests are ordered by priority (higher first), then weighted fair share (the
 *   team's dominant share, usage / weight, lower first), then age. A request that would borrow
 *   waits while a request ahead of it, from another team, would fit now (FAIR_SHARE_WAIT).
 * - Preemption (Kueue's "classical" preemption): a team reclaiming its nominal quota may preempt
 *   workloads of teams that borrow in its cohort, as long as they keep borrowing; a request may
 *   preempt lower-priority workloads of its own team. Never a workload of higher priority than
 *   the preemptor. Among the valid victim sets, the one that loses the fewest GPU-seconds since the
 *   victims' last checkpoints wins (kueue #477), then the one with fewer victims; a set is valid
 *   only if the freed GPUs let the preemptor be placed on a node (kueue #5243).
 */
import { addGpus, decideFlatQuota } from './flat-quota';
import { type Reason, ReasonCode, reason } from './reasons';

export interface CohortMember {
  tenant: string;
  team: string;
  nominal: number;
  /** How much above nominal the team may use of its cohort's idle quota; null: no limit. */
  borrowingLimit: number | null;
  /** How much of its nominal quota the team lends to the cohort; null: all of it. */
  lendingLimit: number | null;
  /** Weight in fair sharing: a team's share is its usage divided by its weight. */
  weight: number;
}

export interface Cohort {
  name: string;
  gpuType: string;
  teams: CohortMember[];
}

/** A workload that holds GPUs of the type now (reserved, dispatched or running). */
export interface Workload {
  taskId: string;
  tenant: string;
  team: string;
  gpus: number;
  /** Numeric priority (policies.priorities). */
  priority: number;
  /** Node the job runs on; null when not (yet) placed or unknown. */
  node: string | null;
  /** GPU-seconds run since the workload's last checkpoint: what preempting it now loses. */
  lostGpuSeconds: number;
  /** A preemption of this workload is under way: its GPUs are about to come free. */
  preempting?: boolean;
  /** Job-seconds it has run since it last started or resumed; absent: not known (then never shielded). */
  runSeconds?: number;
}

/** A request waiting for quota, or the request being decided. */
export interface QuotaRequest {
  taskId: string;
  tenant: string;
  team: string;
  gpus: number;
  priority: number;
  /** ISO time the task was submitted: its place among equals. */
  queuedAt: string;
}

export interface NodeCapacity {
  name: string;
  gpus: number;
  /** GPUs booked on the node now, by any workload. */
  used: number;
}

export interface QuotaState {
  gpuType: string;
  /** The cohort the requesting team is in, or null (then `flat` applies). */
  cohort: Cohort | null;
  /** The quota of a team in no cohort, and the policy line it comes from. */
  flat: { quota: number; policy: string };
  /** Workloads of the cohort's teams (or of the team, with no cohort), the request excluded. */
  running: Workload[];
  /** Other requests waiting for the same quota, the request excluded. */
  pending: QuotaRequest[];
  /** Nodes of the GPU type, when the cluster tells; without them there is no node-level check. */
  nodes?: NodeCapacity[];
  /**
   * Can the request be placed (topology, sharing, gang) once the GPUs of these tasks are free?
   * Given by a cluster that can place in memory; it replaces the node-level check, so a victim set
   * is valid only if the preemptor then actually fits somewhere (kueue #5243).
   */
  fits?: (freedTaskIds: readonly string[]) => boolean;
  /** Where the cohort is configured, for reasons. */
  policy?: string;
  /**
   * policies.preemption.minRunSeconds: a workload that has run less than this since it last
   * started or resumed is not a victim, so a job is not evicted again and again before it gets
   * anything done. 0 or absent: no shield.
   */
  minRunSeconds?: number;
}

export interface Victim {
  taskId: string;
  tenant: string;
  team: string;
  gpus: number;
  priority: number;
  node: string | null;
  lostGpuSeconds: number;
  /** reclaim: its team borrows quota the preemptor's team is owed; priority: same team, lower priority. */
  why: 'reclaim' | 'priority';
}

export type QuotaDecision =
  | { decision: 'admitted'; mode: 'nominal' | 'borrowing'; borrowed: number }
  /** `ahead`: under fair share, the other team's request that goes first (it fits now; admission, and the reservation's re-check, wake it). */
  | { decision: 'queued'; reason: Reason; position: number; ahead?: string }
  | { decision: 'preempt'; victims: Victim[]; lostGpuSeconds: number; reason: Reason; position: number }
  | { decision: 'rejected'; reason: Reason };

const key = (t: { tenant: string; team: string }) => `${t.tenant}/${t.team}`;
const sum = (xs: readonly number[]) => xs.reduce(addGpus, 0);
/** Exhaustive search over victim sets up to this many candidates; greedy above (documented in 0013). */
export const EXHAUSTIVE_CANDIDATES = 12;

export function memberOf(cohort: Cohort | null, t: { tenant: string; team: string }): CohortMember | undefined {
  return cohort?.teams.find((m) => m.tenant === t.tenant && m.team === t.team);
}

/** GPUs each team of the state holds, by `tenant/team`. */
function usageByTeam(running: readonly Workload[]): Map<string, number> {
  const u = new Map<string, number>();
  for (const w of running) u.set(key(w), addGpus(u.get(key(w)) ?? 0, w.gpus));
  return u;
}

/** A team's dominant share in fair sharing: GPUs held divided by its weight. */
export function dominantShare(state: QuotaState, t: { tenant: string; team: string }): number {
  const used = usageByTeam(state.running).get(key(t)) ?? 0;
  return used / (memberOf(state.cohort, t)?.weight ?? 1);
}

/** The waiting order: priority (high first), dominant share (low first), age, task id. */
export function queueOrder(state: QuotaState, requests: readonly QuotaRequest[]): QuotaRequest[] {
  const share = new Map(requests.map((r) => [r.taskId, dominantShare(state, r)]));
  return [...requests].sort(
    (a, b) =>
      b.priority - a.priority || share.get(a.taskId)! - share.get(b.taskId)! || a.queuedAt.localeCompare(b.queuedAt) || a.taskId.localeCompare(b.taskId),
  );
}

/**
 * Does `usage` (GPUs per team, the request included) fit the quota? With a cohort: every team
 * within nominal + borrowingLimit, and what teams borrow covered by what the others lend of their
 * idle nominal quota (less what `asked` says they are waiting for).
 */
function fitsQuota(state: QuotaState, usage: Map<string, number>, asked: Map<string, number>): boolean {
  if (!state.cohort) return [...usage.values()].every((u) => u <= state.flat.quota);
  let borrowed = 0;
  let lendable = 0;
  for (const m of state.cohort.teams) {
    const u = usage.get(key(m)) ?? 0;
    if (m.borrowingLimit !== null && u > m.nominal + m.borrowingLimit) return false;
    borrowed += Math.max(0, u - m.nominal);
    const idle = Math.max(0, m.nominal - u - (asked.get(key(m)) ?? 0));
    lendable += Math.min(m.lendingLimit ?? m.nominal, idle);
  }
  // Usage of teams outside the cohort cannot be in `usage`; a request of one is decided flat.
  return borrowed <= lendable;
}

/** Can `gpus` be placed on one node once `freed` workloads are gone? True when nodes are unknown. */
function fitsNode(state: QuotaState, gpus: number, freed: readonly Workload[]): boolean {
  if (!state.nodes) return true;
  return state.nodes.some((n) => n.gpus - n.used + sum(freed.filter((w) => w.node === n.name).map((w) => w.gpus)) >= gpus);
}

/**
 * Quota admission of one request: admitted (within nominal or borrowing), queued (with the reason
 * and the request's position among the waiting), preempt (the victims to stop first), or rejected
 * (more than the team could ever hold).
 */
export function admitQuota(state: QuotaState, req: QuotaRequest): QuotaDecision {
  const member = memberOf(state.cohort, req);
  const cohort = member ? state.cohort : null;
  const s: QuotaState = { ...state, cohort };
  const policy = cohort ? (state.policy ?? `cohort ${cohort.name}`) : state.flat.policy;
  const team = key(req);
  const ordered = queueOrder(s, [...s.pending, req]);
  const position = ordered.findIndex((r) => r.taskId === req.taskId) + 1;

  // Never: more than the team could hold with everything else idle.
  const ceiling = member
    ? Math.min(
        member.borrowingLimit === null ? Infinity : member.nominal + member.borrowingLimit,
        member.nominal + sum(cohort!.teams.filter((m) => m !== member).map((m) => Math.min(m.lendingLimit ?? m.nominal, m.nominal))),
      )
    : s.flat.quota;
  const usage = usageByTeam(s.running);
  const held = usage.get(team) ?? 0;
  // A team in no cohort: the flat rule, the one reserve() applies again under the team's quota lock.
  const flat = member ? null : decideFlatQuota({ team: req.team, gpuType: s.gpuType, asked: req.gpus, inUse: held, quota: s.flat.quota, policy });
  if (flat?.code === ReasonCode.GpuQuotaExceeded) return { decision: 'rejected', reason: flat };
  if (member && req.gpus > ceiling) {
    return {
      decision: 'rejected',
      reason: reason(
        ReasonCode.GpuQuotaExceeded,
        `${req.gpus} ${s.gpuType} GPUs is above team ${req.team}'s quota ${ceiling} (nominal ${member.nominal} plus what it may borrow in cohort ${cohort!.name})`,
        ceiling,
        req.gpus,
        policy,
      ),
    };
  }

  const withReq = new Map(usage).set(team, addGpus(held, req.gpus));
  const borrows = member ? Math.max(0, addGpus(held, req.gpus) - member.nominal) - Math.max(0, held - member.nominal) : 0;
  // Quota other teams are waiting for (within their nominal) is not idle: it is not lent.
  const asked = new Map<string, number>();
  if (borrows > 0) for (const p of s.pending) if (key(p) !== team) asked.set(key(p), addGpus(asked.get(key(p)) ?? 0, p.gpus));

  if (member ? fitsQuota(s, withReq, asked) : flat === null) {
    if (borrows > 0) {
      // Fair share: a request ahead of this one, from another team, that fits now goes first.
      const ahead = ordered
        .slice(0, position - 1)
        .find((p) => key(p) !== team && fitsQuota(s, new Map(usage).set(key(p), addGpus(usage.get(key(p)) ?? 0, p.gpus)), new Map()));
      if (ahead) {
        return {
          decision: 'queued',
          position,
          ahead: ahead.taskId,
          reason: reason(
            ReasonCode.FairShareWait,
            `team ${req.team} would borrow ${borrows} ${s.gpuType} GPUs; ${ahead.taskId} of team ${ahead.team} comes first by priority and fair share`,
            null,
            req.gpus,
            policy,
          ),
        };
      }
    }
    return { decision: 'admitted', mode: borrows > 0 ? 'borrowing' : 'nominal', borrowed: borrows };
  }

  const busy = (message: string) => ({
    decision: 'queued' as const,
    position,
    reason: reason(ReasonCode.GpuQuotaBusy, message, ceiling - held, req.gpus, policy),
  });
  const describe = member
    ? `team ${req.team} holds ${held} ${s.gpuType} GPUs (nominal ${member.nominal}) and cohort ${cohort!.name} has no idle quota for ${req.gpus} more`
    : flat!.message;

  // Preemptions under way: wait for them rather than choose more victims.
  const inFlight = s.running.filter((w) => w.preempting);
  const settled = s.running.filter((w) => !w.preempting);
  if (inFlight.length > 0) {
    const after = usageByTeam(settled);
    if (fitsQuota(s, after.set(team, addGpus(after.get(team) ?? 0, req.gpus)), new Map())) {
      return {
        decision: 'queued',
        position,
        reason: reason(
          ReasonCode.PreemptionPending,
          `${describe}; waiting for ${inFlight.length} preempted workload(s) to free their GPUs`,
          null,
          req.gpus,
          policy,
        ),
      };
    }
  }

  const victims = chooseVictims(s, req, settled);
  if (victims === null) {
    const young =
      (s.minRunSeconds ?? 0) > 0
        ? preemptionCandidates({ ...s, minRunSeconds: 0 }, req, settled).filter((v) =>
            shielded(
              s,
              settled.find((w) => w.taskId === v.taskId)!,
            ),
          )
        : [];
    if (young.length === 0) return busy(describe);
    return busy(
      `${describe}; ${young.length} workload(s) it could preempt started less than ${s.minRunSeconds} s ago (preemption.minRunSeconds): ${young.map((v) => v.taskId).join(', ')}`,
    );
  }
  const lost = sum(victims.map((v) => v.lostGpuSeconds));
  return {
    decision: 'preempt',
    victims,
    lostGpuSeconds: lost,
    position,
    reason: reason(ReasonCode.PreemptionPending, `${describe}; preempting ${victims.map((v) => `${v.taskId} (${v.why})`).join(', ')}`, null, req.gpus, policy),
  };
}

/** The candidates a request may preempt: borrowers of its cohort (reclaim) and lower-priority work of its team. */
export function preemptionCandidates(state: QuotaState, req: QuotaRequest, running: readonly Workload[]): Victim[] {
  const member = memberOf(state.cohort, req);
  const usage = usageByTeam(running);
  const ownAfter = addGpus(usage.get(key(req)) ?? 0, req.gpus);
  const out: Victim[] = [];
  for (const w of running) {
    if (w.priority > req.priority) continue; // never a job of higher priority
    if (shielded(state, w)) continue; // too recently (re)started
    const v: Omit<Victim, 'why'> = {
      taskId: w.taskId,
      tenant: w.tenant,
      team: w.team,
      gpus: w.gpus,
      priority: w.priority,
      node: w.node,
      lostGpuSeconds: w.lostGpuSeconds,
    };
    if (key(w) === key(req)) {
      if (w.priority < req.priority) out.push({ ...v, why: 'priority' });
    } else if (member) {
      const other = memberOf(state.cohort, w);
      // Reclaim: only while the preemptor stays within its nominal quota and the victim's team borrows.
      if (other && (usage.get(key(w)) ?? 0) > other.nominal && ownAfter - ownLowerPriority(running, req) <= member.nominal) out.push({ ...v, why: 'reclaim' });
    }
  }
  return out;
}

/** Has the workload run less than the state's minRunSeconds since it last started or resumed? */
function shielded(state: QuotaState, w: Workload): boolean {
  return (state.minRunSeconds ?? 0) > 0 && w.runSeconds !== undefined && w.runSeconds < state.minRunSeconds!;
}

/** GPUs of the request's team held by lower-priority work it may preempt itself. */
function ownLowerPriority(running: readonly Workload[], req: QuotaRequest): number {
  return sum(running.filter((x) => key(x) === key(req) && x.priority < req.priority).map((x) => x.gpus));
}

/**
 * The victim set: valid (the request then fits quota and a node; each reclaim victim's team still
 * borrowed when it was taken), fewest GPU-seconds lost since the last checkpoints, then fewest
 * victims, then lowest priorities. Exhaustive over up to EXHAUSTIVE_CANDIDATES candidates; above
 * that, greedy (cheapest first, then drop what is not needed).
 */
export function chooseVictims(state: QuotaState, req: QuotaRequest, running: readonly Workload[]): Victim[] | null {
  const candidates = preemptionCandidates(state, req, running).sort(
    (a, b) => a.lostGpuSeconds - b.lostGpuSeconds || a.priority - b.priority || a.taskId.localeCompare(b.taskId),
  );
  if (candidates.length === 0) return null;
  const usage = usageByTeam(running);
  const valid = (set: readonly Victim[]): boolean => {
    const ids = new Set(set.map((v) => v.taskId));
    const after = usageByTeam(running.filter((w) => !ids.has(w.taskId)));
    after.set(key(req), addGpus(after.get(key(req)) ?? 0, req.gpus));
    if (!fitsQuota(state, after, new Map())) return false;
    // A reclaim victim is taken only while its team borrows: taking the largest of a team last, it still did.
    const byTeam = new Map<string, Victim[]>();
    for (const v of set) if (v.why === 'reclaim') byTeam.set(key(v), [...(byTeam.get(key(v)) ?? []), v]);
    for (const [t, vs] of byTeam) {
      const m = memberOf(state.cohort, vs[0]!)!;
      if ((usage.get(t) ?? 0) - sum(vs.map((v) => v.gpus)) + Math.max(...vs.map((v) => v.gpus)) <= m.nominal) return false;
    }
    const freed = running.filter((w) => ids.has(w.taskId));
    return state.fits ? state.fits(freed.map((w) => w.taskId)) : fitsNode(state, req.gpus, freed);
  };
  const cost = (set: readonly Victim[]) => [sum(set.map((v) => v.lostGpuSeconds)), set.length, sum(set.map((v) => v.priority))] as const;
  const better = (a: readonly Victim[], b: readonly Victim[] | null) => {
    if (b === null) return true;
    const [ca, cb] = [cost(a), cost(b)];
    return ca[0] < cb[0] || (ca[0] === cb[0] && (ca[1] < cb[1] || (ca[1] === cb[1] && ca[2] < cb[2])));
  };

  let best: Victim[] | null = null;
  if (candidates.length <= EXHAUSTIVE_CANDIDATES) {
    for (let mask = 1; mask < 1 << candidates.length; mask++) {
      const set = candidates.filter((_, i) => mask & (1 << i));
      if (better(set, best) && valid(set)) best = set;
    }
    return best;
  }
  const set: Victim[] = [];
  for (const c of candidates) {
    set.push(c);
    if (valid(set)) break;
  }
  if (!valid(set)) return null;
  for (const v of [...set].sort((a, b) => b.lostGpuSeconds - a.lostGpuSeconds)) {
    const without = set.filter((x) => x !== v);
    if (without.length > 0 && valid(without)) set.splice(set.indexOf(v), 1);
  }
  return set;
}

/** What a cluster backend reports of one GPU type: its nodes and the jobs holding its GPUs (cluster/backend.ts `capacity`). */
export interface ClusterCapacity {
  nodes: { name: string; gpus: number; used: number }[];
  /** Jobs holding GPUs of the type, with what suspending each now would lose since its checkpoint. */
  jobs: {
    taskId: string;
    node: string | null;
    gpus: number;
    lostSecondsIfSuspended: number;
    /** Job-seconds since it last started or resumed (policies.preemption.minRunSeconds shields young jobs). */
    runSeconds?: number;
  }[];
  /**
   * Given when `capacity` was asked about a request and the cluster can place in memory: whether
   * the request could be placed (gang, topology, sharing) once these tasks' jobs are gone.
   * Victim selection uses it, so the GPUs it frees form a domain the preemptor fits in.
   */
  fits?: (freedTaskIds: readonly string[]) => boolean;
}
