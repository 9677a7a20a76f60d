import type { Queryable } from './db';

/** One compensation of a side-effecting step (the saga's undo), as recorded after each attempt. */
export interface CompensationRecord {
  taskId: string;
  seq: number;
  tool: string;
  compensation: string;
  args: unknown;
  state: 'done' | 'failed';
  attempts: number;
  error: string | null;
}

/** Records an attempt at undoing step `seq` of a task; the row per (task, step) keeps the latest. */
export async function upsertCompensation(q: Queryable, r: CompensationRecord): Promise<void> {
  await q.query(
    `INSERT INTO compensations (task_id, seq, tool, compensation, args, state, attempts, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (task_id, seq) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts, error = EXCLUDED.error, updated_at = now()`,
    [r.taskId, r.seq, r.tool, r.compensation, JSON.stringify(r.args ?? null), r.state, r.attempts, r.error],
  );
}

/** Was step `seq` of the task undone already? */
export async function isCompensated(q: Queryable, taskId: string, seq: number): Promise<boolean> {
  const done = await q.query("SELECT 1 FROM compensations WHERE task_id = $1 AND seq = $2 AND state = 'done'", [taskId, seq]);
  return Boolean(done.rowCount);
}
