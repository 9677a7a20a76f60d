import type { PriceBookVersion } from '../config/schema';
import type { Attribution } from '../governance/intent';
import { DEFAULT_USAGE_LIMITS, UsageLimitError, type UsageLimits, checkCost, checkQuantity } from '../governance/limits';
import { type Meter, costMicros, priceVersionAt } from '../governance/pricing';
import { attributionId } from './attribution';
import { chargeBudgets } from './budgets';
import { type Db, type Queryable, overLimit } from './db';

/** Meters govloop prices; any other meter is recorded for attribution at no cost. */
const pricedMeters = new Set<string>(['tokens_in', 'tokens_out', 'gpu_seconds']);

export interface UsageEvent {
  /** Unique forever: the same key delivered twice is counted once. */
  key: string;
  taskId: string | null;
  attribution: Attribution;
  tool?: string | null;
  meter: Meter | 'tokens_processed';
  /** Model for token meters, `<gpuType>:<sharing>` for GPU meters. */
  subject: string;
  quantity: number;
  /**
   * For one stream of partial events (a running job's meter): the stream's total before this
   * event. Cost is then priced on the running total (round(after) - round(before)), so the parts
   * add up to exactly the cost of the whole, with no rounding drift.
   */
  cumulativeBefore?: number;
  occurredAt: Date;
  /** The attribution's row id when the caller has already resolved it (saves a lookup per event). */
  attributionId?: number;
  /** priceUsage's answer when the caller has already priced the event (saves pricing it again). */
  priced?: { version: PriceBookVersion; cost: number };
}

/** A task whose usage in this call went past its reservation (ledger/budgets.ts chargeBudgets). */
export interface TaskOverage {
  taskId: string;
  /** Overage this call recorded for the task. */
  overageMicros: number;
  /** The task's overage over its whole life, this call's included. */
  taskOverageMicros: number;
}

/**
 * Did this call's overage take the task's total past `toleranceMicros`? True for exactly one call
 * per task: each usage event is charged once, so the total crosses the tolerance once.
 */
export const overageCrossed = (o: TaskOverage, toleranceMicros: number): boolean =>
  o.taskOverageMicros > toleranceMicros && o.taskOverageMicros - o.overageMicros <= toleranceMicros;

export interface RecordResult {
  accepted: number;
  duplicates: number;
  costMicros: number;
  /** Tasks charged past their reservation by this call, for the caller to act on after commit (an operator alert). */
  overages: TaskOverage[];
}

/**
 * Appends usage and charges it, in one transaction: the events (idempotent by key), the task's
 * running cost and the budgets' spend move together or not at all.
 */
export async function recordUsage(
  db: Db,
  priceBook: PriceBookVersion[],
  events: UsageEvent[],
  limits: UsageLimits = DEFAULT_USAGE_LIMITS,
): Promise<RecordResult> {
  if (events.length === 0) return { accepted: 0, duplicates: 0, costMicros: 0, overages: [] };
  return db.tx((c) => recordUsageIn(c, priceBook, events, limits));
}

/**
 * An event's price-book version and cost in micro-dollars (0 for an unpriced meter); throws
 * UsageLimitError for an event over its meter's quantity cap or the cost cap. A stream part is
 * priced on the running total (round(after) - round(before)).
 */
export function priceUsage(
  priceBook: PriceBookVersion[],
  e: Pick<UsageEvent, 'key' | 'meter' | 'subject' | 'quantity' | 'cumulativeBefore' | 'occurredAt'>,
  limits: UsageLimits,
): { version: PriceBookVersion; cost: number } {
  const q = checkQuantity(limits, e.meter, e.quantity);
  if (!q.ok) throw new UsageLimitError(`usage event ${e.key}: quantity: ${q.message}`, q.field, e.key);
  const version = priceVersionAt(priceBook, e.occurredAt.toISOString());
  if (!pricedMeters.has(e.meter)) return { version, cost: 0 };
  const price = (quantity: number) => costMicros(version, { meter: e.meter as Meter, quantity, subject: e.subject });
  const total = e.cumulativeBefore === undefined ? undefined : price(e.cumulativeBefore + e.quantity);
  const cost = total === undefined ? price(e.quantity) : total - price(e.cumulativeBefore!);
  const k = checkCost(limits, { cost, ...(total === undefined ? {} : { streamTotal: total }) });
  if (!k.ok) throw new UsageLimitError(`usage event ${e.key}: ${k.field}: ${k.message}`, k.field, e.key);
  return { version, cost };
}

/**
 * Throws UsageLimitError, before anything is written, for an event over its meter's cap or the
 * cost cap (governance/limits.ts); and, with the transaction then to be rolled back, for a charge
 * that would carry a budget window or a task's cost past the ledger's ceiling.
 */
export async function recordUsageIn(
  c: Queryable,
  priceBook: PriceBookVersion[],
  events: UsageEvent[],
  limits: UsageLimits = DEFAULT_USAGE_LIMITS,
): Promise<RecordResult> {
  const rows = [];
  // One lookup per distinct attribution tuple, not per event.
  const attributionIds = new Map<string, number>();
  for (const e of events) {
    const { version, cost } = e.priced ?? priceUsage(priceBook, e, limits);
    const a = e.attribution;
    const tuple = `${a.tenant}|${a.team}|${a.project}|${a.model}|${a.useCase}`;
    let attr = e.attributionId ?? attributionIds.get(tuple);
    if (attr === undefined) attributionIds.set(tuple, (attr = await attributionId(c, a)));
    rows.push({ e, attr, version: version.version, cost });
  }
  const inserted = await c.query<{ idempotency_key: string }>(
    `INSERT INTO usage_events (idempotency_key, task_id, attribution_id, tool, meter, subject, quantity, price_version, cost_micros, occurred_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::int[], $9::bigint[], $10::timestamptz[])
     ON CONFLICT (idempotency_key) DO NOTHING
     RETURNING idempotency_key`,
    [
      rows.map((r) => r.e.key),
      rows.map((r) => r.e.taskId),
      rows.map((r) => r.attr),
      rows.map((r) => r.e.tool ?? null),
      rows.map((r) => r.e.meter),
      rows.map((r) => r.e.subject),
      rows.map((r) => r.e.quantity),
      rows.map((r) => r.version),
      rows.map((r) => r.cost),
      rows.map((r) => r.e.occurredAt),
    ],
  );
  const fresh = new Set(inserted.rows.map((r) => r.idempotency_key));
  let total = 0;
  // Charge per task and time, so one event's cost lands in its own task and period window.
  const charges = new Map<string, { taskId: string | null; a: Attribution; at: Date; cost: number; key: string }>();
  for (const r of rows) {
    if (!fresh.has(r.e.key) || r.cost === 0) continue;
    fresh.delete(r.e.key);
    total += r.cost;
    const k = `${r.e.taskId}|${r.e.attribution.tenant}|${r.e.attribution.team}|${r.e.attribution.project}|${r.e.occurredAt.toISOString().slice(0, 10)}`;
    const cur = charges.get(k);
    if (cur) cur.cost += r.cost;
    // The charge's key: one of its events' idempotency keys, each recorded once (overages.charge_key).
    else charges.set(k, { taskId: r.e.taskId, a: r.e.attribution, at: r.e.occurredAt, cost: r.cost, key: r.e.key });
  }
  const overages = new Map<string, TaskOverage>();
  for (const ch of [...charges.values()].sort((x, y) => String(x.taskId).localeCompare(String(y.taskId)))) {
    const charge = await chargeBudgets(c, ch.taskId, ch.a, ch.cost, ch.at, ch.key);
    if (ch.taskId !== null && charge.overageMicros > 0) {
      const o = overages.get(ch.taskId);
      if (o) {
        o.overageMicros += charge.overageMicros;
        o.taskOverageMicros = charge.taskOverageMicros;
      } else overages.set(ch.taskId, { taskId: ch.taskId, overageMicros: charge.overageMicros, taskOverageMicros: charge.taskOverageMicros });
    }
    if (ch.taskId !== null) {
      await c.query('UPDATE tasks SET cost_micros = cost_micros + $2 WHERE task_id = $1', [ch.taskId, ch.cost]).catch((err: unknown) => {
        throw overLimit(err, `task ${ch.taskId}'s cost`, ch.cost) ?? err;
      });
    }
  }
  return { accepted: inserted.rows.length, duplicates: events.length - inserted.rows.length, costMicros: total, overages: [...overages.values()] };
}

export interface TaskUsage {
  gpuSeconds: number;
  tokensIn: number;
  tokensOut: number;
  tokensProcessed: number;
  costMicros: number;
}

/**
 * A meter's deltas are differences of cumulative doubles, so their sum can miss the cumulative by
 * an ulp (12000.000000000002 GPU-seconds). Quantities are reported to a millionth of a unit.
 */
const toMillionths = (x: number): number => Math.round(x * 1e6) / 1e6;

export async function taskUsage(q: Queryable, taskId: string): Promise<TaskUsage> {
  const { rows } = await q.query<{ meter: string; quantity: number; cost: number }>(
    'SELECT meter, SUM(quantity) AS quantity, SUM(cost_micros)::float8 AS cost FROM usage_events WHERE task_id = $1 GROUP BY meter',
    [taskId],
  );
  const by = (m: string) => toMillionths(Number(rows.find((r) => r.meter === m)?.quantity ?? 0));
  return {
    gpuSeconds: by('gpu_seconds'),
    tokensIn: by('tokens_in'),
    tokensOut: by('tokens_out'),
    tokensProcessed: by('tokens_processed'),
    costMicros: rows.reduce((s, r) => s + Number(r.cost), 0),
  };
}

export interface UsageRow {
  [dim: string]: string | number;
  costUsd: number;
  gpuHours: number;
  tokens: number;
  tasks: number;
}

export const UsageDims = ['tenant', 'team', 'project', 'model', 'useCase', 'tool', 'meter'] as const;
export type UsageDim = (typeof UsageDims)[number];
const dimColumn: Record<UsageDim, string> = {
  tenant: 'a.tenant',
  team: 'a.team',
  project: 'a.project',
  model: 'a.model',
  useCase: 'a.use_case',
  tool: "COALESCE(u.tool, '')",
  meter: 'u.meter',
};

/** Usage and cost grouped by attribution dimensions over [from, to). */
export async function usageBy(q: Queryable, dims: UsageDim[], from: Date, to: Date, tenant?: string): Promise<UsageRow[]> {
  const cols = dims.map((d) => `${dimColumn[d]} AS "${d}"`);
  const { rows } = await q.query(
    `SELECT ${[...cols, 'SUM(u.cost_micros)::float8 AS cost', "SUM(CASE WHEN u.meter = 'gpu_seconds' THEN u.quantity ELSE 0 END) AS gpu_seconds", "SUM(CASE WHEN u.meter IN ('tokens_in','tokens_out','tokens_processed') THEN u.quantity ELSE 0 END) AS tokens", 'COUNT(DISTINCT u.task_id)::int AS tasks'].join(', ')}
     FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
     WHERE u.occurred_at >= $1 AND u.occurred_at < $2 AND ($3::text IS NULL OR a.tenant = $3)
     ${dims.length ? `GROUP BY ${dims.map((_, i) => i + 1).join(', ')} ORDER BY cost DESC` : ''}`,
    [from, to, tenant ?? null],
  );
  return rows.map((r) => {
    const out: UsageRow = { costUsd: Number(r.cost ?? 0) / 1e6, gpuHours: Number(r.gpu_seconds ?? 0) / 3600, tokens: Number(r.tokens ?? 0), tasks: r.tasks };
    for (const d of dims) out[d] = r[d];
    return out;
  });
}
