import type { Intent } from '../governance/intent';
import type { Plan } from '../governance/plan';
import type { Reason } from '../governance/reasons';
import { attributionId } from './attribution';
import type { Queryable } from './db';

/** States in which a task holds GPUs of its team's quota. */
export const GPU_HOLDING_STATES = ['Reserved', 'Dispatched', 'Running'];

export async function upsertTask(q: Queryable, t: { taskId: string; intent: Intent; requester: string; state: string; runId?: string }): Promise<void> {
  const attr = await attributionId(q, t.intent.attribution);
  await q.query(
    `INSERT INTO tasks (task_id, kind, name, attribution_id, requester, priority, state, intent, run_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (task_id) DO NOTHING`,
    [t.taskId, t.intent.kind, t.intent.name, attr, t.requester, t.intent.priority, t.state, t.intent, t.runId ?? null],
  );
}

/**
 * Whose is this task id? `mine`: no row yet, or the row of this workflow run (a retried or repeated
 * admission). `reused`: the row belongs to another run — one still open, or one that closed (rows
 * from before run ids were kept count as another run once finished). Locks the row.
 */
export async function taskOwnership(
  q: Queryable,
  taskId: string,
  runId: string,
): Promise<{ owner: 'mine' | 'reused'; requester: string | null; runId: string | null }> {
  const { rows } = await q.query<{ run_id: string | null; finished_at: Date | null; requester: string }>(
    'SELECT run_id, finished_at, requester FROM tasks WHERE task_id = $1 FOR UPDATE',
    [taskId],
  );
  const r = rows[0];
  if (!r) return { owner: 'mine', requester: null, runId: null };
  if (r.run_id === runId) return { owner: 'mine', requester: r.requester, runId };
  if (r.run_id === null && r.finished_at === null) {
    // A run admitted before run ids were kept, still open: it is this one coming back (after a preemption).
    await q.query('UPDATE tasks SET run_id = $2 WHERE task_id = $1', [taskId, runId]);
    return { owner: 'mine', requester: r.requester, runId };
  }
  return { owner: 'reused', requester: r.requester, runId: r.run_id };
}

const UPDATE_TASK = `UPDATE tasks SET state = COALESCE($2, state), decision = COALESCE($3, decision), reasons = COALESCE($4, reasons),
       plan = COALESCE($5, plan), finished_at = CASE WHEN $6 THEN COALESCE(finished_at, now()) ELSE finished_at END
     WHERE task_id = $1`;

/**
 * Updates a task's row. A task that finishes with a preemption still open (its job ended first:
 * PREEMPT_TOO_LATE, or it was cancelled or failed meanwhile) closes that preemption as dropped, in
 * the same statement: it was never carried out, and cost its preemptor's team nothing.
 */
export async function updateTask(
  q: Queryable,
  taskId: string,
  patch: { state?: string; decision?: string; reasons?: Reason[]; plan?: Plan; finished?: boolean },
): Promise<void> {
  await q.query(
    patch.finished
      ? `WITH dropped AS (UPDATE preemptions SET dropped_at = now() WHERE victim_task_id = $1 AND suspended_at IS NULL AND dropped_at IS NULL) ${UPDATE_TASK}`
      : UPDATE_TASK,
    [taskId, patch.state ?? null, patch.decision ?? null, patch.reasons ? JSON.stringify(patch.reasons) : null, patch.plan ?? null, patch.finished ?? false],
  );
}

/**
 * A task's GPUs as quota counts them (governance/plan.ts `quotaGpus`: a share by its fraction, a
 * MIG instance by its slices), as SQL over `tasks t`; plans stored before `quotaGpus` count `count`.
 */
export const PLAN_QUOTA_GPUS = `COALESCE((t.plan->'gpu'->>'quotaGpus')::float8, (t.plan->'gpu'->>'count')::float8, 0)`;

/** GPUs of one type a team holds now (as quota counts them), not counting `exceptTask`. */
export async function teamGpusInUse(q: Queryable, tenant: string, team: string, gpuType: string, exceptTask: string): Promise<number> {
  const { rows } = await q.query<{ n: number }>(
    `SELECT COALESCE(SUM(${PLAN_QUOTA_GPUS}), 0)::float8 AS n
     FROM tasks t JOIN attributions a ON a.id = t.attribution_id
     WHERE a.tenant = $1 AND a.team = $2 AND t.plan->'gpu'->>'type' = $3 AND t.state = ANY($4) AND t.finished_at IS NULL AND t.task_id <> $5`,
    [tenant, team, gpuType, GPU_HOLDING_STATES, exceptTask],
  );
  return rows[0]?.n ?? 0;
}

export interface TaskRow {
  taskId: string;
  kind: string;
  name: string;
  state: string;
  decision: string | null;
  costUsd: number;
  tenant: string;
  team: string;
  project: string;
}

export async function getTask(q: Queryable, taskId: string): Promise<TaskRow | undefined> {
  const { rows } = await q.query(
    `SELECT t.task_id, t.kind, t.name, t.state, t.decision, t.cost_micros, a.tenant, a.team, a.project
     FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE t.task_id = $1`,
    [taskId],
  );
  const r = rows[0];
  return (
    r && {
      taskId: r.task_id,
      kind: r.kind,
      name: r.name,
      state: r.state,
      decision: r.decision,
      costUsd: r.cost_micros / 1e6,
      tenant: r.tenant,
      team: r.team,
      project: r.project,
    }
  );
}
