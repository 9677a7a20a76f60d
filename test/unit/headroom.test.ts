import { describe, expect, it } from 'vitest';
import { type BudgetHeadroom, decideBudgets } from '../../governance/headroom';
import { usdToMicros } from '../../governance/pricing';
import { aBudget } from '../support/builders';

// decideBudgets is the one budget rule: admit() calls it over a snapshot, reserve() again under the window locks.
describe('decideBudgets', () => {
  const worst = usdToMicros(40);

  it('exactly enough headroom fits; one micro short is refused with BUDGET_EXCEEDED, no retry', () => {
    const exact = aBudget().limitUsd(100).reservedUsd(35).spentUsd(25).build();
    expect(decideBudgets([exact], worst)).toEqual({ ok: true });
    const short = { ...exact, spentMicros: exact.spentMicros + 1 };
    expect(decideBudgets([short], worst)).toEqual({
      ok: false,
      retry: false,
      reasons: [
        {
          code: 'BUDGET_EXCEEDED',
          message: 'worst case $40.00 does not fit the $40.00 left of budget acme/search/* (month 2026-06)',
          limit: 39.999999,
          requested: 40,
          policy: 'budget:acme/search/*:month',
        },
      ],
    });
  });

  it('names every short budget, in the order given, and only those', () => {
    const budgets: BudgetHeadroom[] = [
      aBudget().scope('acme/*/*').limitUsd(10).build(),
      aBudget().scope('acme/search/*').limitUsd(500).build(),
      aBudget().scope('acme/search/ranker').period('week', '2026-W23').limitUsd(50).spentUsd(20).build(),
    ];
    const d = decideBudgets(budgets, worst);
    expect(d).toMatchObject({ ok: false, retry: false });
    expect(!d.ok && d.reasons.map((r) => [r.code, r.message, r.limit, r.requested, r.policy])).toEqual([
      ['BUDGET_EXCEEDED', 'worst case $40.00 does not fit the $10.00 left of budget acme/*/* (month 2026-06)', 10, 40, 'budget:acme/*/*:month'],
      [
        'BUDGET_EXCEEDED',
        'worst case $40.00 does not fit the $30.00 left of budget acme/search/ranker (week 2026-W23)',
        30,
        40,
        'budget:acme/search/ranker:week',
      ],
    ]);
  });

  it('an overdrawn budget reports a headroom of $0, not a negative one', () => {
    const d = decideBudgets([aBudget().limitUsd(100).spentUsd(130).build()], worst);
    expect(!d.ok && d.reasons[0]).toMatchObject({ message: 'worst case $40.00 does not fit the $0.00 left of budget acme/search/* (month 2026-06)', limit: 0 });
  });

  it('a budget whose ladder is at its queue step holds the task (BUDGET_LADDER_QUEUE, retry) even with headroom left', () => {
    const held = { ...aBudget().limitUsd(1000).spentUsd(100).reservedUsd(50).build(), ladderStep: 'queue' as const };
    expect(decideBudgets([held], worst)).toEqual({
      ok: false,
      retry: true,
      reasons: [
        {
          code: 'BUDGET_LADDER_QUEUE',
          message: 'budget acme/search/* (month 2026-06) is at its queue step: new work waits until it is raised, its window resets or spend is released',
          limit: 1000,
          requested: 190,
          policy: 'policies#ladder.queueAt',
        },
      ],
    });
  });

  it('the ladder hold comes before a shortfall: a held task waits rather than being refused', () => {
    const held = { ...aBudget().scope('acme/*/*').limitUsd(1000).build(), ladderStep: 'preempt' as const };
    const short = aBudget().limitUsd(10).build();
    const d = decideBudgets([short, held], worst);
    expect(d).toMatchObject({ ok: false, retry: true });
    expect(!d.ok && d.reasons.map((r) => r.code)).toEqual(['BUDGET_LADDER_QUEUE']);
    expect(!d.ok && d.reasons[0]!.message).toContain('acme/*/* (month 2026-06) is at its preempt step');
  });

  it('ladder steps below queue do not hold', () => {
    for (const step of ['ok', 'notify', 'throttle'] as const) {
      expect(decideBudgets([{ ...aBudget().build(), ladderStep: step }], worst)).toEqual({ ok: true });
    }
  });

  it('no covering budget: nothing to refuse (requiring one is admission policy, policies.requireBudget)', () => {
    expect(decideBudgets([], worst)).toEqual({ ok: true });
  });
});
