import { Context, log } from '@temporalio/activity';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { GovConfig } from '../config/load';
import { type OrphanVerdict, type WorkflowSight, orphanVerdict } from '../governance/reconcile';
import type { Db } from '../ledger/db';
import { type Reconciled, settleOrphan, unsettledTasks } from '../ledger/reconcile';
import { clusterTaskQueue } from '../config/task-queues';

/** Who the reconciler's audit rows and expired approvals name. */
export const RECONCILER_ACTOR = 'govloop-reconciler';

/** A task the reconciler will settle, with the Job to delete first (and the queue its cluster's dispatch worker serves). */
export interface Orphan {
  taskId: string;
  state: string;
  workflowStatus: string;
  runId: string | null;
  job: { name: string; cluster: string; dispatchQueue: string } | null;
}

export interface OrphanScan {
  /** Unsettled ledger tasks past the grace period that were looked at. */
  checked: number;
  orphans: Orphan[];
  /** How many were left alone, by why (running, in-grace, ...). */
  left: Record<string, number>;
}

/**
 * The reconciler's activities (workflows/reconciler.ts), thin over ledger/reconcile.ts (SQL) and
 * governance/reconcile.ts (the verdict). They ask Temporal about a task's workflow with the
 * worker's client, by workflow id alone: the latest run is the one that counts.
 */
export function createReconcileActivities(deps: { db: Db; config: GovConfig; cluster: string; dispatchQueue: string; clock: () => Date }) {
  const { db, config, clock } = deps;
  const graceMs = (graceSeconds?: number) => (graceSeconds ?? config.policies.reconcile.graceSeconds) * 1000;

  async function sight(taskId: string): Promise<WorkflowSight> {
    try {
      const d = await Context.current().client.workflow.getHandle(taskId).describe();
      return { found: true, status: d.status.name, runId: d.runId, closeTime: d.closeTime ?? null };
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return { found: false };
      throw err;
    }
  }

  const dispatchQueueOf = (cluster: string) => (cluster === deps.cluster ? deps.dispatchQueue : clusterTaskQueue(cluster));

  return {
    /** The unsettled tasks (of `tenant`, or all) whose workflow closed without settling them, oldest first (at most `limit`, default policies.reconcile.batch). */
    async findOrphans(input: { graceSeconds?: number; limit?: number; tenant?: string }): Promise<OrphanScan> {
      const now = clock();
      const grace = graceMs(input.graceSeconds);
      const rows = await unsettledTasks(db, {
        createdBefore: new Date(now.getTime() - grace),
        limit: input.limit ?? config.policies.reconcile.batch,
        ...(input.tenant !== undefined ? { tenant: input.tenant } : {}),
      });
      const out: OrphanScan = { checked: rows.length, orphans: [], left: {} };
      for (const row of rows) {
        Context.current().heartbeat(row.taskId);
        const wf = await sight(row.taskId);
        const v = orphanVerdict(row, wf, now, grace);
        if (v.verdict === 'leave') {
          out.left[v.why] = (out.left[v.why] ?? 0) + 1;
          continue;
        }
        out.orphans.push({
          taskId: row.taskId,
          state: row.state,
          workflowStatus: v.workflowStatus,
          runId: wf.found ? wf.runId : null,
          job: row.job ? { ...row.job, dispatchQueue: dispatchQueueOf(row.job.cluster) } : null,
        });
      }
      if (out.orphans.length > 0) log.warn('orphaned tasks found', { orphans: out.orphans.map((o) => `${o.taskId} (${o.workflowStatus})`) });
      return out;
    },

    /**
     * Settles one orphan. The workflow is described again and the verdict taken again on the row as
     * it is under its lock: a task that settled, or whose workflow was reset into a running run,
     * since findOrphans is left alone (null). A second call changes nothing.
     */
    async reconcileTask(input: { taskId: string; graceSeconds?: number }): Promise<Reconciled | null> {
      const wf = await sight(input.taskId);
      const now = clock();
      const r = await settleOrphan(db, { taskId: input.taskId, by: RECONCILER_ACTOR, runId: wf.found ? wf.runId : null }, (row) => {
        const v: OrphanVerdict = orphanVerdict(row, wf, now, graceMs(input.graceSeconds));
        return v.verdict === 'orphaned' ? v : null;
      });
      if (r) log.warn('task reconciled', { ...r });
      return r;
    },
  };
}
