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
