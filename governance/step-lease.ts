import type { EffectiveCaps } from './caps';
import { usdToMicros } from './pricing';
import type { StepTotals } from './step-gate';
import { type ToolPolicy, checkTool, hasSideEffect, needsApproval } from './tools';

/**
 * The leased step gate (decision 0030): a slice of one agent task's caps, handed to the agent so
 * that a low-risk step inside the slice is decided in process by `decideLocally`, with no round
 * trip, and reported to the task in batches (`foldBatch`). Everything else — a tool that needs a
 * human or has side effects, a step at a cap's edge, a ladder step in force, an expired lease —
 * takes the synchronous step gate. Pure functions over plain data; the clock is passed in.
 *
 * The slice is counted as spent by the task while the lease is open (the synchronous gate sees
 * it), and it stops below the point where the synchronous gate would degrade a step, so a step
 * allowed here is one the synchronous gate would have allowed on the same model at the same price.
 */

/** Why a step must take the synchronous gate instead. */
export const SyncReasons = {
  /** The lease's time is up (or it was closed): report, close, and take a new one. */
  Expired: 'expired',
  /** A tool that waits for a human (at or above the catalog's approvalAtOrAbove). */
  HighRiskTool: 'high-risk-tool',
  /** A tool that writes or calls out: rollback must know its arguments, so the workflow records it. */
  SideEffectTool: 'side-effect-tool',
  /** A tool the task did not declare or the catalog does not know: the synchronous gate says why. */
  UnknownTool: 'unknown-tool',
  /** A model other than the task's primary model (the fallback is the ladder's business). */
  Model: 'model',
  /** The step would cross what is left of the lease, or a cap the lease cannot cover. */
  CapEdge: 'cap-edge',
  /** The budget ladder degrades (or holds) the task's steps now, or the task is degraded for good. */
  Ladder: 'ladder',
  /** The task is not running (awaiting approval, ending). */
  NotRunning: 'not-running',
} as const;
export type SyncReason = (typeof SyncReasons)[keyof typeof SyncReasons];

/** What a lease covers (or what of it is used): counts, tokens and micro-dollars. */
export interface LeaseAmount {
  steps: number;
  toolCalls: number;
  tokens: number;
  micros: number;
}
export const zeroAmount: LeaseAmount = { steps: 0, toolCalls: 0, tokens: 0, micros: 0 };

export interface StepLease {
  leaseId: string;
  taskId: string;
  /** Local steps run on this model only (the task's primary model), at these prices. */
  model: string;
  /** USD per token, from the price-book version in force for the whole lease. */
  inUsdPerToken: number;
  outUsdPerToken: number;
  priceVersion: number;
  /** The most the lease's steps may use together. */
  amount: LeaseAmount;
  /** The context cap less the declared tools' definitions: a step's own context must fit under it. */
  maxContextTokens: number;
  /** Tools a local step may call: declared, below the approval threshold, without side effects. */
  tools: string[];
  /** The ledger seq of the lease's first step; its steps are firstSeq … firstSeq + amount.steps - 1. */
  firstSeq: number;
  grantedAt: string;
  expiresAt: string;
}

export interface GrantInput {
  leaseId: string;
  taskId: string;
  now: string;
  ttlSeconds: number;
  /** What the agent asks for; the lease is the smaller of this and what the caps leave. */
  want: { steps: number; usd?: number | undefined; tokens?: number | undefined };
  caps: EffectiveCaps;
  /** The task's totals, open leases included (they count as spent). */
  totals: StepTotals;
  reservedMicros: number;
  degradeAtFraction: number;
  primaryModel: string;
  fallbackModel: string | null;
  prices: { inUsdPerToken: number; outUsdPerToken: number; version: number; validUntil: string | null };
  tools: ToolPolicy;
  toolOverheadTokens: number;
  /** The budget ladder degrades the task's next step now (or its SLO holds it). */
  ladderDegrade: boolean;
  nextSeq: number;
}

export type GrantDecision = { decision: 'granted'; lease: StepLease } | { decision: 'refused'; why: SyncReason; message: string };

/**
 * Grants a step lease: at most `want`, and no more than the caps leave before the synchronous gate
 * would degrade or deny a step (tokens and USD stop at the degrade fraction when the task has a
 * fallback model; the USD ceiling is the smaller of maxUsd and the reservation). It expires at the
 * TTL, the task's deadline, or when the price-book version changes, whichever comes first.
 */
export function grantStepLease(x: GrantInput): GrantDecision {
  const refuse = (why: SyncReason, message: string): GrantDecision => ({ decision: 'refused', why, message });
  if (x.ladderDegrade) return refuse(SyncReasons.Ladder, 'the budget ladder degrades this task now: every step takes the synchronous gate');
  if (x.totals.degraded) return refuse(SyncReasons.Ladder, 'the task runs on its fallback model: every step takes the synchronous gate');
  const nowMs = Date.parse(x.now);
  if (x.caps.deadline !== null && nowMs >= Date.parse(x.caps.deadline)) return refuse(SyncReasons.Expired, `the task's deadline ${x.caps.deadline} has passed`);
  const canDegrade = x.fallbackModel !== null && x.fallbackModel !== x.primaryModel;
  const f = canDegrade ? x.degradeAtFraction : 1;
  const ceilingMicros = Math.min(usdToMicros(x.caps.maxUsd), x.reservedMicros);
  const room: LeaseAmount = {
    steps: x.caps.maxSteps - x.totals.steps,
    toolCalls: x.caps.maxToolCalls - x.totals.toolCalls,
    tokens: Math.floor(x.caps.maxTokens * f) - x.totals.tokens,
    micros: Math.floor(ceilingMicros * f) - x.totals.costMicros,
  };
  const amount: LeaseAmount = {
    steps: Math.max(0, Math.min(x.want.steps, room.steps)),
    toolCalls: Math.max(0, Math.min(x.want.steps, room.toolCalls)),
    tokens: Math.max(0, x.want.tokens === undefined ? room.tokens : Math.min(x.want.tokens, room.tokens)),
    micros: Math.max(0, x.want.usd === undefined ? room.micros : Math.min(usdToMicros(x.want.usd), room.micros)),
  };
  if (amount.steps === 0 || amount.tokens === 0 || amount.micros === 0)
    return refuse(SyncReasons.CapEdge, 'the task is at the edge of a cap (or of its degrade threshold): the synchronous gate decides');
  const ends = [nowMs + x.ttlSeconds * 1000];
  if (x.caps.deadline !== null) ends.push(Date.parse(x.caps.deadline));
  if (x.prices.validUntil !== null) ends.push(Date.parse(x.prices.validUntil));
  const tools = x.tools.declared.filter((t) => {
    const c = checkTool(x.tools, t);
    return c.ok && !needsApproval(x.tools.catalog, c.entry) && !hasSideEffect(c.entry);
  });
  return {
    decision: 'granted',
    lease: {
      leaseId: x.leaseId,
      taskId: x.taskId,
      model: x.primaryModel,
      inUsdPerToken: x.prices.inUsdPerToken,
      outUsdPerToken: x.prices.outUsdPerToken,
      priceVersion: x.prices.version,
      amount,
      maxContextTokens: x.caps.maxContextTokens - x.toolOverheadTokens,
      tools,
      firstSeq: x.nextSeq,
      grantedAt: x.now,
      expiresAt: new Date(Math.min(...ends)).toISOString(),
    },
  };
}

/** One step as a leased gate sees it (the step gate's usage, without the tool's arguments). */
export interface LeasedStep {
  tokensIn: number;
  tokensOut: number;
  contextTokens: number;
  model?: string | undefined;
  tool?: string | undefined;
  latencyMs?: number | undefined;
}

/** What one step costs at the lease's prices: the same rounding as the ledger's (pricing.costMicros). */
export const leasedStepMicros = (lease: Pick<StepLease, 'inUsdPerToken' | 'outUsdPerToken'>, s: Pick<LeasedStep, 'tokensIn' | 'tokensOut'>): number =>
  usdToMicros(s.tokensIn * lease.inUsdPerToken) + usdToMicros(s.tokensOut * lease.outUsdPerToken);

export type LocalDecision =
  { decision: 'allow'; seq: number; costMicros: number; used: LeaseAmount } | { decision: 'synchronous'; why: SyncReason; message: string };

/**
 * The hot path: allow a step inside the lease (with the lease's use after it and the step's ledger
 * seq), or say why it must take the synchronous gate. `used` is what the lease's earlier steps used.
 */
export function decideLocally(lease: StepLease, expiresAtMs: number, used: LeaseAmount, step: LeasedStep, nowMs: number): LocalDecision {
  if (nowMs >= expiresAtMs) return { decision: 'synchronous', why: SyncReasons.Expired, message: `lease ${lease.leaseId} expired at ${lease.expiresAt}` };
  if (step.model !== undefined && step.model !== lease.model)
    return { decision: 'synchronous', why: SyncReasons.Model, message: `model ${step.model} is not the lease's model ${lease.model}` };
  let toolCalls = used.toolCalls;
  if (step.tool !== undefined) {
    if (!lease.tools.includes(step.tool)) return { decision: 'synchronous', why: SyncReasons.HighRiskTool, message: `tool ${step.tool} is not leased` };
    toolCalls++;
  }
  const tokens = used.tokens + step.tokensIn + step.tokensOut;
  const costMicros = leasedStepMicros(lease, step);
  const micros = used.micros + costMicros;
  const steps = used.steps + 1;
  const a = lease.amount;
  if (step.contextTokens > lease.maxContextTokens || steps > a.steps || toolCalls > a.toolCalls || tokens > a.tokens || micros > a.micros) {
    return { decision: 'synchronous', why: SyncReasons.CapEdge, message: `the step does not fit what is left of lease ${lease.leaseId}` };
  }
  return { decision: 'allow', seq: lease.firstSeq + used.steps, costMicros, used: { steps, toolCalls, tokens, micros } };
}

/** Why a step is not leased, more precisely than decideLocally says (the SDK asks only on the slow path). */
export function toolClass(policy: ToolPolicy, tool: string): SyncReason | 'local' {
  const c = checkTool(policy, tool);
  if (!c.ok) return SyncReasons.UnknownTool;
  if (needsApproval(policy.catalog, c.entry)) return SyncReasons.HighRiskTool;
  if (hasSideEffect(c.entry)) return SyncReasons.SideEffectTool;
  return 'local';
}

/** The workflow's record of one lease: what was reported, and whether it is closed. */
export interface LeaseRecord {
  lease: StepLease;
  reported: LeaseAmount;
  /** The last batch applied (batches are numbered 1, 2, 3 … per lease). */
  batches: number;
  closed: boolean;
}

export interface ReportedBatch {
  leaseId: string;
  seq: number;
  steps: LeasedStep[];
  close?: boolean | undefined;
}

export type FoldResult =
  | { kind: 'applied'; record: LeaseRecord; steps: { seq: number; step: LeasedStep; costMicros: number }[]; added: LeaseAmount }
  | { kind: 'duplicate'; record: LeaseRecord }
  | { kind: 'refused'; issues: { path: string; message: string }[] };

/**
 * Folds a reported batch into a lease's record. Every step must be one `decideLocally` allows in
 * order from what was reported before (expiry aside: a step decided in time may be reported
 * later), so the lease's steps never use more than it holds. A batch already applied is a
 * duplicate (no change); one out of order or over the lease is refused, naming the field.
 */
export function foldBatch(record: LeaseRecord, batch: ReportedBatch): FoldResult {
  if (batch.seq <= record.batches) return { kind: 'duplicate', record };
  if (record.closed) return { kind: 'refused', issues: [{ path: 'leaseId', message: `lease ${batch.leaseId} is closed` }] };
  if (batch.seq !== record.batches + 1)
    return { kind: 'refused', issues: [{ path: 'seq', message: `expected batch ${record.batches + 1}, got ${batch.seq}` }] };
  let used = record.reported;
  const steps: { seq: number; step: LeasedStep; costMicros: number }[] = [];
  for (const [i, step] of batch.steps.entries()) {
    const d = decideLocally(record.lease, Infinity, used, step, 0);
    if (d.decision !== 'allow') return { kind: 'refused', issues: [{ path: `steps.${i}`, message: `${d.why}: ${d.message}` }] };
    steps.push({ seq: d.seq, step, costMicros: d.costMicros });
    used = d.used;
  }
  const added = minus(used, record.reported);
  return { kind: 'applied', record: { ...record, reported: used, batches: batch.seq, closed: batch.close === true }, steps, added };
}

export const plus = (a: LeaseAmount, b: LeaseAmount): LeaseAmount => ({
  steps: a.steps + b.steps,
  toolCalls: a.toolCalls + b.toolCalls,
  tokens: a.tokens + b.tokens,
  micros: a.micros + b.micros,
});
export const minus = (a: LeaseAmount, b: LeaseAmount): LeaseAmount => ({
  steps: a.steps - b.steps,
  toolCalls: a.toolCalls - b.toolCalls,
  tokens: a.tokens - b.tokens,
  micros: a.micros - b.micros,
});

/** What an open lease still holds of the task (counted as spent): its amount less what was reported. */
export const heldBy = (r: LeaseRecord): LeaseAmount => (r.closed ? zeroAmount : minus(r.lease.amount, r.reported));

/** The task's totals with an amount added (a grant) or taken off (a close gives back the unused rest). */
export const shiftTotals = (t: StepTotals, a: LeaseAmount, sign: 1 | -1): StepTotals => ({
  ...t,
  steps: t.steps + sign * a.steps,
  toolCalls: t.toolCalls + sign * a.toolCalls,
  tokens: t.tokens + sign * a.tokens,
  costMicros: t.costMicros + sign * a.micros,
});
