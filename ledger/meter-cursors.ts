import type { Queryable } from './db';

/**
 * Moves a task's cursor for one meter up to the cluster's cumulative counter and answers where it
 * stood before (`metered`; the cursor does not move when the counter is not past it). Called in the
 * transaction that records the usage in between, so the cursor moves exactly when that usage is
 * charged: a retried observation meters nothing twice. The cursor row is locked until then.
 */
export async function advanceMeterCursor(q: Queryable, taskId: string, meter: string, cumulative: number): Promise<{ metered: number }> {
  await q.query('INSERT INTO meter_cursors (task_id, meter, metered) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING', [taskId, meter]);
  const cur = await q.query<{ metered: number }>('SELECT metered FROM meter_cursors WHERE task_id = $1 AND meter = $2 FOR UPDATE', [taskId, meter]);
  const metered = cur.rows[0]!.metered;
  if (cumulative > metered) await q.query('UPDATE meter_cursors SET metered = $3 WHERE task_id = $1 AND meter = $2', [taskId, meter, cumulative]);
  return { metered };
}
