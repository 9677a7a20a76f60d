import { type Reason, ReasonCode } from './reasons';

/**
 * Is a ledger task orphaned? Its row still holds something (not finished, or a reservation still
 * held) while no workflow will ever settle it: the workflow was terminated by hand, timed out,
 * failed, was cancelled, or completed without the ledger agreeing — or it is gone (past the
 * namespace's retention). Pure: the reconciler's activities read the row and describe the
 * workflow (by id, without a run id: the latest run, so a task that continued as new, or was
 * reset into a new run, is judged by the run that is alive), and settle what this calls orphaned.
 */

/** Temporal's names of a workflow execution's status (WorkflowExecutionStatusName of @temporalio/client). */
export type WorkflowStatusName =
  'UNSPECIFIED' | 'RUNNING' | 'COMPLETED' | 'FAILED' | 'CANCELLED' | 'TERMINATED' | 'CONTINUED_AS_NEW' | 'TIMED_OUT' | 'PAUSED' | 'UNKNOWN';

/** What Temporal said about the task's workflow id: its latest run, or that there is none. */
export type WorkflowSight = { found: true; status: WorkflowStatusName; runId: string; closeTime: Date | null } | { found: false };

export interface UnsettledTask {
  taskId: string;
  state: string;
  createdAt: Date;
  finished: boolean;
  /** What is left of its reservation while held; null when none is held. */
  heldMicros: number | null;
}

export type OrphanVerdict =
  | { verdict: 'orphaned'; state: 'Failed' | 'Cancelled'; reason: Reason; workflowStatus: WorkflowStatusName | 'NOT_FOUND' }
  | { verdict: 'leave'; why: 'settled' | 'running' | 'in-grace' | 'unknown-status' };

/** Closed statuses after which no run of the workflow will settle the task. */
const CLOSED: ReadonlySet<WorkflowStatusName> = new Set(['COMPLETED', 'FAILED', 'CANCELLED', 'TERMINATED', 'TIMED_OUT']);

/**
 * `graceMs`: how long a closed workflow (or, when it is gone, the row) must be left alone first.
 * An operator who terminated a run by hand has that long to reset it into a new one, which the
 * reconciler then leaves to settle itself.
 */
export function orphanVerdict(task: UnsettledTask, wf: WorkflowSight, now: Date, graceMs: number): OrphanVerdict {
  if (task.finished && task.heldMicros === null) return { verdict: 'leave', why: 'settled' };
  if (wf.found && (wf.status === 'RUNNING' || wf.status === 'PAUSED' || wf.status === 'CONTINUED_AS_NEW')) return { verdict: 'leave', why: 'running' };
  if (wf.found && !CLOSED.has(wf.status)) return { verdict: 'leave', why: 'unknown-status' };
  const since = wf.found ? (wf.closeTime ?? task.createdAt) : task.createdAt;
  if (now.getTime() - since.getTime() < graceMs || now.getTime() - task.createdAt.getTime() < graceMs) return { verdict: 'leave', why: 'in-grace' };
  const status = wf.found ? wf.status : 'NOT_FOUND';
  const state = status === 'CANCELLED' ? 'Cancelled' : 'Failed';
  const what: Record<typeof status, string> = {
    NOT_FOUND: 'its workflow is gone (past retention, or never started in this namespace)',
    COMPLETED: 'its workflow completed without settling it',
    FAILED: 'its workflow failed',
    CANCELLED: 'its workflow was cancelled',
    TERMINATED: 'its workflow was terminated',
    TIMED_OUT: 'its workflow timed out',
  } as Record<typeof status, string>;
  const run = wf.found ? ` (run ${wf.runId})` : '';
  return {
    verdict: 'orphaned',
    state,
    workflowStatus: status,
    reason: {
      code: ReasonCode.Reconciled,
      message: `settled by the reconciler: ${what[status]}${run} while the task was ${task.state}; charged what was metered, the rest released`,
      limit: null,
      requested: status,
      policy: 'policies#reconcile',
    },
  };
}
