/**
 * The ledger side of quotas and preemption: the state governance/quota.ts decides over, the
 * preemption records (who preempted whom, the work it lost), and the queue as operators see it.
 */
import type { Policies } from '../config/schema';
import { type ClusterCapacity, type Cohort, type QuotaRequest, type QuotaState, type Workload, memberOf, queueOrder } from '../governance/quota';
import type { Reason } from '../governance/reasons';
import { appendAudit } from './audit';
import type { Queryable } from './db';
import { GPU_HOLDING_STATES, PLAN_QUOTA_GPUS } from './tasks';
import { own } from '../governance/own';

/** States of a task that waits for quota (or capacity): the queue. */
export const QUEUED_STATES = ['Queued', 'Preempted'];
/**
 * Requests that wait for quota, as the guard against lending sees them: queued and preempted
 * tasks, and tasks between admission and reservation ('Admitting': a preemptor that was just
 * admitted holds no GPUs until it reserves; a borrower let in during that gap is preempted twice).
 */
export const WAITING_STATES = [...QUEUED_STATES, 'Admitting'];

/** The cohort a team is in for a GPU type, if any. */
export function cohortOf(policies: Policies, t: { tenant: string; team: string }, gpuType: string): Cohort | null {
  return policies.cohorts.find((c) => c.gpuType === gpuType && memberOf(c, t) !== undefined) ?? null;
}

/** The advisory-lock key that serializes quota decisions of one cohort (or one team with a flat quota). */
export function quotaLockKey(policies: Policies, t: { tenant: string; team: string }, gpuType: string): string {
  const c = cohortOf(policies, t, gpuType);
  return c ? `quota/cohort/${c.name}/${gpuType}` : `quota/${t.tenant}/${t.team}/${gpuType}`;
}

interface TaskGpuRow {
  task_id: string;
  tenant: string;
  team: string;
  priority: string;
  gpus: number;
  created_at: Date;
  state: string;
  reasons: Reason[];
}

async function gpuTasks(q: Queryable, teams: string[], gpuType: string, states: string[], except: string): Promise<TaskGpuRow[]> {
  const { rows } = await q.query<TaskGpuRow>(
    `SELECT t.task_id, a.tenant, a.team, t.priority, ${PLAN_QUOTA_GPUS} AS gpus, t.created_at, t.state, t.reasons
     FROM tasks t JOIN attributions a ON a.id = t.attribution_id
     WHERE (a.tenant || '/' || a.team) = ANY($1) AND t.plan->'gpu'->>'type' = $2 AND t.state = ANY($3)
       AND t.finished_at IS NULL AND t.task_id <> $4 AND (t.plan->'gpu'->>'count')::int > 0
     ORDER BY t.created_at, t.task_id`,
    [teams, gpuType, states, except],
  );
  return rows;
}

/**
 * The quota state of one request's cohort (or team, with a flat quota): the GPU-holding workloads
 * with their priority, node and the work preempting them would lose, and the other waiting requests.
 */
export async function quotaState(
  q: Queryable,
  policies: Policies,
  req: { taskId: string; tenant: string; team: string; gpuType: string },
  flat: { quota: number; policy: string },
  capacity?: ClusterCapacity,
  /** An open preemption older than this is taken as not carried out (the victim never got or took the signal). */
  staleAfterMs = 120_000,
): Promise<QuotaState> {
  const cohort = cohortOf(policies, req, req.gpuType);
  const teams = cohort ? cohort.teams.map((m) => `${m.tenant}/${m.team}`) : [`${req.tenant}/${req.team}`];
  const prio = (name: string) => own(policies.priorities, name) ?? 0;
  const holding = await gpuTasks(q, teams, req.gpuType, GPU_HOLDING_STATES, req.taskId);
  const open = await q.query<{ victim_task_id: string }>(
    `SELECT victim_task_id FROM preemptions WHERE suspended_at IS NULL AND victim_task_id = ANY($1) AND decided_at > now() - make_interval(secs => $2::float8 / 1000)`,
    [holding.map((r) => r.task_id), staleAfterMs],
  );
  const preempting = new Set(open.rows.map((r) => r.victim_task_id));
  const jobs = new Map((capacity?.jobs ?? []).map((j) => [j.taskId, j]));
  const running: Workload[] = holding.map((r) => {
    const j = jobs.get(r.task_id);
    return {
      taskId: r.task_id,
      tenant: r.tenant,
      team: r.team,
      gpus: r.gpus,
      priority: prio(r.priority),
      node: j?.node ?? null,
      lostGpuSeconds: j ? j.lostSecondsIfSuspended * j.gpus : 0,
      ...(preempting.has(r.task_id) ? { preempting: true } : {}),
      ...(j?.runSeconds !== undefined ? { runSeconds: j.runSeconds } : {}),
    };
  });
  const waiting = await gpuTasks(q, teams, req.gpuType, WAITING_STATES, req.taskId);
  const pending: QuotaRequest[] = waiting.map((r) => ({
    taskId: r.task_id,
    tenant: r.tenant,
    team: r.team,
    gpus: r.gpus,
    priority: prio(r.priority),
    queuedAt: r.created_at.toISOString(),
  }));
  return {
    gpuType: req.gpuType,
    cohort,
    flat,
    running,
    pending,
    ...(capacity ? { nodes: capacity.nodes } : {}),
    ...(capacity?.fits ? { fits: capacity.fits } : {}),
    ...(policies.preemption.minRunSeconds > 0 ? { minRunSeconds: policies.preemption.minRunSeconds } : {}),
    ...(cohort ? { policy: `policies/${policies.name}#cohorts[${cohort.name}]` } : {}),
  };
}

/**
 * The waiting tasks to wake now that `releasedTaskId` gave back its GPUs (it ended, or a
 * preemption suspended it): up to the GPUs it held, plus one, of the queued requests its quota can
 * go to. Its own team's first, then the rest of its cohort's (quota another team may borrow);
 * each group by priority (highest first), then age. Empty when the task held no GPUs of a type.
 * The woken tasks decide again (governance/quota.ts): a wake is a hint, never an admission.
 *
 * Only `Queued` and `Preempted` tasks: a task still in its first admission (`Admitting`) is not
 * signalled. Its workflow task then holds the submit's update while its ledger calls run, and a
 * signal arriving in that window made the SDK fail the workflow task, and the submit with it
 * (test/e2e/cluster-caps-cli.test.ts caught it). Such a task, answered queued, reads the quota
 * again once it is `Queued` (activities/admission.ts `passedBy`): room there means a release
 * passed it by, and it asks again after queueRetryMillis (config/task-queues.ts queuedWaitMillis).
 */
export async function tasksToWake(q: Queryable, policies: Policies, releasedTaskId: string): Promise<string[]> {
  const { rows } = await q.query<{ tenant: string; team: string; gpu_type: string | null; gpus: number }>(
    `SELECT a.tenant, a.team, t.plan->'gpu'->>'type' AS gpu_type, ${PLAN_QUOTA_GPUS} AS gpus
     FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE t.task_id = $1`,
    [releasedTaskId],
  );
  const r = rows[0];
  if (!r || !r.gpu_type || !(r.gpus > 0)) return [];
  const cohort = cohortOf(policies, r, r.gpu_type);
  const own = `${r.tenant}/${r.team}`;
  const teams = cohort ? cohort.teams.map((m) => `${m.tenant}/${m.team}`) : [own];
  // Priority names, highest first: array_position gives the rank; a name not in the policies sorts last.
  const ranked = Object.entries(policies.priorities)
    .sort((a, b) => b[1] - a[1])
    .map(([name]) => name);
  const woken = await q.query<{ task_id: string }>(
    `SELECT t.task_id FROM tasks t JOIN attributions a ON a.id = t.attribution_id
     WHERE (a.tenant || '/' || a.team) = ANY($1) AND t.plan->'gpu'->>'type' = $2 AND t.state = ANY($3)
       AND t.finished_at IS NULL AND t.task_id <> $4
     ORDER BY (a.tenant || '/' || a.team) = $5 DESC, array_position($6::text[], t.priority) NULLS LAST, t.created_at, t.task_id
     LIMIT $7`,
    [teams, r.gpu_type, QUEUED_STATES, releasedTaskId, own, ranked, Math.ceil(r.gpus) + 1],
  );
  return woken.rows.map((w) => w.task_id);
}

export interface PreemptionOrder {
  victimTaskId: string;
  preemptorTaskId: string | null;
  by: string;
  reason: string;
  preemptorTenant: string | null;
  preemptorTeam: string | null;
  gpuType: string | null;
  gpus: number;
}

/**
 * Opens a preemption of a task; one already open (a stale one the victim never carried out, since
 * quota decisions only choose victims without a fresh one) is re-issued in the new preemptor's name.
 */
export async function openPreemption(q: Queryable, p: PreemptionOrder): Promise<boolean> {
  const r = await q.query(
    `INSERT INTO preemptions (victim_task_id, round, preemptor_task_id, by, reason, preemptor_tenant, preemptor_team, gpu_type, gpus)
     SELECT $1, COALESCE(MAX(round), 0) + 1, $2, $3, $4, $5, $6, $7, $8 FROM preemptions WHERE victim_task_id = $1
     ON CONFLICT (victim_task_id) WHERE suspended_at IS NULL DO UPDATE SET decided_at = now(), preemptor_task_id = EXCLUDED.preemptor_task_id, by = EXCLUDED.by,
       reason = EXCLUDED.reason, preemptor_tenant = EXCLUDED.preemptor_tenant, preemptor_team = EXCLUDED.preemptor_team`,
    [p.victimTaskId, p.preemptorTaskId, p.by, p.reason, p.preemptorTenant, p.preemptorTeam, p.gpuType, p.gpus],
  );
  return (r.rowCount ?? 0) > 0;
}

/**
 * The victim is suspended: closes its open preemption (opening one first for an operator's
 * preemption), records the GPU-seconds it lost this time (cumulative lost minus what earlier rounds
 * recorded), moves the task to Preempted and audits it naming the preemptor. Idempotent.
 */
export async function closePreemption(
  q: Queryable,
  p: PreemptionOrder & { round: number; lostGpuSecondsTotal: number },
): Promise<{ round: number; lostGpuSeconds: number }> {
  await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`preempt/${p.victimTaskId}`]);
  // A retried close of a round already closed answers the same.
  const done = await q.query<{ lost_gpu_seconds: number }>(
    'SELECT lost_gpu_seconds FROM preemptions WHERE victim_task_id = $1 AND round = $2 AND suspended_at IS NOT NULL',
    [p.victimTaskId, p.round],
  );
  if (done.rows[0]) return { round: p.round, lostGpuSeconds: done.rows[0].lost_gpu_seconds };
  // An operator's preemption (or one whose order was lost) has no open row yet.
  await openPreemption(q, p);
  const row = (
    await q.query<{
      round: number;
      preemptor_task_id: string | null;
      by: string;
      reason: string;
      preemptor_tenant: string | null;
      preemptor_team: string | null;
    }>('SELECT round, preemptor_task_id, by, reason, preemptor_tenant, preemptor_team FROM preemptions WHERE victim_task_id = $1 AND suspended_at IS NULL', [
      p.victimTaskId,
    ])
  ).rows[0]!;
  const before = await q.query<{ lost: number }>(
    'SELECT COALESCE(SUM(lost_gpu_seconds), 0)::float8 AS lost FROM preemptions WHERE victim_task_id = $1 AND round < $2',
    [p.victimTaskId, row.round],
  );
  const lost = Math.max(0, p.lostGpuSecondsTotal - before.rows[0]!.lost);
  await q.query('UPDATE preemptions SET suspended_at = now(), lost_gpu_seconds = $3 WHERE victim_task_id = $1 AND round = $2', [
    p.victimTaskId,
    row.round,
    lost,
  ]);
  await q.query(`UPDATE tasks SET state = 'Preempted' WHERE task_id = $1 AND finished_at IS NULL`, [p.victimTaskId]);
  await appendAudit(q, {
    actor: row.by,
    taskId: p.victimTaskId,
    action: 'preempt',
    decision: 'suspended',
    detail: {
      round: row.round,
      preemptor: row.preemptor_task_id,
      preemptorTeam: row.preemptor_team ? `${row.preemptor_tenant}/${row.preemptor_team}` : null,
      reason: row.reason,
      lostGpuSeconds: lost,
    },
    dedupeKey: `${p.victimTaskId}:preempt:${row.round}`,
  });
  return { round: row.round, lostGpuSeconds: lost };
}

export interface QueuedTask {
  taskId: string;
  tenant: string;
  team: string;
  project: string;
  priority: string;
  state: string;
  gpus: number;
  gpuType: string | null;
  queuedAt: string;
  /** 1-based place among the requests waiting for the same quota (cohort or team, GPU type). */
  position: number;
  reasons: Reason[];
}

/** The queue, oldest first, each task with its position among those waiting for the same quota and why it waits. */
export async function queuedTasks(q: Queryable, policies: Policies, tenant?: string): Promise<QueuedTask[]> {
  const { rows } = await q.query<TaskGpuRow & { project: string; gpu_type: string | null }>(
    `SELECT t.task_id, a.tenant, a.team, a.project, t.priority, ${PLAN_QUOTA_GPUS} AS gpus, t.plan->'gpu'->>'type' AS gpu_type,
            t.created_at, t.state, t.reasons
     FROM tasks t JOIN attributions a ON a.id = t.attribution_id
     WHERE t.state = ANY($1) AND t.finished_at IS NULL AND ($2::text IS NULL OR a.tenant = $2)
     ORDER BY t.created_at, t.task_id`,
    [QUEUED_STATES, tenant ?? null],
  );
  const groups = new Map<string, { state: QuotaState | null; requests: QuotaRequest[] }>();
  const groupOf = (r: (typeof rows)[number]) => (r.gpu_type && r.gpus > 0 ? quotaLockKey(policies, r, r.gpu_type) : `tenant/${r.tenant}`);
  for (const r of rows) {
    const g = groupOf(r);
    if (!groups.has(g)) {
      const state =
        r.gpu_type && r.gpus > 0
          ? await quotaState(q, policies, { taskId: '', tenant: r.tenant, team: r.team, gpuType: r.gpu_type }, { quota: 0, policy: '' })
          : null;
      groups.set(g, { state, requests: [] });
    }
    groups.get(g)!.requests.push({
      taskId: r.task_id,
      tenant: r.tenant,
      team: r.team,
      gpus: r.gpus,
      priority: own(policies.priorities, r.priority) ?? 0,
      queuedAt: r.created_at.toISOString(),
    });
  }
  const position = new Map<string, number>();
  for (const { state, requests } of groups.values()) {
    const ordered = state ? queueOrder(state, requests) : requests;
    ordered.forEach((r, i) => position.set(r.taskId, i + 1));
  }
  return rows.map((r) => ({
    taskId: r.task_id,
    tenant: r.tenant,
    team: r.team,
    project: r.project,
    priority: r.priority,
    state: r.state,
    gpus: r.gpus,
    gpuType: r.gpu_type,
    queuedAt: r.created_at.toISOString(),
    position: position.get(r.task_id) ?? 0,
    reasons: r.reasons,
  }));
}

export interface PreemptionLoss {
  preemptorTeam: string;
  preemptions: number;
  lostGpuHours: number;
}

/** Work lost to preemption, by the team that preempted (`operator:<user>` for an operator's). */
export async function preemptionLosses(q: Queryable, tenant?: string): Promise<PreemptionLoss[]> {
  const { rows } = await q.query<{ team: string; n: number; lost: number }>(
    `SELECT COALESCE(preemptor_tenant || '/' || preemptor_team, 'operator:' || by) AS team, COUNT(*)::int AS n, SUM(lost_gpu_seconds)::float8 AS lost
     FROM preemptions WHERE suspended_at IS NOT NULL AND ($1::text IS NULL OR preemptor_tenant = $1)
     GROUP BY 1 ORDER BY 1`,
    [tenant ?? null],
  );
  return rows.map((r) => ({ preemptorTeam: r.team, preemptions: r.n, lostGpuHours: r.lost / 3600 }));
}
