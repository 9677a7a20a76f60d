/**
 * Task-queue names (constants, house style 15) and the Timing admission hands the workflow. Pure,
 * so workflow code (workflows/messages.ts re-exports them) and activities can both import them.
 */
export const TASK_QUEUE_CONTROL = 'govloop-control';
export const clusterTaskQueue = (cluster: string) => `govloop-cluster-${cluster}`;

/** How the workflow paces itself and where it sends cluster work; decided by the worker's config. */
export interface Timing {
  pollMillis: number;
  queueRetryMillis: number;
  /**
   * How long a task queued for GPU quota waits, at the head of its queue, before it asks again
   * unwoken (absent in older histories: queueRetryMillis). Released GPUs wake the tasks they can go
   * to (the requeue signal); this recheck only covers a wake that never came.
   */
  queueRecheckMillis?: number;
  dispatchQueue: string;
  /** Retry policy of compensations (absent in histories from before agent rollback). */
  compensation?: { maxAttempts: number; initialIntervalMs: number };
  /** How long a preempted job has to checkpoint before it is suspended (absent in older histories). */
  preemptGraceMillis?: number;
  /** Tries per ledger and cluster call before the task asks an operator (absent in older histories: the workflow's defaults). */
  retries?: { ledgerMaxAttempts: number; clusterMaxAttempts: number };
  /** History length at which the task continues as new (absent in older histories: the workflow's default). */
  continueAsNewEvents?: number;
}

/** Reasons that mean "waiting for GPU quota": a release wakes such a task (ledger/quota.ts tasksToWake). */
export const QUOTA_WAIT_CODES: readonly string[] = ['GPU_QUOTA_BUSY', 'FAIR_SHARE_WAIT'];

/** The task waits for GPU quota alone: there is a reason, and every one is a QUOTA_WAIT_CODES one. */
export const waitsForQuota = (reasons: readonly { code: string }[]): boolean => reasons.length > 0 && reasons.every((r) => QUOTA_WAIT_CODES.includes(r.code));

/**
 * How long a queued task waits before it asks again unwoken. Waiting for quota (every reason a
 * QUOTA_WAIT_CODES one), the recheck grows with the task's place in its queue: one recheck
 * interval for the first ten places, two for the next ten, and so on, at most ten intervals. The
 * task is woken sooner when GPUs it could take are released. Waiting for anything else (a budget
 * ladder at its queue step, an open preemption), it asks again after queueRetryMillis as before.
 *
 * `visible`: no release can have passed the task by. Either the ledger showed it as queued
 * (`Queued`, `Preempted`) for the whole ask, so a release during the ask woke it (ledger/quota.ts
 * tasksToWake), or admitTask read the quota again after committing its `queued` answer and found
 * no room (`passedBy: false`). Otherwise (a release came during its first ask; or it was admitted
 * and then refused by the reservation's re-check) it asks again after queueRetryMillis.
 */
export function queuedWaitMillis(timing: Timing, reasons: readonly { code: string }[], visible: boolean, position?: number): number {
  const recheck = timing.queueRecheckMillis;
  if (!visible || recheck === undefined || !waitsForQuota(reasons)) return timing.queueRetryMillis;
  const tens = Math.min(10, Math.max(1, Math.ceil((position ?? 1) / 10)));
  return Math.max(timing.queueRetryMillis, recheck * tens);
}
