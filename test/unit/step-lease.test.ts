import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import type { EffectiveCaps } from '../../governance/caps';
import { costMicros, priceVersionAt, unitPriceUsd } from '../../governance/pricing';
import { type StepTotals, evaluateStep, zeroTotals } from '../../governance/step-gate';
import {
  type GrantInput,
  type LeaseRecord,
  type LeasedStep,
  type StepLease,
  SyncReasons,
  decideLocally,
  foldBatch,
  grantStepLease,
  heldBy,
  zeroAmount,
} from '../../governance/step-lease';

const config = loadConfig();
const T0 = '2026-06-01T12:00:00.000Z';
const version = priceVersionAt(config.priceBook, T0);
const MODEL = 'llama-3-8b';
const FALLBACK = 'small-fast';
const unit = (meter: 'tokens_in' | 'tokens_out', model = MODEL) => unitPriceUsd(version, { meter, subject: model });

/** A grant request over the shipped price book and tool catalog; change only what the test is about. */
class GrantBuilder {
  private x: GrantInput = {
    leaseId: 'L1',
    taskId: 't1',
    now: T0,
    ttlSeconds: 30,
    want: { steps: 50 },
    caps: { maxContextTokens: 8000, maxSteps: 100, maxToolCalls: 20, maxTokens: 1_000_000, maxUsd: 10, maxGpuHours: 0, deadline: null },
    totals: zeroTotals,
    reservedMicros: 10_000_000,
    degradeAtFraction: 0.8,
    primaryModel: MODEL,
    fallbackModel: FALLBACK,
    prices: { inUsdPerToken: unit('tokens_in'), outUsdPerToken: unit('tokens_out'), version: version.version, validUntil: null },
    tools: { catalog: config.tools, declared: ['search.web', 'db.read', 'tickets.update', 'payments.refund'] },
    toolOverheadTokens: 0,
    ladderDegrade: false,
    nextSeq: 1,
  };
  caps(c: Partial<EffectiveCaps>): this {
    this.x.caps = { ...this.x.caps, ...c };
    return this;
  }
  totals(t: Partial<StepTotals>): this {
    this.x.totals = { ...this.x.totals, ...t };
    return this;
  }
  with(over: Partial<GrantInput>): this {
    this.x = { ...this.x, ...over };
    return this;
  }
  input(): GrantInput {
    return this.x;
  }
  lease(): StepLease {
    const g = grantStepLease(this.x);
    if (g.decision !== 'granted') throw new Error(`refused: ${g.message}`);
    return g.lease;
  }
}
const grant = () => new GrantBuilder();
const step = (over: Partial<LeasedStep> = {}): LeasedStep => ({ tokensIn: 1000, tokensOut: 500, contextTokens: 1000, ...over });
const at = (l: StepLease) => Date.parse(l.expiresAt);
const nowMs = Date.parse(T0) + 1000;

describe('grantStepLease', () => {
  const cases: { name: string; g: GrantBuilder; wantWhy?: string; want?: Partial<StepLease['amount']>; wantExpires?: string; wantTools?: string[] }[] = [
    { name: 'ladder degrading the task', g: grant().with({ ladderDegrade: true }), wantWhy: SyncReasons.Ladder },
    { name: 'task already degraded', g: grant().totals({ degraded: true }), wantWhy: SyncReasons.Ladder },
    { name: 'deadline passed', g: grant().caps({ deadline: '2026-06-01T11:00:00.000Z' }), wantWhy: SyncReasons.Expired },
    { name: 'no step left', g: grant().caps({ maxSteps: 3 }).totals({ steps: 3 }), wantWhy: SyncReasons.CapEdge },
    { name: 'at the USD degrade threshold', g: grant().totals({ costMicros: 8_000_000 }), wantWhy: SyncReasons.CapEdge },
    {
      name: 'stops at the degrade fraction of the smaller of maxUsd and the reservation',
      g: grant().with({ reservedMicros: 5_000_000 }).totals({ costMicros: 1_000_000, tokens: 100_000 }),
      want: { steps: 50, micros: 3_000_000, tokens: 700_000, toolCalls: 20 },
    },
    {
      name: 'without a fallback, up to the caps themselves',
      g: grant()
        .with({ fallbackModel: null, want: { steps: 500, usd: 2 } })
        .caps({ maxSteps: 40 }),
      want: { steps: 40, micros: 2_000_000, tokens: 1_000_000 },
    },
    {
      name: 'expires at the deadline when that comes before the TTL',
      g: grant().caps({ deadline: '2026-06-01T12:00:10.000Z' }),
      wantExpires: '2026-06-01T12:00:10.000Z',
    },
    {
      name: 'expires when the price-book version changes',
      g: grant().with({ prices: { ...grant().input().prices, validUntil: '2026-06-01T12:00:05.000Z' } }),
      wantExpires: '2026-06-01T12:00:05.000Z',
    },
    { name: 'only low- and medium-risk read-only tools are leased', g: grant(), wantTools: ['search.web', 'db.read'], wantExpires: '2026-06-01T12:00:30.000Z' },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const g = grantStepLease(c.g.input());
      if (c.wantWhy) {
        expect(g).toMatchObject({ decision: 'refused', why: c.wantWhy });
        return;
      }
      expect(g.decision).toBe('granted');
      if (g.decision !== 'granted') return;
      if (c.want) expect(g.lease.amount).toMatchObject(c.want);
      if (c.wantExpires) expect(g.lease.expiresAt).toBe(c.wantExpires);
      if (c.wantTools) expect(g.lease.tools).toEqual(c.wantTools);
    });
  }
});

describe('decideLocally', () => {
  const l = grant()
    .caps({ maxContextTokens: 4000 })
    .with({ toolOverheadTokens: 420, want: { steps: 3 } })
    .lease();
  const cases: { name: string; used?: Partial<typeof zeroAmount>; s: LeasedStep; now?: number; want: string }[] = [
    { name: 'a plain model call', s: step(), want: 'allow' },
    { name: 'a low-risk read tool', s: step({ tool: 'search.web' }), want: 'allow' },
    { name: 'a high-risk tool', s: step({ tool: 'payments.refund' }), want: SyncReasons.HighRiskTool },
    { name: 'a side-effecting tool', s: step({ tool: 'tickets.update' }), want: SyncReasons.HighRiskTool },
    { name: 'another model', s: step({ model: FALLBACK }), want: SyncReasons.Model },
    { name: 'expired', s: step(), now: at(l), want: SyncReasons.Expired },
    { name: 'the lease has no step left', used: { steps: 3 }, s: step(), want: SyncReasons.CapEdge },
    { name: 'context over the cap less tool definitions', s: step({ contextTokens: 3581 }), want: SyncReasons.CapEdge },
    { name: 'context just under it', s: step({ contextTokens: 3580 }), want: 'allow' },
    { name: 'over the lease amount', used: { micros: l.amount.micros - 1 }, s: step(), want: SyncReasons.CapEdge },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const d = decideLocally(l, at(l), { ...zeroAmount, ...c.used }, c.s, c.now ?? nowMs);
      expect(d.decision === 'allow' ? 'allow' : d.why).toBe(c.want);
    });
  }

  it('numbers steps from the lease first seq', () => {
    const l2 = grant().with({ nextSeq: 41 }).lease();
    const a = decideLocally(l2, at(l2), zeroAmount, step(), nowMs);
    const b = a.decision === 'allow' ? decideLocally(l2, at(l2), a.used, step(), nowMs) : null;
    expect([a, b].map((d) => (d?.decision === 'allow' ? d.seq : null))).toEqual([41, 42]);
  });
});

describe('the leased gate agrees with the synchronous gate', () => {
  const arbStep = fc.record({
    tokensIn: fc.integer({ min: 0, max: 200_000 }),
    tokensOut: fc.integer({ min: 0, max: 100_000 }),
    contextTokens: fc.integer({ min: 0, max: 9000 }),
    tool: fc.option(fc.constantFrom('search.web', 'db.read', 'tickets.update', 'payments.refund'), { nil: undefined }),
  });
  it('every step it allows, the synchronous gate allows on the same model at the same price; the lease is never overspent', () => {
    fc.assert(
      fc.property(
        fc.array(arbStep, { maxLength: 40 }),
        fc.integer({ min: 0, max: 3_000_000 }),
        fc.integer({ min: 1, max: 60 }),
        fc.double({ min: 0.1, max: 20, noNaN: true }),
        (steps, spent, maxSteps, maxUsd) => {
          const b = grant().caps({ maxSteps, maxUsd, maxTokens: 600_000 }).totals({ costMicros: spent, steps: 0 }).with({ toolOverheadTokens: 420 });
          const g = grantStepLease(b.input());
          if (g.decision !== 'granted') return;
          const x = b.input();
          let totals = x.totals;
          let used = zeroAmount;
          for (const s of steps) {
            const d = decideLocally(g.lease, at(g.lease), used, s, nowMs);
            if (d.decision !== 'allow') continue;
            const price = (m: string) =>
              costMicros(version, { meter: 'tokens_in', quantity: s.tokensIn, subject: m }) +
              costMicros(version, { meter: 'tokens_out', quantity: s.tokensOut, subject: m });
            const sync = evaluateStep({
              caps: x.caps,
              totals,
              step: s,
              primaryModel: MODEL,
              fallbackModel: FALLBACK,
              costMicros: price(MODEL),
              fallbackCostMicros: price(FALLBACK),
              reservedMicros: x.reservedMicros,
              tools: x.tools,
              toolOverheadTokens: x.toolOverheadTokens,
              degradeAtFraction: x.degradeAtFraction,
              now: T0,
            });
            expect(sync).toMatchObject({ answer: 'allow', model: MODEL, costMicros: d.costMicros, needsApproval: false, sideEffect: false });
            if (sync.answer !== 'allow') return;
            totals = sync.totals;
            used = d.used;
            for (const k of ['steps', 'toolCalls', 'tokens', 'micros'] as const) expect(used[k]).toBeLessThanOrEqual(g.lease.amount[k]);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('foldBatch', () => {
  const l = grant()
    .with({ want: { steps: 4 }, nextSeq: 10 })
    .lease();
  const fresh: LeaseRecord = { lease: l, reported: zeroAmount, batches: 0, closed: false };

  it('applies a batch in order, numbering its steps from the lease seq, and keeps what the lease still holds', () => {
    const r = foldBatch(fresh, { leaseId: l.leaseId, seq: 1, steps: [step(), step({ tool: 'search.web' })] });
    expect(r.kind).toBe('applied');
    if (r.kind !== 'applied') return;
    expect(r.steps.map((s) => s.seq)).toEqual([10, 11]);
    expect(r.added).toMatchObject({ steps: 2, toolCalls: 1, tokens: 3000 });
    expect(heldBy(r.record)).toMatchObject({ steps: 2, micros: l.amount.micros - r.added.micros });
  });
  it('answers a batch already applied as a duplicate, changing nothing', () => {
    const r = foldBatch(fresh, { leaseId: l.leaseId, seq: 1, steps: [step()] });
    const again = r.kind === 'applied' ? foldBatch(r.record, { leaseId: l.leaseId, seq: 1, steps: [step(), step()] }) : null;
    expect(again).toEqual({ kind: 'duplicate', record: r.kind === 'applied' ? r.record : null });
  });
  const refusals: { name: string; rec?: Partial<LeaseRecord>; seq: number; steps: LeasedStep[]; wantPath: string }[] = [
    { name: 'a batch out of order', seq: 2, steps: [step()], wantPath: 'seq' },
    { name: 'more steps than the lease', seq: 1, steps: [step(), step(), step(), step(), step()], wantPath: 'steps.4' },
    { name: 'a high-risk tool', seq: 1, steps: [step(), step({ tool: 'payments.refund' })], wantPath: 'steps.1' },
    { name: 'a closed lease', rec: { closed: true }, seq: 1, steps: [step()], wantPath: 'leaseId' },
  ];
  for (const c of refusals) {
    it(`refuses ${c.name}, naming the field`, () => {
      const r = foldBatch({ ...fresh, ...c.rec }, { leaseId: l.leaseId, seq: c.seq, steps: c.steps });
      expect(r.kind).toBe('refused');
      if (r.kind === 'refused') expect(r.issues[0]?.path).toBe(c.wantPath);
    });
  }
  it('a closing batch leaves nothing held', () => {
    const r = foldBatch(fresh, { leaseId: l.leaseId, seq: 1, steps: [step()], close: true });
    expect(r.kind === 'applied' && heldBy(r.record)).toEqual(zeroAmount);
  });
});
