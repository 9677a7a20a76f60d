import type { GovConfig } from '../config/load';
import type { LadderStep } from '../governance/ladder';
import { type ObjectiveResult, OBJECTIVES, type Slo, costObjective, latencyObjective, sloLabel, successObjective } from '../governance/slo';
import { appendAudit } from './audit';
import type { Queryable } from './db';

/**
 * SLOs measured from the ledger (decision 0026): step latencies from agent_steps, queue waits from
 * tasks and their reservation's audit row, success and cost from finished tasks.
 */

/** One agent step as the step gate decided it (idempotent by task and seq). */
export async function recordStep(
  q: Queryable,
  s: { taskId: string; seq: number; decision: 'allow' | 'degrade' | 'deny'; model: string | null; latencyMs: number | null; gateMs: number; at: Date },
): Promise<void> {
  await q.query(
    `INSERT INTO agent_steps (task_id, seq, decision, model, latency_ms, gate_ms, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (task_id, seq) DO NOTHING`,
    [s.taskId, s.seq, s.decision, s.model, s.latencyMs, Math.max(0, s.gateMs), s.at],
  );
}

/**
 * The ladder would have degraded a step of an SLO's use case, and the SLO's forbidsFallback held it
 * on its primary model: one ladder_events row per budget window, crossing, step and SLO (action
 * `slo-hold:<scope>`), with an audit row beside it. Returns whether this was the first such row.
 */
export async function recordSloHold(
  q: Queryable,
  h: { budgetId: number; window: string; step: LadderStep; sharePct: number; slo: string; taskId: string; scope: string },
): Promise<boolean> {
  const reason = `SLO ${h.slo} forbids the fallback model: not degraded at ${h.step}; degraded no earlier than the queue step`;
  const r = await q.query<{ crossing: number }>(
    `INSERT INTO ladder_events (budget_id, window_key, crossing, step, action, share_pct, detail)
     SELECT $1, $2, COALESCE(MAX(crossing), 0), $3, $4, $5, $6 FROM ladder_events WHERE budget_id = $1 AND window_key = $2
     ON CONFLICT DO NOTHING RETURNING crossing`,
    [h.budgetId, h.window, h.step, `slo-hold:${h.slo}`, h.sharePct, { slo: h.slo, taskId: h.taskId, reason }],
  );
  if (!r.rowCount) return false;
  await appendAudit(q, {
    actor: 'govloop',
    taskId: h.taskId,
    action: 'slo.hold',
    decision: 'not-degraded',
    detail: { slo: h.slo, budget: `${h.scope}:${h.window}`, step: h.step, sharePct: Math.round(h.sharePct * 100) / 100, reason },
    dedupeKey: `slo-hold:${h.budgetId}:${h.window}:${r.rows[0]!.crossing}:${h.step}:${h.slo}`,
  });
  return true;
}

/** One SLO as measured now. */
export interface SloReport {
  slo: string;
  scope: Slo['scope'];
  windowDays: number;
  from: string;
  to: string;
  forbidsFallback: boolean;
  objectives: ObjectiveResult[];
  /** Every objective with samples is met (null: no objective has samples). */
  met: boolean | null;
}

const SCOPE = `a.tenant = $1 AND ($2::text IS NULL OR a.team = $2) AND ($3::text IS NULL OR a.use_case = $3)`;

/**
 * Measures every configured SLO (or those of `tenants`) over its window ending at `now`.
 *  - step / gate latency: agent_steps of the scope's tasks recorded in the window;
 *  - queue wait: tasks submitted in the window, from submission (tasks.created_at) to their
 *    reservation (the `reserve` audit row, decision held); a task still Queued counts its wait so far;
 *  - success rate and cost per task: tasks finished in the window as Succeeded, Failed or
 *    CapExceeded (rejected and cancelled tasks are neither; cancelled ones count for cost).
 */
export async function measureSlos(q: Queryable, config: Pick<GovConfig, 'policies'>, now: Date, opts: { tenants?: string[] } = {}): Promise<SloReport[]> {
  const out: SloReport[] = [];
  for (const slo of config.policies.slos) {
    if (opts.tenants && !opts.tenants.includes(slo.scope.tenant)) continue;
    const from = new Date(now.getTime() - slo.windowDays * 86_400_000);
    const args = [slo.scope.tenant, slo.scope.team ?? null, slo.scope.useCase ?? null, from, now];
    const o = slo.objectives;
    const results: ObjectiveResult[] = [];
    const steps =
      o.stepLatencyP95Ms !== undefined || o.gateLatencyP95Ms !== undefined
        ? (
            await q.query<{ latency_ms: number | null; gate_ms: number }>(
              `SELECT s.latency_ms, s.gate_ms FROM agent_steps s JOIN tasks t ON t.task_id = s.task_id JOIN attributions a ON a.id = t.attribution_id
                WHERE ${SCOPE} AND s.recorded_at > $4 AND s.recorded_at <= $5`,
              args,
            )
          ).rows
        : [];
    const finished =
      o.successRate !== undefined || o.costPerTaskUsd !== undefined
        ? (
            await q.query<{ state: string; cost_micros: number }>(
              `SELECT t.state, t.cost_micros FROM tasks t JOIN attributions a ON a.id = t.attribution_id
                WHERE ${SCOPE} AND t.finished_at > $4 AND t.finished_at <= $5 AND t.state IN ('Succeeded', 'Failed', 'CapExceeded', 'Cancelled')`,
              args,
            )
          ).rows
        : [];
    for (const name of OBJECTIVES) {
      const target = o[name];
      if (target === undefined) continue;
      if (name === 'stepLatencyP95Ms')
        results.push(
          latencyObjective(
            name,
            target,
            steps.flatMap((s) => (s.latency_ms === null ? [] : [s.latency_ms])),
          ),
        );
      else if (name === 'gateLatencyP95Ms')
        results.push(
          latencyObjective(
            name,
            target,
            steps.map((s) => s.gate_ms),
          ),
        );
      else if (name === 'queueWaitP95Seconds') {
        const { rows } = await q.query<{ wait_s: number }>(
          `SELECT GREATEST(0, EXTRACT(EPOCH FROM (COALESCE(r.at, $5) - t.created_at)))::float8 AS wait_s
             FROM tasks t JOIN attributions a ON a.id = t.attribution_id
             LEFT JOIN audit_log r ON r.dedupe_key = t.task_id || ':reserve' AND r.decision = 'held'
            WHERE ${SCOPE} AND t.created_at > $4 AND t.created_at <= $5
              AND (r.at IS NOT NULL OR (t.state = 'Queued' AND t.finished_at IS NULL))`,
          args,
        );
        results.push(
          latencyObjective(
            name,
            target,
            rows.map((r) => Math.round(r.wait_s * 1000) / 1000),
          ),
        );
      } else if (name === 'successRate') {
        const done = finished.filter((t) => t.state !== 'Cancelled');
        results.push(successObjective(target, done.filter((t) => t.state === 'Succeeded').length, done.length));
      } else
        results.push(
          costObjective(
            target,
            finished.map((t) => t.cost_micros / 1e6),
          ),
        );
    }
    const judged = results.filter((r) => r.met !== null);
    out.push({
      slo: sloLabel(slo.scope),
      scope: slo.scope,
      windowDays: slo.windowDays,
      from: from.toISOString(),
      to: now.toISOString(),
      forbidsFallback: slo.forbidsFallback,
      objectives: results,
      met: judged.length === 0 ? null : judged.every((r) => r.met === true),
    });
  }
  return out;
}
