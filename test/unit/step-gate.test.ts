import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { type EffectiveCaps, resolveCaps } from '../../governance/caps';
import { worstCaseMicros } from '../../governance/plan';
import { costMicros, priceVersionAt } from '../../governance/pricing';
import { type StepContext, type StepTotals, type StepUsage, evaluateStep, zeroTotals } from '../../governance/step-gate';
import { anIntent } from '../support/builders';

// step-gate.ts is being extended (degrade answers, tool catalog): these tests import only
// evaluateStep/zeroTotals and assert allow/deny, reason code/limit/requested and totals. Every
// StepContext is built in `gate()` below, the one place to adapt if its shape changes.

const config = loadConfig();
const catalog = config.tools;
const T0 = '2026-06-01T12:00:00.000Z';

/** A step as the agent reports it, with the price the activity computed for it. */
interface StepSpec {
  usage: StepUsage;
  costMicros: number;
  /** Its price on the fallback model, for a gate with one. */
  fallbackCostMicros?: number;
  now?: string;
}

class GateBuilder {
  private c: EffectiveCaps = { maxContextTokens: 8000, maxSteps: 100, maxToolCalls: 100, maxTokens: 1_000_000, maxUsd: 100, maxGpuHours: 0, deadline: null };
  private declared = ['search.web', 'db.read'];
  private overhead = 0;
  private fallbackModel: string | null = null;
  private reservation: number | null = null;

  caps(c: Partial<EffectiveCaps>): this {
    this.c = { ...this.c, ...c };
    return this;
  }

  declare(...tools: string[]): this {
    this.declared = tools;
    return this;
  }

  toolOverhead(tokens: number): this {
    this.overhead = tokens;
    return this;
  }

  /** Without one (the default) the gate can only allow or deny. */
  fallback(model: string): this {
    this.fallbackModel = model;
    return this;
  }

  /** What admission reserved; without it (the default) the reservation is maxUsd, as when maxUsd binds the worst case. */
  reserved(micros: number): this {
    this.reservation = micros;
    return this;
  }

  context(totals: StepTotals, s: StepSpec): StepContext {
    return {
      caps: this.c,
      totals,
      step: s.usage,
      primaryModel: 'llama-3-8b',
      fallbackModel: this.fallbackModel,
      costMicros: s.costMicros,
      fallbackCostMicros: this.fallbackModel === null ? null : (s.fallbackCostMicros ?? s.costMicros),
      reservedMicros: this.reservation ?? Math.round(this.c.maxUsd * 1_000_000),
      tools: { catalog, declared: this.declared },
      toolOverheadTokens: this.overhead,
      degradeAtFraction: 0.8,
      now: s.now ?? T0,
    };
  }
}

const gate = () => new GateBuilder();

const step = (tokensIn: number, tokensOut: number, contextTokens: number, extra: Partial<StepUsage> = {}): StepUsage => ({
  tokensIn,
  tokensOut,
  contextTokens,
  ...extra,
});
const times = (n: number, s: StepSpec): StepSpec[] => Array.from({ length: n }, () => s);

/** Feeds the steps through the gate one after the other; totals move only when a step is let through. */
function run(g: GateBuilder, steps: StepSpec[]) {
  let totals = zeroTotals;
  const answers: string[] = [];
  const reasons = [];
  for (const s of steps) {
    const d = evaluateStep(g.context(totals, s));
    answers.push(d.answer);
    if (d.answer === 'deny') reasons.push(d.reason);
    else totals = d.totals;
  }
  return { answers, reasons, totals };
}

interface Case {
  name: string;
  gate: GateBuilder;
  steps: StepSpec[];
  wantAnswers: string[];
  wantReason?: { code: string; limit: number | string | null; requested: number | string | null; policy: string };
  wantTotals: Partial<StepTotals>;
}

const small: StepSpec = { usage: step(100, 100, 500), costMicros: 1000 };
const searchCall: StepSpec = { usage: step(50, 50, 500, { tool: 'search.web' }), costMicros: 500 };

const cases: Case[] = [
  {
    name: 'maxSteps: the step after the last allowed one is denied',
    gate: gate().caps({ maxSteps: 3 }),
    steps: times(4, small),
    wantAnswers: ['allow', 'allow', 'allow', 'deny'],
    wantReason: { code: 'CAP_MAX_STEPS', limit: 3, requested: 4, policy: 'task#caps.maxSteps' },
    wantTotals: { steps: 3, toolCalls: 0, tokens: 600, costMicros: 3000 },
  },
  {
    name: 'maxToolCalls: the tool call over the cap is denied, a model call after it is not',
    gate: gate().caps({ maxToolCalls: 2 }),
    steps: [searchCall, searchCall, small, searchCall],
    wantAnswers: ['allow', 'allow', 'allow', 'deny'],
    wantReason: { code: 'CAP_MAX_TOOL_CALLS', limit: 2, requested: 3, policy: 'task#caps.maxToolCalls' },
    wantTotals: { steps: 3, toolCalls: 2, tokens: 400, costMicros: 2000 },
  },
  {
    name: 'maxTokens: the step that would cross is denied, a smaller one that lands exactly on the cap is allowed',
    gate: gate().caps({ maxTokens: 10_000 }),
    steps: [...times(4, { usage: step(1500, 1500, 3000), costMicros: 10 }), { usage: step(500, 500, 1000), costMicros: 10 }],
    wantAnswers: ['allow', 'allow', 'allow', 'deny', 'allow'],
    wantReason: { code: 'CAP_MAX_TOKENS', limit: 10_000, requested: 12_000, policy: 'task#caps.maxTokens' },
    wantTotals: { steps: 4, tokens: 10_000, costMicros: 40 },
  },
  {
    name: 'maxContextTokens: a cap on each step, not on the sum; the cap itself is allowed',
    gate: gate().caps({ maxContextTokens: 8000 }),
    steps: [
      { usage: step(10, 10, 2000), costMicros: 1 },
      { usage: step(10, 10, 8000), costMicros: 1 },
      { usage: step(10, 10, 8001), costMicros: 1 },
      { usage: step(10, 10, 100), costMicros: 1 },
    ],
    wantAnswers: ['allow', 'allow', 'deny', 'allow'],
    wantReason: { code: 'CAP_MAX_CONTEXT_TOKENS', limit: 8000, requested: 8001, policy: 'task#caps.maxContextTokens' },
    wantTotals: { steps: 3, tokens: 60, costMicros: 3 },
  },
  {
    name: "maxContextTokens counts the declared tools' definitions",
    gate: gate().caps({ maxContextTokens: 8000 }).toolOverhead(180),
    steps: [
      { usage: step(10, 10, 7820), costMicros: 1 },
      { usage: step(10, 10, 7821), costMicros: 1 },
    ],
    wantAnswers: ['allow', 'deny'],
    wantReason: { code: 'CAP_MAX_CONTEXT_TOKENS', limit: 8000, requested: 8001, policy: 'task#caps.maxContextTokens' },
    wantTotals: { steps: 1, tokens: 20, costMicros: 1 },
  },
  {
    name: 'maxUsd: the step whose price would cross is denied, one that lands exactly on the cap is allowed',
    gate: gate().caps({ maxUsd: 1 }),
    steps: [...times(4, { usage: step(10, 10, 100), costMicros: 300_000 }), { usage: step(10, 10, 100), costMicros: 100_000 }],
    wantAnswers: ['allow', 'allow', 'allow', 'deny', 'allow'],
    wantReason: { code: 'CAP_MAX_USD', limit: 1, requested: 1.2, policy: 'task#caps.maxUsd' },
    wantTotals: { steps: 4, costMicros: 1_000_000 },
  },
  {
    name: 'deadline: the first step after the deadline is denied',
    gate: gate().caps({ deadline: '2026-06-01T12:00:00.000Z' }),
    steps: [
      { ...small, now: '2026-06-01T11:58:00.000Z' },
      { ...small, now: '2026-06-01T11:59:59.999Z' },
      { ...small, now: '2026-06-01T12:00:00.001Z' },
    ],
    wantAnswers: ['allow', 'allow', 'deny'],
    wantReason: { code: 'CAP_DEADLINE', limit: '2026-06-01T12:00:00.000Z', requested: '2026-06-01T12:00:00.001Z', policy: 'task#caps.deadline' },
    wantTotals: { steps: 2 },
  },
  {
    name: 'a tool that is not in the catalog is denied and charges nothing',
    gate: gate(),
    steps: [small, { usage: step(10, 10, 100, { tool: 'rm.rf' }), costMicros: 1 }],
    wantAnswers: ['allow', 'deny'],
    wantReason: { code: 'TOOL_UNKNOWN', limit: null, requested: 'rm.rf', policy: 'tools#catalog' },
    wantTotals: { steps: 1, toolCalls: 0, tokens: 200, costMicros: 1000 },
  },
  {
    name: 'a catalog tool the task did not declare is denied',
    gate: gate().declare('search.web'),
    steps: [{ usage: step(10, 10, 100, { tool: 'tickets.update' }), costMicros: 1 }],
    wantAnswers: ['deny'],
    wantReason: { code: 'TOOL_NOT_ALLOWED', limit: 'search.web', requested: 'tickets.update', policy: 'intent#tools' },
    wantTotals: { steps: 0, toolCalls: 0, tokens: 0, costMicros: 0 },
  },
  {
    name: "a step on a model that is neither the intent's nor its fallback is denied, charges nothing, and the task goes on",
    gate: gate().fallback('small-fast'),
    steps: [small, { usage: step(10, 10, 100, { model: 'frontier-large' }), costMicros: 1 }, small],
    wantAnswers: ['allow', 'deny', 'allow'],
    wantReason: { code: 'MODEL_NOT_ALLOWED', limit: 'llama-3-8b|small-fast', requested: 'frontier-large', policy: 'intent#attribution.model' },
    wantTotals: { steps: 2, tokens: 400, costMicros: 2000 },
  },
  {
    name: "without a fallback, only the intent's model is allowed",
    gate: gate(),
    steps: [
      { usage: step(10, 10, 100, { model: 'llama-3-8b' }), costMicros: 7 },
      { usage: step(10, 10, 100, { model: 'small-fast' }), costMicros: 1 },
    ],
    wantAnswers: ['allow', 'deny'],
    wantReason: { code: 'MODEL_NOT_ALLOWED', limit: 'llama-3-8b', requested: 'small-fast', policy: 'intent#attribution.model' },
    wantTotals: { steps: 1, costMicros: 7 },
  },
  {
    name: 'a step may name the fallback model itself, and is charged its price on it',
    gate: gate().fallback('small-fast'),
    steps: [{ usage: step(10, 10, 100, { model: 'small-fast' }), costMicros: 3, fallbackCostMicros: 3 }],
    wantAnswers: ['allow'],
    wantTotals: { steps: 1, costMicros: 3, degraded: false },
  },
  {
    name: 'the reservation, below maxUsd, is the ceiling: the step that would pass it is denied, one that lands on it is allowed',
    gate: gate().caps({ maxUsd: 1 }).reserved(500_000),
    steps: [
      { usage: step(10, 10, 100), costMicros: 300_000 },
      { usage: step(10, 10, 100), costMicros: 300_000 },
      { usage: step(10, 10, 100), costMicros: 200_000 },
    ],
    wantAnswers: ['allow', 'deny', 'allow'],
    wantReason: { code: 'CAP_RESERVATION', limit: 0.5, requested: 0.6, policy: 'task#plan.worstCaseMicros' },
    wantTotals: { steps: 2, costMicros: 500_000 },
  },
  {
    name: 'a step that would pass the reservation on the primary model degrades when it fits on the fallback',
    gate: gate().caps({ maxUsd: 1 }).reserved(500_000).fallback('small-fast'),
    steps: [
      { usage: step(10, 10, 100), costMicros: 300_000, fallbackCostMicros: 100_000 },
      { usage: step(10, 10, 100), costMicros: 300_000, fallbackCostMicros: 100_000 },
    ],
    wantAnswers: ['allow', 'degrade'],
    wantTotals: { steps: 2, costMicros: 400_000, degraded: true },
  },
  {
    name: 'a fallback dearer than the reservation leaves is denied at the reservation, not at maxUsd',
    gate: gate().caps({ maxUsd: 1 }).reserved(500_000).fallback('small-fast'),
    steps: [{ usage: step(10, 10, 100, { model: 'small-fast' }), costMicros: 600_000, fallbackCostMicros: 600_000 }],
    wantAnswers: ['deny'],
    wantReason: { code: 'CAP_RESERVATION', limit: 0.5, requested: 0.6, policy: 'task#plan.worstCaseMicros' },
    wantTotals: { steps: 0, costMicros: 0 },
  },
];

describe('evaluateStep', () => {
  it.each(cases)('$name', (tc) => {
    const got = run(tc.gate, tc.steps);
    expect(got.answers).toEqual(tc.wantAnswers);
    if (tc.wantReason) {
      expect(got.reasons).toHaveLength(1);
      expect(got.reasons[0]).toMatchObject(tc.wantReason);
    } else {
      expect(got.reasons).toEqual([]);
    }
    expect(got.totals).toMatchObject(tc.wantTotals);
  });

  it('property: fed random steps, committing only what it lets through, the totals never exceed a cap', () => {
    const capsArb = fc.record({
      maxContextTokens: fc.integer({ min: 1, max: 5000 }),
      maxSteps: fc.integer({ min: 1, max: 15 }),
      maxToolCalls: fc.integer({ min: 0, max: 5 }),
      maxTokens: fc.integer({ min: 1, max: 20_000 }),
      maxUsd: fc.integer({ min: 1, max: 2_000_000 }).map((m) => m / 1_000_000),
      maxGpuHours: fc.constant(0),
      deadline: fc.constant(null),
    });
    const stepArb = fc.record({
      usage: fc.record({
        tokensIn: fc.integer({ min: 0, max: 3000 }),
        tokensOut: fc.integer({ min: 0, max: 3000 }),
        contextTokens: fc.integer({ min: 0, max: 6000 }),
        tool: fc.option(fc.constantFrom('search.web', 'db.read', 'tickets.update', 'not.a.tool'), { nil: undefined }),
      }),
      costMicros: fc.integer({ min: 0, max: 400_000 }),
    });
    fc.assert(
      fc.property(capsArb, fc.integer({ min: 0, max: 300 }), fc.array(stepArb, { maxLength: 30 }), (caps, overhead, steps) => {
        const g = gate().caps(caps).declare('search.web', 'db.read').toolOverhead(overhead);
        let totals = zeroTotals;
        let passed = 0;
        let tokens = 0;
        for (const s of steps) {
          const d = evaluateStep(g.context(totals, { usage: s.usage, costMicros: s.costMicros }));
          if (d.answer === 'deny') {
            // A numeric cap is named only when the step really would cross it.
            if (typeof d.reason.limit === 'number' && typeof d.reason.requested === 'number') expect(d.reason.requested).toBeGreaterThan(d.reason.limit);
            continue;
          }
          expect(s.usage.contextTokens + overhead).toBeLessThanOrEqual(caps.maxContextTokens);
          passed++;
          tokens += s.usage.tokensIn + s.usage.tokensOut;
          totals = d.totals;
          expect(totals.steps).toBeLessThanOrEqual(caps.maxSteps);
          expect(totals.toolCalls).toBeLessThanOrEqual(caps.maxToolCalls);
          expect(totals.tokens).toBeLessThanOrEqual(caps.maxTokens);
          expect(totals.costMicros).toBeLessThanOrEqual(Math.round(caps.maxUsd * 1_000_000));
        }
        expect(totals.steps).toBe(passed);
        expect(totals.tokens).toBe(tokens);
      }),
      { numRuns: 500 },
    );
  });

  it('property: with a fallback model, what it lets through (allowed or degraded) never exceeds a cap either', () => {
    const stepArb = fc.record({
      usage: fc.record({
        tokensIn: fc.integer({ min: 0, max: 2000 }),
        tokensOut: fc.integer({ min: 0, max: 2000 }),
        contextTokens: fc.integer({ min: 0, max: 3000 }),
      }),
      costMicros: fc.integer({ min: 0, max: 400_000 }),
      fallbackShare: fc.double({ min: 0, max: 1, noNaN: true }),
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3_000_000 }),
        fc.integer({ min: 1, max: 20_000 }),
        fc.array(stepArb, { maxLength: 30 }),
        (maxMicros, maxTokens, steps) => {
          const maxUsd = maxMicros / 1_000_000;
          const g = gate().caps({ maxUsd, maxTokens, maxContextTokens: 3000 }).fallback('small-fast');
          let totals = zeroTotals;
          for (const s of steps) {
            const d = evaluateStep(
              g.context(totals, { usage: s.usage, costMicros: s.costMicros, fallbackCostMicros: Math.floor(s.costMicros * s.fallbackShare) }),
            );
            if (d.answer === 'deny') continue;
            expect(d.totals.steps).toBe(totals.steps + 1);
            totals = d.totals;
            expect(totals.tokens).toBeLessThanOrEqual(maxTokens);
            expect(totals.costMicros).toBeLessThanOrEqual(maxMicros);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('evaluateStep against what admission reserved', () => {
  // Admission reserves the token cap priced on the intent's model (governance/plan.ts
  // worstCaseMicros), and chargeBudgets spends past the reservation without a hold. gateStep
  // prices each step on the model it runs on, at the price in force now. Once a step could name
  // any model (frontier-large on a llama-3-8b task spent 3x its reservation in one step); now it
  // may name only the intent's model or the fallback, and the gate holds the charges to the
  // reservation too, whatever the fallback or a later price-book version costs.
  const version = priceVersionAt(config.priceBook, T0);
  /** Priced as gateStep prices a step: its input and output tokens on the model it runs on. */
  const priceOn = (v: typeof version, model: string, s: StepUsage) =>
    costMicros(v, { meter: 'tokens_in', quantity: s.tokensIn, subject: model }) + costMicros(v, { meter: 'tokens_out', quantity: s.tokensOut, subject: model });

  it('never lets a hosted agent spend more than the worst case reserved for it', () => {
    const intent = anIntent().agent().build();
    const { caps } = resolveCaps(intent, config.policies.kinds.agent!, config.policies.name);
    const reserved = worstCaseMicros(intent, caps, config, T0);
    expect(reserved).toBe(800_000);
    const s = step(0, 100_000, 1000, { model: 'frontier-large' });
    const d = evaluateStep(
      gate()
        .caps(caps)
        .fallback('small-fast')
        .reserved(reserved)
        .context(zeroTotals, { usage: s, costMicros: priceOn(version, 'frontier-large', s), fallbackCostMicros: priceOn(version, 'small-fast', s) }),
    );
    expect(d).toMatchObject({ answer: 'deny', reason: { code: 'MODEL_NOT_ALLOWED', requested: 'frontier-large', limit: 'llama-3-8b|small-fast' } });
  });

  it('property: on any model, fallback and price-book version, the charges of what it lets through never pass the reservation', () => {
    const models = ['llama-3-8b', 'llama-3-70b', 'small-fast', 'frontier-large'];
    // A later price-book version, dearer by `rise`, takes effect while the task runs.
    const later = (rise: number) => ({
      ...version,
      version: version.version + 1,
      tokensPerMillionUsd: Object.fromEntries(Object.entries(version.tokensPerMillionUsd).map(([m, p]) => [m, { in: p.in * rise, out: p.out * rise }])),
    });
    const stepArb = fc.record({
      tokensIn: fc.integer({ min: 0, max: 60_000 }),
      tokensOut: fc.integer({ min: 0, max: 60_000 }),
      model: fc.option(fc.constantFrom(...models), { nil: undefined }),
      repriced: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.constantFrom(...models),
        fc.option(fc.constantFrom(...models), { nil: null }),
        fc.integer({ min: 1_000, max: 400_000 }),
        fc.integer({ min: 1, max: 20_000_000 }),
        fc.double({ min: 1, max: 10, noNaN: true }),
        fc.array(stepArb, { maxLength: 40 }),
        (primary, fallback, maxTokens, maxMicros, rise, steps) => {
          const intent = anIntent()
            .agent()
            .model(primary)
            .caps({ maxTokens, maxUsd: maxMicros / 1_000_000 })
            .build();
          const { caps } = resolveCaps(intent, config.policies.kinds.agent!, config.policies.name);
          const reserved = worstCaseMicros(intent, caps, config, T0);
          const g = gate()
            .caps({ ...caps, maxContextTokens: 1_000_000, maxSteps: 1000, maxToolCalls: 1000 })
            .reserved(reserved);
          if (fallback !== null) g.fallback(fallback);
          let totals = zeroTotals;
          let charged = 0;
          for (const s of steps) {
            const usage = step(s.tokensIn, s.tokensOut, 100, s.model === undefined ? {} : { model: s.model });
            const v = s.repriced ? later(rise) : version;
            const d = evaluateStep({
              ...g.context(totals, {
                usage,
                costMicros: priceOn(v, usage.model ?? primary, usage),
                ...(fallback !== null ? { fallbackCostMicros: priceOn(v, fallback, usage) } : {}),
              }),
              primaryModel: primary,
            });
            if (d.answer === 'deny') continue;
            expect([primary, fallback]).toContain(d.model);
            charged += d.costMicros;
            totals = d.totals;
            expect(totals.costMicros).toBe(charged);
            expect(charged).toBeLessThanOrEqual(reserved);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});
