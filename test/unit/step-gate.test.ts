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

  context(totals: StepTotals, s: StepSpec): StepContext {
    return {
      caps: this.c,
      totals,
      step: s.usage,
      primaryModel: 'llama-3-8b',
      fallbackModel: this.fallbackModel,
      costMicros: s.costMicros,
      fallbackCostMicros: this.fallbackModel === null ? null : (s.fallbackCostMicros ?? s.costMicros),
      tools: { catalog, declared: this.declared },
      toolOverheadTokens: this.overhead,
      degradeAtFraction: 0.8,
      now: s.now ?? T0,
    };
  }
}

const gate = () => new GateBuilder();

const step = (tokensIn: number, tokensOut: number, contextTokens: number, extra: Partial<StepUsage> = {}): StepUsage => ({ tokensIn, tokensOut, contextTokens, ...extra });
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
    steps: [{ usage: step(10, 10, 2000), costMicros: 1 }, { usage: step(10, 10, 8000), costMicros: 1 }, { usage: step(10, 10, 8001), costMicros: 1 }, { usage: step(10, 10, 100), costMicros: 1 }],
    wantAnswers: ['allow', 'allow', 'deny', 'allow'],
    wantReason: { code: 'CAP_MAX_CONTEXT_TOKENS', limit: 8000, requested: 8001, policy: 'task#caps.maxContextTokens' },
    wantTotals: { steps: 3, tokens: 60, costMicros: 3 },
  },
  {
    name: "maxContextTokens counts the declared tools' definitions",
    gate: gate().caps({ maxContextTokens: 8000 }).toolOverhead(180),
    steps: [{ usage: step(10, 10, 7820), costMicros: 1 }, { usage: step(10, 10, 7821), costMicros: 1 }],
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
      usage: fc.record({ tokensIn: fc.integer({ min: 0, max: 2000 }), tokensOut: fc.integer({ min: 0, max: 2000 }), contextTokens: fc.integer({ min: 0, max: 3000 }) }),
      costMicros: fc.integer({ min: 0, max: 400_000 }),
      fallbackShare: fc.double({ min: 0, max: 1, noNaN: true }),
    });
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 3_000_000 }), fc.integer({ min: 1, max: 20_000 }), fc.array(stepArb, { maxLength: 30 }), (maxMicros, maxTokens, steps) => {
        const maxUsd = maxMicros / 1_000_000;
        const g = gate().caps({ maxUsd, maxTokens, maxContextTokens: 3000 }).fallback('small-fast');
        let totals = zeroTotals;
        for (const s of steps) {
          const d = evaluateStep(g.context(totals, { usage: s.usage, costMicros: s.costMicros, fallbackCostMicros: Math.floor(s.costMicros * s.fallbackShare) }));
          if (d.answer === 'deny') continue;
          expect(d.totals.steps).toBe(totals.steps + 1);
          totals = d.totals;
          expect(totals.tokens).toBeLessThanOrEqual(maxTokens);
          expect(totals.costMicros).toBeLessThanOrEqual(maxMicros);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('evaluateStep against what admission reserved', () => {
  // BUG: a step may name any model (StepUsage.model), and gateStep (activities/index.ts) prices it
  // on that model, but the worst case reserved at admission (governance/plan.ts worstCaseMicros)
  // prices the token cap on the intent's attribution.model only. The gate checks only maxUsd, so
  // an agent on llama-3-8b (reserved: 2M tokens x $0.40/M = $0.80) is allowed one 100k-token step
  // on frontier-large ($2.50) and spends 3x its reservation; chargeBudgets then spends the excess
  // without a hold, past the budget the reservation was checked against.
  it.fails('never lets a hosted agent spend more than the worst case reserved for it', () => {
    const intent = anIntent().agent().build();
    const { caps } = resolveCaps(intent, config.policies.kinds.agent!, config.policies.name);
    const reserved = worstCaseMicros(intent, caps, config, T0);
    expect(reserved).toBe(800_000);
    const version = priceVersionAt(config.priceBook, T0);
    // Priced as gateStep prices a step: its input and output tokens on the model it runs on.
    const price = (model: string, s: StepUsage) =>
      costMicros(version, { meter: 'tokens_in', quantity: s.tokensIn, subject: model }) + costMicros(version, { meter: 'tokens_out', quantity: s.tokensOut, subject: model });
    const s = step(0, 100_000, 1000, { model: 'frontier-large' });
    const d = evaluateStep(gate().caps(caps).fallback('small-fast').context(zeroTotals, { usage: s, costMicros: price('frontier-large', s), fallbackCostMicros: price('small-fast', s) }));
    const charged = d.answer === 'deny' ? 0 : d.totals.costMicros;
    expect(charged).toBeLessThanOrEqual(reserved);
  });
});
