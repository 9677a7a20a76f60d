import { z } from 'zod';
import { refuseControlCharacters } from '../governance/text';
import type { PriceBookVersion } from '../config/schema';
import { Attribution, type FieldError, Sharing, fieldErrors } from '../governance/intent';
import { DEFAULT_USAGE_LIMITS, UsageLimitError, type UsageLimits, checkQuantity } from '../governance/limits';
import type { Db } from './db';
import { type UsageEvent, priceUsage, recordUsageIn } from './usage';

/**
 * Usage reported from outside the control plane (`POST /v1/usage`).
 *
 * A request is all or nothing on its *shape*: one malformed event, or one event of another
 * tenant, and nothing is written (`invalid` with every field path, `forbidden`). A well-formed
 * request is then judged event by event: each is accepted, a duplicate, or rejected with its
 * index and a reason (too old, in the future, unknown task, no price). The accepted ones are
 * written in one transaction, multi-row, through `recordUsageIn`, which prices each event with
 * the price-book version in force at its time and charges the budgets that cover it.
 *
 * Idempotency: an event's key is `api:<tenant>:<id>`. usage_events.idempotency_key is unique and
 * the table is append-only, so a re-sent event is counted once, forever — also when it is re-sent
 * after the time window: it is answered as a duplicate, not as stale. (Tenant names cannot
 * contain ':', so keys of two tenants never meet.)
 *
 * Streams: an event priced on its own is rounded to a whole micro-dollar, so N partial events
 * of one stream can differ from the price of their total by up to N/2 micro-dollars (and tiny
 * parts round to $0 each). An event that carries `streamId` and `offset` — the stream's total
 * quantity before this part — is priced as round(price(offset + quantity)) - round(price(offset)):
 * the parts telescope to exactly round(price(total)), whatever order they arrive in. The server
 * keeps no stream state: an event's cost depends only on the event, so a re-sent part costs the
 * same, and a gap (a part not sent yet) is short by exactly that part's cost. Offsets are the
 * client's word; overlapping offsets are not detected. Parts of one stream on both sides of a
 * price-book change are priced with their own versions and do not telescope across it.
 *
 * Limits (governance/limits.ts, policies.yaml `usageLimits`): an event whose quantity is over its
 * meter's cap, or that costs more than the cost cap, makes the request `invalid` (its field path
 * and the cap named), like a malformed one: nothing is written. A request whose charge would carry
 * a budget window or a task's cost past the ledger's ceiling (~$9 billion) is `refused`: nothing is
 * written either.
 */
export const IngestMeters = ['tokens_in', 'tokens_out', 'gpu_seconds', 'kv_gb_seconds', 'network_bytes', 'storage_gb_hours'] as const;
export type IngestMeter = (typeof IngestMeters)[number];
const TokenMeters = new Set<IngestMeter>(['tokens_in', 'tokens_out']);

/** Most events one request may carry: bigger batches go in several requests. */
export const MAX_EVENTS_PER_REQUEST = 5000;

/** The schema's bound only keeps numbers finite; the per-meter caps of `usageLimits` are far lower. */
const quantity = z.number({ error: 'must be a number' }).nonnegative().max(1e15);
const id = z.string().min(1).max(200);

export const IngestEvent = z
  .strictObject({
    id,
    time: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time with a time zone, e.g. 2026-11-22T10:00:00Z' }),
    /**
     * tenant is required; a dimension left out is recorded as unattributed (''): counted, priced,
     * charged to the budgets it can be attributed to, and reported as "(unattributed)", never dropped.
     */
    attribution: Attribution.partial({ team: true, project: true, model: true, useCase: true }).extend({ tool: z.string().min(1).max(128).optional() }),
    taskId: id.optional(),
    meter: z.enum(IngestMeters, { error: `must be one of ${IngestMeters.join(', ')}` }),
    quantity,
    /** gpu_seconds only: the GPU type and sharing mode it was measured on (price-book keys). */
    gpuType: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[^:]+$/, 'must not contain ":"')
      .optional(),
    sharing: Sharing.optional(),
    /** One stream of partial events: `offset` is the stream's total quantity before this event. */
    streamId: id.optional(),
    offset: quantity.optional(),
  })
  .superRefine((e, ctx) => {
    if (TokenMeters.has(e.meter) && !Number.isInteger(e.quantity)) ctx.addIssue({ code: 'custom', path: ['quantity'], message: 'tokens are whole numbers' });
    if (e.meter !== 'gpu_seconds') {
      for (const k of ['gpuType', 'sharing'] as const)
        if (e[k] !== undefined) ctx.addIssue({ code: 'custom', path: [k], message: 'only for meter gpu_seconds' });
    }
    if ((e.streamId === undefined) !== (e.offset === undefined))
      ctx.addIssue({ code: 'custom', path: [e.streamId === undefined ? 'streamId' : 'offset'], message: 'streamId and offset go together' });
    if (e.offset !== undefined && TokenMeters.has(e.meter) && !Number.isInteger(e.offset))
      ctx.addIssue({ code: 'custom', path: ['offset'], message: 'tokens are whole numbers' });
  })
  .superRefine(refuseControlCharacters);
export type IngestEvent = z.infer<typeof IngestEvent>;

export const IngestRequest = z.strictObject({
  events: z.array(IngestEvent).min(1, 'at least one event').max(MAX_EVENTS_PER_REQUEST, `at most ${MAX_EVENTS_PER_REQUEST} events per request`),
});
export type IngestRequest = z.infer<typeof IngestRequest>;

/** Why one event of a well-formed request was not recorded. */
export const RejectCodes = ['stale', 'future', 'task', 'unpriced'] as const;
export type RejectCode = (typeof RejectCodes)[number];

export interface Rejection {
  /** Position of the event in the request. */
  index: number;
  code: RejectCode;
  reason: string;
}

export interface IngestResult {
  accepted: number;
  /** Already in the ledger, or sent twice in this request. */
  duplicates: number;
  rejected: Rejection[];
  /** Events of this request recorded with one or more attribution dimensions missing. */
  unattributed: number;
  /** The team/project pairs this request's events were recorded against (for the budget nudge). */
  scopes: BudgetScopeOfUsage[];
}

/** A tenant/team/project whose budgets recorded usage may have moved. */
export interface BudgetScopeOfUsage {
  tenant: string;
  team: string;
  project: string;
}

export type IngestOutcome =
  /** The body is not a list of well-formed events: nothing written. */
  | { outcome: 'invalid'; errors: FieldError[] }
  /** Some event names another tenant than the caller's: nothing written. */
  | { outcome: 'forbidden'; errors: FieldError[] }
  /** Recording the request would carry a ledger sum past its ceiling: nothing written. */
  | { outcome: 'refused'; errors: FieldError[] }
  | ({ outcome: 'recorded' } & IngestResult);

export interface IngestOptions {
  now: Date;
  /** Events older than this are rejected (`stale`). */
  maxAgeHours: number;
  /** How far ahead of `now` an event's time may be (clock skew) before it is rejected (`future`). */
  futureSkewSeconds?: number;
  priceBook: PriceBookVersion[];
  /** Per-event caps (default: governance/limits.ts DEFAULT_USAGE_LIMITS). */
  limits?: UsageLimits;
}

export const DEFAULT_MAX_AGE_HOURS = 72;
export const DEFAULT_FUTURE_SKEW_SECONDS = 300;

/** `api:<tenant>:<id>`: the idempotency key of an event sent through the API. */
export const eventKey = (tenant: string, eventId: string): string => `api:${tenant}:${eventId}`;

/** Validates a request body: the events, or every field error with its path (`events.3.meter`). */
export function parseIngestRequest(body: unknown): { ok: true; events: IngestEvent[] } | { ok: false; errors: FieldError[] } {
  const r = IngestRequest.safeParse(body);
  return r.success ? { ok: true, events: r.data.events } : { ok: false, errors: fieldErrors(r.error) };
}

/** Validates and records one request body of usage events for `tenant` (the caller's). */
export async function ingestUsage(db: Db, tenant: string, body: unknown, opts: IngestOptions): Promise<IngestOutcome> {
  const parsed = parseIngestRequest(body);
  if (!parsed.ok) return { outcome: 'invalid', errors: parsed.errors };
  const foreign = parsed.events.flatMap((e, i) =>
    e.attribution.tenant === tenant ? [] : [{ path: `events.${i}.attribution.tenant`, message: `${e.attribution.tenant} is not the tenant of this API key` }],
  );
  if (foreign.length > 0) return { outcome: 'forbidden', errors: foreign };
  const limits = opts.limits ?? DEFAULT_USAGE_LIMITS;
  const over = parsed.events.flatMap((e, i) => {
    const q = checkQuantity(limits, e.meter, e.quantity);
    return q.ok ? [] : [{ path: `events.${i}.${q.field}`, message: q.message }];
  });
  if (over.length > 0) return { outcome: 'invalid', errors: over };
  try {
    return { outcome: 'recorded', ...(await recordIngested(db, tenant, parsed.events, opts)) };
  } catch (err) {
    if (!(err instanceof UsageLimitError)) throw err;
    // An event over the cost cap (found before anything is written), or a sum past the ceiling (rolled back).
    const index = err.key === undefined ? -1 : parsed.events.findIndex((e) => eventKey(tenant, e.id) === err.key);
    if (index < 0) return { outcome: 'refused', errors: [{ path: 'events', message: err.message }] };
    return {
      outcome: 'invalid',
      errors: [{ path: `events.${index}.${err.field ?? 'quantity'}`, message: err.message.replace(/^usage event \S+: \w+: /, '') }],
    };
  }
}

/**
 * Records events ingestUsage has parsed and found all of `tenant`. Every event is accepted, a
 * duplicate, or rejected with its index and reason; the accepted ones are written in one
 * transaction. Throws UsageLimitError, with nothing written, for an event over a cap or a sum past
 * the ledger's ceiling.
 */
async function recordIngested(db: Db, tenant: string, events: readonly IngestEvent[], opts: IngestOptions): Promise<IngestResult> {
  const rejected: Rejection[] = [];
  const skew = opts.futureSkewSeconds ?? DEFAULT_FUTURE_SKEW_SECONDS;
  const oldest = opts.now.getTime() - opts.maxAgeHours * 3_600_000;
  const latest = opts.now.getTime() + skew * 1000;

  const valid: { index: number; e: IngestEvent; at: Date }[] = [];
  /** Events outside the window: rejected, unless the ledger already has them (a late re-send). */
  const outside: Rejection[] = [];
  events.forEach((e, index) => {
    const at = new Date(e.time);
    if (at.getTime() < oldest)
      return void outside.push({ index, code: 'stale', reason: `time: ${e.time} is older than the ${opts.maxAgeHours} h ingestion window` });
    if (at.getTime() > latest) return void outside.push({ index, code: 'future', reason: `time: ${e.time} is more than ${skew} s in the future` });
    valid.push({ index, e, at });
  });
  let duplicates = 0;
  let unattributed = 0;
  if (outside.length > 0) {
    const keys = outside.map((r) => eventKey(tenant, events[r.index]!.id));
    const { rows } = await db.query<{ idempotency_key: string }>('SELECT idempotency_key FROM usage_events WHERE idempotency_key = ANY($1)', [keys]);
    const known = new Set(rows.map((r) => r.idempotency_key));
    outside.forEach((r, i) => (known.has(keys[i]!) ? duplicates++ : rejected.push(r)));
  }

  // Tasks named by events must be this tenant's, and of the event's team and project: usage
  // charges the task's reservation and cost.
  const taskIds = [...new Set(valid.flatMap((v) => (v.e.taskId ? [v.e.taskId] : [])))];
  const tasks = new Map<string, TaskRow>();
  if (taskIds.length > 0) {
    const { rows } = await db.query<TaskRow & { task_id: string }>(
      `SELECT t.task_id, a.team, a.project, t.plan->'gpu'->>'type' AS gpu_type, t.plan->'gpu'->>'sharing' AS sharing
       FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE t.task_id = ANY($1) AND a.tenant = $2`,
      [taskIds, tenant],
    );
    for (const r of rows) tasks.set(r.task_id, r);
  }

  const limits = opts.limits ?? DEFAULT_USAGE_LIMITS;
  const seen = new Set<string>();
  const batch: UsageEvent[] = [];
  for (const { index, e, at } of valid) {
    const task = e.taskId === undefined ? undefined : tasks.get(e.taskId);
    if (e.taskId !== undefined) {
      if (!task) {
        rejected.push({ index, code: 'task', reason: `taskId: no task ${e.taskId} in tenant ${tenant}` });
        continue;
      }
      // A dimension the event leaves out is the task's; one it gives must be the task's.
      e.attribution.team ??= task.team;
      e.attribution.project ??= task.project;
      if (task.team !== e.attribution.team || task.project !== e.attribution.project) {
        rejected.push({
          index,
          code: 'task',
          reason: `taskId: task ${e.taskId} belongs to ${task.team}/${task.project}, not ${e.attribution.team}/${e.attribution.project}`,
        });
        continue;
      }
    }
    const key = eventKey(tenant, e.id);
    const { tool, ...given } = e.attribution;
    const event: UsageEvent = {
      key,
      taskId: e.taskId ?? null,
      attribution: { tenant: given.tenant, team: given.team ?? '', project: given.project ?? '', model: given.model ?? '', useCase: given.useCase ?? '' },
      tool: tool ?? null,
      // usage_events.meter is text: the unpriced meters are recorded as they are named.
      meter: e.meter as UsageEvent['meter'],
      subject: subjectOf(e, task),
      quantity: e.quantity,
      ...(e.offset !== undefined ? { cumulativeBefore: e.offset } : {}),
      occurredAt: at,
    };
    // Priced once, here: an event over a cap throws UsageLimitError (nothing is written yet);
    // one the price book has no price for is rejected; recordUsageIn takes the price as it is.
    try {
      event.priced = priceUsage(opts.priceBook, event, limits);
    } catch (err) {
      if (err instanceof UsageLimitError) throw err;
      rejected.push({ index, code: 'unpriced', reason: `${e.meter === 'gpu_seconds' ? 'gpuType' : 'attribution.model'}: ${(err as Error).message}` });
      continue;
    }
    if (seen.has(key)) {
      duplicates++;
      continue;
    }
    seen.add(key);
    if (given.team === undefined || given.project === undefined || given.model === undefined || given.useCase === undefined) unattributed++;
    batch.push(event);
  }
  rejected.sort((a, b) => a.index - b.index);
  if (batch.length === 0) return { accepted: 0, duplicates, rejected, unattributed, scopes: [] };

  // Keys in one order for every request, so two requests that share events lock them in the
  // same order and cannot deadlock.
  batch.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const ids = await ensureAttributions(db, batch);
  for (const e of batch) e.attributionId = ids.get(tupleKey(e.attribution))!;
  const r = await db.tx((c) => recordUsageIn(c, opts.priceBook, batch, limits));
  const scopes = new Map<string, BudgetScopeOfUsage>();
  for (const e of batch) scopes.set(`${e.attribution.team}/${e.attribution.project}`, { tenant, team: e.attribution.team, project: e.attribution.project });
  return { accepted: r.accepted, duplicates: duplicates + r.duplicates, rejected, unattributed, scopes: [...scopes.values()] };
}

interface TaskRow {
  team: string;
  project: string;
  gpu_type: string | null;
  sharing: string | null;
}

/**
 * Model for token and the unpriced meters (no model given: '', priced at the price book's
 * "default" model); `<gpuType>:<sharing>` for gpu_seconds.
 */
function subjectOf(e: IngestEvent, task: TaskRow | undefined): string {
  if (e.meter !== 'gpu_seconds') return e.attribution.model ?? '';
  if (e.gpuType !== undefined) return `${e.gpuType}:${e.sharing ?? 'exclusive'}`;
  if (task?.gpu_type) return `${task.gpu_type}:${e.sharing ?? task.sharing ?? 'exclusive'}`;
  return `unknown:${e.sharing ?? 'exclusive'}`;
}

const tupleKey = (a: UsageEvent['attribution']) => JSON.stringify([a.tenant, a.team, a.project, a.model, a.useCase]);

/**
 * The ids of the batch's attribution tuples, created if new: two statements for the whole batch.
 * The insert commits on its own, in a fixed order, before the usage transaction: two requests
 * creating the same new tuple at once would otherwise wait on each other's uncommitted insert,
 * and the loser's lookup (in the insert's snapshot) would not see the winner's row. The lookup
 * is a separate statement, so its snapshot sees every row committed by then.
 */
async function ensureAttributions(db: Db, batch: UsageEvent[]): Promise<Map<string, number>> {
  const tuples = new Map<string, UsageEvent['attribution']>();
  for (const e of batch) tuples.set(tupleKey(e.attribution), e.attribution);
  const sorted = [...tuples.entries()].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)).map(([, a]) => a);
  const cols = [sorted.map((a) => a.tenant), sorted.map((a) => a.team), sorted.map((a) => a.project), sorted.map((a) => a.model), sorted.map((a) => a.useCase)];
  await db.query(
    `INSERT INTO attributions (tenant, team, project, model, use_case)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
     ON CONFLICT (tenant, team, project, model, use_case) DO NOTHING`,
    cols,
  );
  const { rows } = await db.query<{ id: number; tenant: string; team: string; project: string; model: string; use_case: string }>(
    `SELECT a.id, a.tenant, a.team, a.project, a.model, a.use_case
     FROM attributions a JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS k(tenant, team, project, model, use_case)
       ON a.tenant = k.tenant AND a.team = k.team AND a.project = k.project AND a.model = k.model AND a.use_case = k.use_case`,
    cols,
  );
  return new Map(rows.map((r) => [tupleKey({ tenant: r.tenant, team: r.team, project: r.project, model: r.model, useCase: r.use_case }), r.id]));
}
