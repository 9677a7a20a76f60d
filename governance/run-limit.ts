/**
 * The run limit a cluster job gets at each dispatch and resume (issue 15, decision 0024): how long
 * it may still run before the cluster itself stops it, so a task's caps hold however seldom govloop
 * polls. Pure: the activity feeds it the ledger's usage, the cluster's unmetered usage and the price.
 */

/** Micro-dollars kept back from the USD bound for the rounding of a charge (a cost is rounded to the micro once per price version). */
export const ROUNDING_MICROS = 1;

export interface RunLimitInput {
  caps: { maxUsd: number; maxGpuHours: number };
  /** What the task reserved (the most the ledger will charge its budgets); null: no reservation. */
  reservationMicros: number | null;
  /** GPUs the job's GPU-seconds count per second of run (MIG instances, shares count as the cluster meters them). */
  gpus: number;
  /** The plan's GPU price per GPU-second, in micro-dollars. */
  microsPerGpuSecond: number;
  /** Used so far, metered or not: GPU-seconds and cost in micro-dollars. */
  used: { gpuSeconds: number; costMicros: number };
  /** How late after its limit the cluster may still run the job (ClusterBackend.stopMarginSeconds). */
  stopMarginSeconds: number;
}

export type RunLimitCap = 'maxGpuHours' | 'maxUsd';

export interface RunLimitResult {
  /** Seconds of run time left, margin taken off; 0 when nothing is left (the job must not run). */
  maxRunSeconds: number;
  /** The cap that sets it. */
  binding: RunLimitCap;
}

/** The USD bound of a cluster task: the lower of maxUsd and what it reserved. */
export function usdCeilingMicros(caps: { maxUsd: number }, reservationMicros: number | null): number {
  const cap = Math.round(caps.maxUsd * 1e6);
  return reservationMicros === null ? cap : Math.min(cap, reservationMicros);
}

export function runLimit(x: RunLimitInput): RunLimitResult {
  const gpus = Math.max(x.gpus, 1e-9);
  const byHours = (x.caps.maxGpuHours * 3600 - x.used.gpuSeconds) / gpus;
  const perSecond = x.microsPerGpuSecond * gpus;
  const byUsd = perSecond > 0 ? (usdCeilingMicros(x.caps, x.reservationMicros) - x.used.costMicros) / perSecond : Infinity;
  const rounding = perSecond > 0 ? ROUNDING_MICROS / perSecond : 0;
  // A reservation priced from maxGpuHours ends where maxGpuHours does: the GPU-hour cap is named
  // unless the USD bound is shorter by more than the rounding micro.
  const binding: RunLimitCap = byUsd + rounding < byHours ? 'maxUsd' : 'maxGpuHours';
  const left = Math.min(byHours, byUsd - rounding) - x.stopMarginSeconds;
  return { maxRunSeconds: Number.isFinite(left) ? Math.max(0, left) : Number.MAX_SAFE_INTEGER, binding };
}

/**
 * Which cap a job stopped at its run limit ran into: the one that leaves the least, as `runLimit`
 * names it (the same cap dispatch named, unless a price changed in between).
 */
export function capReached(x: Omit<RunLimitInput, 'stopMarginSeconds'>): RunLimitCap {
  return runLimit({ ...x, stopMarginSeconds: 0 }).binding;
}
