import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { PoliciesFile } from '../../config/schema';
import { fieldErrors } from '../../governance/intent';
import { SloList, costObjective, fallbackForbiddenBy, latencyObjective, percentile, sloCovers, sloLabel, successObjective } from '../../governance/slo';

describe('percentile (nearest rank)', () => {
  it('p95 of 1..100 is 95, of 1..20 is 19, of one sample is that sample, of none is null', () => {
    const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
    expect([percentile(range(100), 95), percentile(range(20).reverse(), 95), percentile([7], 95), percentile([], 95)]).toEqual([95, 19, 7, null]);
  });
});

describe('objectives', () => {
  it('latency: p95 against the target; the error budget is 5 % of samples over it', () => {
    // 100 samples, 2 over 500 ms: p95 met, 2 of the 5 allowed spent.
    const values = [...Array.from({ length: 98 }, () => 100), 900, 1000];
    expect(latencyObjective('stepLatencyP95Ms', 500, values)).toEqual({
      objective: 'stepLatencyP95Ms',
      target: 500,
      measured: 100,
      met: true,
      errorBudgetRemaining: 0.6,
      samples: 100,
    });
    // 10 of 100 over: p95 missed, budget spent (not negative).
    const bad = [...Array.from({ length: 90 }, () => 100), ...Array.from({ length: 10 }, () => 800)];
    expect(latencyObjective('stepLatencyP95Ms', 500, bad)).toMatchObject({ measured: 800, met: false, errorBudgetRemaining: 0 });
    expect(latencyObjective('queueWaitP95Seconds', 60, [])).toEqual({
      objective: 'queueWaitP95Seconds',
      target: 60,
      measured: null,
      met: null,
      errorBudgetRemaining: null,
      samples: 0,
    });
  });
  it('success rate: (1 - target) of the finished tasks may fail', () => {
    expect(successObjective(0.9, 19, 20)).toMatchObject({ measured: 0.95, met: true, errorBudgetRemaining: 0.5, samples: 20 });
    expect(successObjective(0.9, 17, 20)).toMatchObject({ measured: 0.85, met: false, errorBudgetRemaining: 0 });
    expect([successObjective(1, 4, 4).errorBudgetRemaining, successObjective(1, 3, 4).errorBudgetRemaining]).toEqual([1, 0]);
  });
  it('cost per task: the mean, with no error budget', () => {
    expect(costObjective(2, [1, 2, 4.5])).toEqual({
      objective: 'costPerTaskUsd',
      target: 2,
      measured: 2.5,
      met: false,
      errorBudgetRemaining: null,
      samples: 3,
    });
  });
});

describe('SLO config', () => {
  it('the shipped policies declare SLOs for the demo use cases; ticket-triage forbids the fallback', () => {
    const { slos } = loadConfig().policies;
    expect(slos.map((s) => sloLabel(s.scope))).toEqual(['acme/support/ticket-triage', 'acme/search/relevance', 'globex/ml/support-bot']);
    expect(slos[1]!.windowDays).toBe(7);
    const triage = { tenant: 'acme', team: 'support', useCase: 'ticket-triage' };
    expect(fallbackForbiddenBy(slos, triage)?.scope).toEqual(triage);
    expect(fallbackForbiddenBy(slos, { ...triage, useCase: 'chat' })).toBeNull();
  });
  it('a scope without team or use case covers all of its tenant', () => {
    expect(sloCovers({ tenant: 'acme' }, { tenant: 'acme', team: 'x', useCase: 'y' })).toBe(true);
    expect(sloCovers({ tenant: 'acme', team: 'x' }, { tenant: 'acme', team: 'z', useCase: 'y' })).toBe(false);
    expect(sloLabel({ tenant: 'acme', useCase: 'chat' })).toBe('acme/*/chat');
  });
  it('bad SLOs are refused with their field paths', () => {
    const r = SloList.safeParse([
      { scope: { tenant: 'acme' }, objectives: { successRate: 1.5 } },
      { scope: { tenant: 'acme', team: 'a' }, objectives: {} },
      { scope: { tenant: 'acme' }, objectives: { costPerTaskUsd: 1 }, windowDays: 0, forbidsFallback: 'yes' },
      { scope: { tenant: 'acme', project: 'p' }, objectives: { stepLatencyP95Ms: -1 } },
    ]);
    expect(r.success).toBe(false);
    const paths = fieldErrors(r.error!).map((e) => e.path);
    expect(paths).toEqual(
      expect.arrayContaining(['0.objectives.successRate', '1.objectives', '2.windowDays', '2.forbidsFallback', '3.scope', '3.objectives.stepLatencyP95Ms']),
    );
    // A scope given twice: the second is named.
    const dup = SloList.safeParse([
      { scope: { tenant: 'acme', team: 'a' }, objectives: { successRate: 0.9 } },
      { scope: { tenant: 'acme', team: 'a' }, objectives: { costPerTaskUsd: 1 } },
    ]);
    expect(fieldErrors(dup.error!)).toEqual([{ path: '1.scope', message: 'scope acme/a/* already has an SLO (slos.0)' }]);
  });
  it('policies without slos parse to none', () => {
    const p = { ...loadConfig().policies } as Record<string, unknown>;
    delete p.slos;
    expect(PoliciesFile.parse(p).slos).toEqual([]);
  });
});
