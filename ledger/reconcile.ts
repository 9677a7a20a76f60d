/**
 * The ledger side of the reconciler (workflows/reconciler.ts): tasks that still hold something,
 * and settling one whose workflow closed without settling it (governance/reconcile.ts decides).
 */
import type { UnsettledTask } from '../governance/reconcile';
import type { Reason } from '../governance/reasons';
import { appendAudit } from './audit';
import { releaseIn } from './budgets';
import type { Db, Queryable } from './db';
import { updateTask } from './tasks';
import { taskUsage } from './usage';

export interface UnsettledRow extends UnsettledTask {
  kind: string;
  tenant: string;
  /** The Job it was dispatched as, and on which cluster (its dispatch audit row); null when never dispatched. */
  job: { name: string; cluster: string } | null;
}

const UNSETTLED_SQL = `
  SELECT t.task_id, t.kind, t.state, t.created_at, t.finished_at IS NOT NULL AS finished, r.remaining_micros AS held_micros, a.tenant,
         d.detail->>'job' AS job, d.detail->>'cluster' AS cluster
  FROM tasks t
  JOIN attributions a ON a.id = t.attribution_id
  LEFT JOIN reservations r ON r.task_id = t.task_id AND r.state = 'held'
  LEFT JOIN audit_log d ON d.dedupe_key = t.task_id || ':dispatch'`;

interface Raw {
  task_id: string;
  kind: string;
  state: string;
  created_at: Date;
  finished: boolean;
  held_micros: number | null;
  tenant: string;
  job: string | null;
  cluster: string | null;
}

const toRow = (r: Raw): UnsettledRow => ({
  taskId: r.task_id,
  kind: r.kind,
  state: r.state,
  createdAt: r.created_at,
  finished: r.finished,
  heldMicros: r.held_micros,
  tenant: r.tenant,
  job: r.job && r.cluster ? { name: r.job, cluster: r.cluster } : null,
});

/**
 * Tasks not finished, or finished with a reservation still held, created before `createdBefore`
 * (younger ones are in the grace period whatever their workflow says), of one tenant or all,
 * oldest first, at most `limit`: a pass takes the oldest and the next pass the rest.
 */
export async function unsettledTasks(q: Queryable, opts: { createdBefore: Date; limit: number; tenant?: string }): Promise<UnsettledRow[]> {
  const { rows } = await q.query<Raw>(
    `${UNSETTLED_SQL}
     WHERE (t.finished_at IS NULL OR r.task_id IS NOT NULL) AND t.created_at < $1 AND ($3::text IS NULL OR a.tenant = $3)
     ORDER BY t.created_at, t.task_id LIMIT $2`,
    [opts.createdBefore, opts.limit, opts.tenant ?? null],
  );
  return rows.map(toRow);
}

/** One task as unsettledTasks() sees it (null: no such task), read under a row lock when `lock`. */
export async function unsettledTask(q: Queryable, taskId: string, lock = false): Promise<UnsettledRow | null> {
  const { rows } = await q.query<Raw>(`${UNSETTLED_SQL} WHERE t.task_id = $1${lock ? ' FOR UPDATE OF t' : ''}`, [taskId]);
  return rows[0] ? toRow(rows[0]) : null;
}

export interface Reconciled {
  taskId: string;
  kind: string;
  tenant: string;
  previousState: string;
  state: 'Failed' | 'Cancelled';
  workflowStatus: string;
  costUsd: number;
  releasedUsd: number;
  gpuSeconds: number;
  job: string | null;
}

/**
 * Settles an orphaned task in one transaction, the way its workflow would have: what was metered
 * stays charged (usage moved it from reserved to spent when it was recorded; nothing is added),
 * what is left of the reservation is released, pending approvals expire, and the task moves to
 * its final state, which also frees its GPU quota (quota counts tasks in GPU_HOLDING_STATES). One
 * `task.reconciled` audit row. `stillOrphaned` runs under the row lock, on the row as it is then:
 * null when the task settled meanwhile or is no longer to be touched, and nothing is written.
 */
export async function settleOrphan(
  db: Db,
  input: { taskId: string; by: string; runId: string | null },
  stillOrphaned: (row: UnsettledRow) => { state: 'Failed' | 'Cancelled'; reason: Reason; workflowStatus: string } | null,
): Promise<Reconciled | null> {
  return db.tx(async (c) => {
    const row = await unsettledTask(c, input.taskId, true);
    if (!row || (row.finished && row.heldMicros === null)) return null;
    const verdict = stillOrphaned(row);
    if (!verdict) return null;
    const released = await releaseIn(c, input.taskId);
    const usage = await taskUsage(c, input.taskId);
    const expired = await c.query<{ approval_id: string }>(
      `UPDATE approvals SET state = 'expired', decided_by = $2, decided_at = now(), reason = $3 WHERE task_id = $1 AND state = 'pending' RETURNING approval_id`,
      [input.taskId, input.by, `task reconciled: ${verdict.reason.message}`],
    );
    await updateTask(c, input.taskId, { state: verdict.state, finished: true, reasons: [verdict.reason] });
    const out: Reconciled = {
      taskId: input.taskId,
      kind: row.kind,
      tenant: row.tenant,
      previousState: row.state,
      state: verdict.state,
      workflowStatus: verdict.workflowStatus,
      costUsd: usage.costMicros / 1e6,
      releasedUsd: released / 1e6,
      gpuSeconds: usage.gpuSeconds,
      job: row.job?.name ?? null,
    };
    await appendAudit(c, {
      actor: input.by,
      taskId: input.taskId,
      action: 'task.reconciled',
      decision: verdict.state,
      detail: { ...out, runId: input.runId, expiredApprovals: expired.rows.map((r) => r.approval_id), reason: verdict.reason },
      dedupeKey: `${input.taskId}:reconciled`,
    });
    return out;
  });
}
