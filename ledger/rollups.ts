import type { PriceBookVersion } from '../config/schema';
import { priceVersionAt } from '../governance/pricing';
import type { Db, Queryable } from './db';
import type { UsageDim } from './usage';
import { own } from '../governance/own';

/**
 * Usage rollups: hourly and daily aggregates of usage_events by attribution, tool, meter and
 * subject (migration 0004). `rollUp` is what the meteringRollup schedule runs; `usage` and
 * `report` read the rollups.
 *
 * Exactness: a bucket is never incremented, it is recomputed whole from usage_events (DELETE +
 * INSERT … SELECT in one transaction). A bucket is recomputed when an event in it was recorded
 * after the grain's watermark minus a late-arrival margin, so a re-run changes nothing, an event
 * re-sent later (already deduplicated by usage_events.idempotency_key) changes nothing, and an
 * event that arrives late lands in its own hour and day. The margin covers transactions that
 * started (recorded_at = transaction start) before a run and committed after it: it must exceed
 * the longest ledger transaction (default 10 minutes; ledger transactions take milliseconds).
 */
export const Grains = ['hour', 'day'] as const;
export type Grain = (typeof Grains)[number];

const ROLLUP_LOCK = 0x60f1_0e4; // pg_advisory_xact_lock key: one rollup of a grain at a time
const grainInterval: Record<Grain, string> = { hour: '1 hour', day: '1 day' };

export interface RollupRun {
  grain: Grain;
  /** Buckets recomputed by this run. */
  buckets: number;
  /** Rollup rows written for them. */
  rows: number;
  watermark: string;
}

export interface RollupOptions {
  /** Events recorded up to this long before the last run are looked at again (default 600 s). */
  lateArrivalSeconds?: number;
}

/**
 * Brings the hourly and daily rollups up to date with usage_events. Safe to run concurrently and
 * repeatedly. One run serves every tenant, so no sum may fail it: cost_micros is numeric here
 * (migration 0012), and readers cast their sums to float8.
 */
export async function rollUp(db: Db, opts: RollupOptions = {}): Promise<RollupRun[]> {
  const margin = opts.lateArrivalSeconds ?? 600;
  const runs: RollupRun[] = [];
  for (const grain of Grains) {
    runs.push(
      await db.tx(async (c) => {
        await c.query('SELECT pg_advisory_xact_lock($1, $2)', [ROLLUP_LOCK, Grains.indexOf(grain)]);
        const state = await c.query<{ watermark: Date }>('SELECT watermark FROM rollup_state WHERE grain = $1', [grain]);
        const since = state.rows[0] ? new Date(state.rows[0].watermark.getTime() - margin * 1000) : null;
        const buckets = await c.query<{ b: Date }>(
          `SELECT DISTINCT date_trunc($1, occurred_at, 'UTC') AS b FROM usage_events WHERE $2::timestamptz IS NULL OR recorded_at >= $2`,
          [grain, since],
        );
        const bs = buckets.rows.map((r) => r.b);
        let rows = 0;
        if (bs.length > 0) {
          await c.query('DELETE FROM usage_rollups WHERE grain = $1 AND bucket = ANY($2::timestamptz[])', [grain, bs]);
          const ins = await c.query(
            `INSERT INTO usage_rollups (grain, bucket, attribution_id, tool, meter, subject, quantity, cost_micros, events)
             SELECT $1, b.bucket, u.attribution_id, COALESCE(u.tool, ''), u.meter, u.subject, SUM(u.quantity), SUM(u.cost_micros), COUNT(*)
               FROM unnest($2::timestamptz[]) AS b(bucket)
               JOIN usage_events u ON u.occurred_at >= b.bucket AND u.occurred_at < b.bucket + $3::interval
              GROUP BY b.bucket, u.attribution_id, COALESCE(u.tool, ''), u.meter, u.subject`,
            [grain, bs, grainInterval[grain]],
          );
          rows = ins.rowCount ?? 0;
        }
        const wm = await c.query<{ watermark: Date }>(
          `INSERT INTO rollup_state (grain, watermark, runs, last_run) VALUES ($1, now(), 1, now())
           ON CONFLICT (grain) DO UPDATE SET watermark = now(), runs = rollup_state.runs + 1, last_run = now()
           RETURNING watermark`,
          [grain],
        );
        return { grain, buckets: bs.length, rows, watermark: wm.rows[0]!.watermark.toISOString() };
      }),
    );
  }
  return runs;
}

/** Shown for a dimension an event did not attribute (stored as ''). */
export const UNATTRIBUTED = '(unattributed)';

export interface RollupRow {
  [dim: string]: string | number | null;
  costUsd: number;
  gpuHours: number;
  tokens: number;
  tokensIn: number;
  tokensOut: number;
  events: number;
  /** Tasks of this group created in the period (null when grouped by tool or meter, which tasks do not have). */
  tasks: number | null;
}

const dimColumn: Record<UsageDim, string> = {
  tenant: 'a.tenant',
  team: 'a.team',
  project: 'a.project',
  model: 'a.model',
  useCase: 'a.use_case',
  tool: 'r.tool',
  meter: 'r.meter',
};
const attributionDims = new Set<UsageDim>(['tenant', 'team', 'project', 'model', 'useCase']);

/** The grain that covers [from, to) exactly: days when both ends are UTC midnights, else hours. */
export function grainFor(from: Date, to: Date): Grain {
  const midnight = (d: Date) => d.getTime() % 86_400_000 === 0;
  return midnight(from) && midnight(to) ? 'day' : 'hour';
}

/** Usage and cost from the rollups, grouped by dimensions, over [from, to) (hour-aligned). */
export async function rollupUsageBy(q: Queryable, dims: UsageDim[], from: Date, to: Date, tenant?: string): Promise<RollupRow[]> {
  const grain = grainFor(from, to);
  const cols = dims.map((d) => `${dimColumn[d]} AS "${d}"`);
  const { rows } = await q.query(
    `SELECT ${[
      ...cols,
      'SUM(r.cost_micros)::float8 AS cost',
      "SUM(CASE WHEN r.meter = 'gpu_seconds' THEN r.quantity ELSE 0 END) AS gpu_seconds",
      "SUM(CASE WHEN r.meter IN ('tokens_in','tokens_out','tokens_processed') THEN r.quantity ELSE 0 END) AS tokens",
      "SUM(CASE WHEN r.meter = 'tokens_in' THEN r.quantity ELSE 0 END) AS tokens_in",
      "SUM(CASE WHEN r.meter = 'tokens_out' THEN r.quantity ELSE 0 END) AS tokens_out",
      'SUM(r.events)::bigint AS events',
    ].join(', ')}
       FROM usage_rollups r JOIN attributions a ON a.id = r.attribution_id
      WHERE r.grain = $1 AND r.bucket >= $2 AND r.bucket < $3 AND ($4::text IS NULL OR a.tenant = $4)
      ${dims.length ? `GROUP BY ${dims.map((_, i) => i + 1).join(', ')}` : ''}
      ORDER BY cost DESC${dims.length ? `, ${dims.map((_, i) => i + 1).join(', ')}` : ''}`,
    [grain, from, to, tenant ?? null],
  );
  const taskCounts = dims.every((d) => attributionDims.has(d)) ? await countTasks(q, dims, from, to, tenant) : null;
  return rows.map((r) => {
    const key = dims.map((d) => r[d]).join('\u0000');
    const out: RollupRow = {
      costUsd: Number(r.cost ?? 0) / 1e6,
      gpuHours: Number(r.gpu_seconds ?? 0) / 3600,
      tokens: Number(r.tokens ?? 0),
      tokensIn: Number(r.tokens_in ?? 0),
      tokensOut: Number(r.tokens_out ?? 0),
      events: Number(r.events ?? 0),
      tasks: taskCounts === null ? null : (taskCounts.get(key) ?? 0),
    };
    for (const d of dims) out[d] = r[d] === '' ? UNATTRIBUTED : r[d];
    return out;
  });
}

async function countTasks(q: Queryable, dims: UsageDim[], from: Date, to: Date, tenant?: string): Promise<Map<string, number>> {
  const cols = dims.map((d) => `${dimColumn[d]} AS "${d}"`);
  const { rows } = await q.query(
    `SELECT ${[...cols, 'COUNT(*)::bigint AS n'].join(', ')}
       FROM tasks t JOIN attributions a ON a.id = t.attribution_id
      WHERE t.created_at >= $1 AND t.created_at < $2 AND ($3::text IS NULL OR a.tenant = $3)
      ${dims.length ? `GROUP BY ${dims.map((_, i) => i + 1).join(', ')}` : ''}`,
    [from, to, tenant ?? null],
  );
  return new Map(rows.map((r) => [dims.map((d) => r[d]).join('\u0000'), Number(r.n)]));
}

export interface ShowbackReport {
  period: { from: string; to: string };
  tenant: string | null;
  by: UsageDim[];
  rows: RollupRow[];
  totalCostUsd: number;
  unitCosts: {
    /** Cost of token meters per million tokens. */
    per1MTokensUsd: number | null;
    /** Cost of GPU meters per GPU-hour. */
    perGpuHourUsd: number | null;
    /** Mean cost of an agent task that ended in the period. */
    perAgentTaskUsd: number | null;
    /** Mean cost of a training or fine-tune job that ended in the period. */
    perTrainingJobUsd: number | null;
  };
  /** Usage whose attribution left a dimension empty: counted, never dropped. */
  unattributed: { costUsd: number; events: number };
  /** Configured GPU capacity that no usage covered over the elapsed part of the period. */
  idle: { gpuHours: number; costUsd: number } | null;
  /**
   * GPU work lost to preemption (since each victim's last checkpoint) in the period, charged to
   * the preemptor's team (the victim's task paid for it as it ran; this is the chargeback view).
   */
  preemptionLosses: { tenant: string; team: string; preemptions: number; gpuHours: number; costUsd: number }[];
  /**
   * Usage past the reservations of the tasks that ran it, by scope (decision 0023): part of the
   * cost above (showback), charged to no budget; the platform carries it.
   */
  overages: { tenant: string; team: string; project: string; tasks: number; costUsd: number }[];
}

export interface Capacity {
  /** GPUs of each type in the cluster, and the exclusive GPU-hour price of that type. */
  gpuTypes: { gpuType: string; gpus: number; usdPerGpuHour: number }[];
}

/**
 * Showback: cost by dimensions from the rollups, unit costs, unattributed usage, and idle
 * capacity (when the cluster's capacity is given), for [from, to).
 */
export async function showback(
  q: Queryable,
  opts: { by: UsageDim[]; from: Date; to: Date; tenant?: string; capacity?: Capacity; now?: Date; priceBook?: PriceBookVersion[] },
): Promise<ShowbackReport> {
  const { by, from, to, tenant } = opts;
  const rows = await rollupUsageBy(q, by, from, to, tenant);
  const grain = grainFor(from, to);
  const totals = await q.query<{ meter_kind: string; cost: number; quantity: number; unattributed_cost: number; unattributed_events: number }>(
    `SELECT CASE WHEN r.meter IN ('tokens_in','tokens_out') THEN 'tokens' WHEN r.meter = 'gpu_seconds' THEN 'gpu' ELSE 'other' END AS meter_kind,
            SUM(r.cost_micros)::float8 AS cost, SUM(r.quantity) AS quantity,
            SUM(CASE WHEN '' IN (a.team, a.project, a.model, a.use_case) THEN r.cost_micros ELSE 0 END)::float8 AS unattributed_cost,
            SUM(CASE WHEN '' IN (a.team, a.project, a.model, a.use_case) THEN r.events ELSE 0 END)::bigint AS unattributed_events
       FROM usage_rollups r JOIN attributions a ON a.id = r.attribution_id
      WHERE r.grain = $1 AND r.bucket >= $2 AND r.bucket < $3 AND ($4::text IS NULL OR a.tenant = $4)
      GROUP BY 1`,
    [grain, from, to, tenant ?? null],
  );
  const kind = (k: string) => totals.rows.find((r) => r.meter_kind === k);
  const tokens = kind('tokens');
  const gpu = kind('gpu');
  const perTask = await q.query<{ family: string; n: number; cost: number }>(
    `SELECT CASE WHEN t.kind = 'agent' THEN 'agent' ELSE 'training' END AS family, COUNT(*)::bigint AS n, SUM(t.cost_micros)::float8 AS cost
       FROM tasks t JOIN attributions a ON a.id = t.attribution_id
      WHERE t.kind IN ('agent', 'training', 'finetune') AND t.finished_at >= $1 AND t.finished_at < $2 AND ($3::text IS NULL OR a.tenant = $3)
      GROUP BY 1`,
    [from, to, tenant ?? null],
  );
  const mean = (family: string) => {
    const r = perTask.rows.find((x) => x.family === family);
    return r && Number(r.n) > 0 ? Number(r.cost) / Number(r.n) / 1e6 : null;
  };
  const totalMicros = totals.rows.reduce((s, r) => s + Number(r.cost), 0);
  const gpuHours = Number(gpu?.quantity ?? 0) / 3600;
  let idle: ShowbackReport['idle'] = null;
  if (opts.capacity && tenant === undefined) {
    // Idle over the elapsed part of the period: from its start (or the first usage, for "all") to now.
    const now = opts.now ?? new Date();
    const first = await q.query<{ first: Date | null }>('SELECT min(bucket) AS first FROM usage_rollups WHERE grain = $1 AND bucket >= $2 AND bucket < $3', [
      grain,
      from,
      to,
    ]);
    const start = Math.max(from.getTime(), first.rows[0]?.first?.getTime() ?? now.getTime());
    const hours = Math.max(0, (Math.min(to.getTime(), now.getTime()) - start) / 3_600_000);
    const used = await q.query<{ gpu_type: string; gpu_seconds: number }>(
      `SELECT split_part(r.subject, ':', 1) AS gpu_type, SUM(r.quantity) AS gpu_seconds
         FROM usage_rollups r WHERE r.grain = $1 AND r.bucket >= $2 AND r.bucket < $3 AND r.meter = 'gpu_seconds' GROUP BY 1`,
      [grain, from, to],
    );
    let idleHours = 0;
    let idleUsd = 0;
    for (const t of opts.capacity.gpuTypes) {
      const usedHours = Number(used.rows.find((r) => r.gpu_type === t.gpuType)?.gpu_seconds ?? 0) / 3600;
      const h = Math.max(0, t.gpus * hours - usedHours);
      idleHours += h;
      idleUsd += h * t.usdPerGpuHour;
    }
    idle = { gpuHours: idleHours, costUsd: Math.round(idleUsd * 100) / 100 };
  }
  const lost = await q.query<{ tenant: string; team: string; gpu_type: string | null; n: number; gpu_seconds: number; at: Date }>(
    `SELECT preemptor_tenant AS tenant, preemptor_team AS team, gpu_type, count(*)::int AS n, SUM(lost_gpu_seconds) AS gpu_seconds, max(decided_at) AS at
       FROM preemptions WHERE preemptor_team IS NOT NULL AND dropped_at IS NULL AND decided_at >= $1 AND decided_at < $2 AND ($3::text IS NULL OR preemptor_tenant = $3)
      GROUP BY 1, 2, 3`,
    [from, to, tenant ?? null],
  );
  const losses = new Map<string, { tenant: string; team: string; preemptions: number; gpuHours: number; costUsd: number }>();
  for (const r of lost.rows) {
    const key = `${r.tenant}/${r.team}`;
    const l = losses.get(key) ?? { tenant: r.tenant, team: r.team, preemptions: 0, gpuHours: 0, costUsd: 0 };
    const hours = Number(r.gpu_seconds) / 3600;
    const price = opts.priceBook && r.gpu_type ? (own(priceVersionAt(opts.priceBook, r.at.toISOString()).gpuHourUsd, r.gpu_type)?.exclusive ?? 0) : 0;
    l.preemptions += Number(r.n);
    l.gpuHours += hours;
    l.costUsd = Math.round((l.costUsd + hours * price) * 1e6) / 1e6;
    losses.set(key, l);
  }
  const over = await q.query<{ tenant: string; team: string; project: string; tasks: number; micros: number }>(
    `SELECT tenant, team, project, count(DISTINCT task_id)::int AS tasks, SUM(micros)::float8 AS micros
       FROM overages WHERE occurred_at >= $1 AND occurred_at < $2 AND ($3::text IS NULL OR tenant = $3)
      GROUP BY 1, 2, 3 ORDER BY 5 DESC, 1, 2, 3`,
    [from, to, tenant ?? null],
  );
  return {
    preemptionLosses: [...losses.values()].sort((a, b) => b.gpuHours - a.gpuHours),
    overages: over.rows.map((r) => ({ tenant: r.tenant, team: r.team, project: r.project, tasks: r.tasks, costUsd: Number(r.micros) / 1e6 })),
    period: { from: from.toISOString(), to: to.toISOString() },
    tenant: tenant ?? null,
    by,
    rows,
    totalCostUsd: totalMicros / 1e6,
    unitCosts: {
      per1MTokensUsd: tokens && Number(tokens.quantity) > 0 ? Number(tokens.cost) / Number(tokens.quantity) : null,
      perGpuHourUsd: gpuHours > 0 ? Number(gpu!.cost) / 1e6 / gpuHours : null,
      perAgentTaskUsd: mean('agent'),
      perTrainingJobUsd: mean('training'),
    },
    unattributed: {
      costUsd: totals.rows.reduce((s, r) => s + Number(r.unattributed_cost), 0) / 1e6,
      events: totals.rows.reduce((s, r) => s + Number(r.unattributed_events), 0),
    },
    idle,
  };
}
