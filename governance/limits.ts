import { z } from 'zod';

/**
 * Usage limits (issue 11): how big one usage event may be, and how big any money sum may grow.
 * Pure: the ledger and the ingestion API apply what these functions decide.
 *
 * Two layers, so that an overflow is impossible for honest input and refused cleanly otherwise:
 *
 * 1. Per-event caps (policies.yaml `usageLimits`): a quantity per meter, and a cost. An event over
 *    a cap is refused before anything is written. With the default cost cap ($1,000,000) a whole
 *    ingest request (5,000 events) costs at most $5 billion: every sum the ledger computes in
 *    JavaScript stays an exact integer.
 * 2. A ceiling on every money counter and sum: MAX_LEDGER_MICROS, the largest integer a JavaScript
 *    number holds exactly (the ledger reads bigint columns as numbers, ledger/db.ts). CHECK
 *    constraints (migration 0012) hold the counters to it; an addition past it is refused as a
 *    UsageLimitError, not written and not retried. Rollup sums are numeric and cannot overflow.
 */

/** ≈ $9.007 billion in micro-dollars: 2^53 - 1, the most any counter or sum may hold. */
export const MAX_LEDGER_MICROS = Number.MAX_SAFE_INTEGER;

/** Every meter the ledger records (`tokens_processed` and `usd` only from inside govloop). */
export const LimitedMeters = ['tokens_in', 'tokens_out', 'tokens_processed', 'gpu_seconds', 'kv_gb_seconds', 'network_bytes', 'storage_gb_hours'] as const;
export type LimitedMeter = (typeof LimitedMeters)[number];

/** Default quantity caps per event; see config/policies.yaml for the reasoning. */
export const DEFAULT_PER_EVENT: Record<LimitedMeter, number> = {
  tokens_in: 1e9,
  tokens_out: 1e9,
  tokens_processed: 1e10,
  gpu_seconds: 1e8,
  kv_gb_seconds: 1e10,
  network_bytes: 1e14,
  storage_gb_hours: 1e9,
};

/** The largest cost cap: 5,000 events at this cost still sum to an exact integer of micro-dollars. */
export const MAX_USD_PER_EVENT = 1_000_000;

const cap = z.number().positive().max(1e15);
export const UsageLimits = z.strictObject({
  /** Most one event may cost, in USD, priced with the version in force at its time. */
  maxUsdPerEvent: z.number().positive().max(MAX_USD_PER_EVENT).default(MAX_USD_PER_EVENT),
  /** Most of each meter one event may carry. */
  perEvent: z
    .strictObject(Object.fromEntries(LimitedMeters.map((m) => [m, cap.default(DEFAULT_PER_EVENT[m])])) as Record<LimitedMeter, z.ZodDefault<typeof cap>>)
    .default(DEFAULT_PER_EVENT),
});
export type UsageLimits = z.infer<typeof UsageLimits>;
export const DEFAULT_USAGE_LIMITS: UsageLimits = UsageLimits.parse({});

/** Error type of a refused event or sum: permanent (listed in nonRetryableErrorTypes where thrown in activities). */
export const USAGE_LIMIT_ERROR = 'UsageLimitError';

/** An event or a sum over a limit: nothing was written. `field` is the event's field at fault, when there is one. */
export class UsageLimitError extends Error {
  constructor(
    message: string,
    readonly field?: 'quantity' | 'offset',
    /** The event's key (usage_events.idempotency_key), when one event is at fault. */
    readonly key?: string,
  ) {
    super(message);
    this.name = USAGE_LIMIT_ERROR;
  }
}

const fmt = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 6 });
const usd = (micros: number) => `$${fmt(micros / 1e6)}`;

export type LimitCheck = { ok: true } | { ok: false; field: 'quantity' | 'offset'; message: string };

/** Is one event's quantity within its meter's cap? Meters without a cap (`usd`) pass. */
export function checkQuantity(limits: UsageLimits, meter: string, quantity: number): LimitCheck {
  const max = (limits.perEvent as Record<string, number | undefined>)[meter];
  if (max === undefined || quantity <= max) return { ok: true };
  return { ok: false, field: 'quantity', message: `${fmt(quantity)} ${meter} is above the cap of ${fmt(max)} per event (usageLimits.perEvent.${meter})` };
}

/**
 * Is one event's cost within the cap? `priced` are the event's micro-dollars as the ledger computes
 * them: the event's cost and, for a stream part, the price of the stream's total after it, which
 * must be exact for the parts to telescope.
 */
export function checkCost(limits: UsageLimits, priced: { cost: number; streamTotal?: number }): LimitCheck {
  const max = Math.round(limits.maxUsdPerEvent * 1e6);
  if (!Number.isSafeInteger(priced.cost) || priced.cost > max) {
    return { ok: false, field: 'quantity', message: `costs ${usd(priced.cost)}, above the cap of ${usd(max)} per event (usageLimits.maxUsdPerEvent)` };
  }
  if (priced.streamTotal !== undefined && !(priced.streamTotal <= MAX_LEDGER_MICROS)) {
    return {
      ok: false,
      field: 'offset',
      message: `the stream's total is priced at ${usd(priced.streamTotal)}, above the ledger's ceiling of ${usd(MAX_LEDGER_MICROS)}`,
    };
  }
  return { ok: true };
}
