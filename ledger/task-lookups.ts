import type { Queryable } from './db';

/**
 * Single reads about one task that the activities need next to the task's own row
 * (ledger/tasks.ts): when it was submitted, whose it is, what it reserved, which job it ran under,
 * and whether govloop itself ordered it stopped.
 */

/** When the task was first recorded (its place in the queue), or null before it is. */
export async function taskCreatedAt(q: Queryable, taskId: string): Promise<Date | null> {
  const r = await q.query<{ created_at: Date }>('SELECT created_at FROM tasks WHERE task_id = $1', [taskId]);
  return r.rows[0]?.created_at ?? null;
}

/** The tenant and team a task is attributed to, or null for an unknown task. */
export async function taskTeam(q: Queryable, taskId: string): Promise<{ tenant: string; team: string } | null> {
  const r = await q.query<{ tenant: string; team: string }>(
    'SELECT a.tenant, a.team FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE t.task_id = $1',
    [taskId],
  );
  return r.rows[0] ?? null;
}

/** What a task reserved (the most its budgets are charged), or null when it holds no reservation row. */
export async function reservedMicros(q: Queryable, taskId: string): Promise<number | null> {
  const r = await q.query<{ amount_micros: number }>('SELECT amount_micros FROM reservations WHERE task_id = $1', [taskId]);
  return r.rows[0] ? Number(r.rows[0].amount_micros) : null;
}

/** The job name a task was dispatched under, from its dispatch audit row; null before its first dispatch. */
export async function dispatchedJob(q: Queryable, taskId: string): Promise<string | null> {
  const r = await q.query<{ job: string | null }>("SELECT detail->>'job' AS job FROM audit_log WHERE dedupe_key = $1", [`${taskId}:dispatch`]);
  return r.rows[0]?.job ?? null;
}

/** Did a budget controller order the task stopped (its ladder's preempt step named it)? */
export async function budgetPreemptOrdered(q: Queryable, taskId: string): Promise<boolean> {
  const r = await q.query('SELECT 1 FROM ladder_events WHERE action = $1', [`preempt:${taskId}`]);
  return Boolean(r.rowCount);
}

/** Is a quota preemption of the task for `preemptor` open (ordered, the victim not suspended yet)? */
export async function quotaPreemptionOpen(q: Queryable, taskId: string, preemptor: string): Promise<boolean> {
  const r = await q.query('SELECT 1 FROM preemptions WHERE victim_task_id = $1 AND preemptor_task_id = $2 AND suspended_at IS NULL', [taskId, preemptor]);
  return Boolean(r.rowCount);
}
