/**
 * The dashboard's pure parts: a budget's share, which audit rows count as enforcement, the ISO
 * weeks shown, and Temporal UI links. (The ladder itself: test/unit/ladder.test.ts.)
 */
import { describe, expect, it } from 'vitest';
import { budgetShare, enforcementKind, lastWeeks, temporalTaskUrl, weekStart } from '../../server/dashboard';

describe('budgetShare', () => {
  const cases: { name: string; spent: number; limit: number; want: number }[] = [
    { name: 'nothing spent', spent: 0, limit: 40_000_000, want: 0 },
    { name: 'part spent', spent: 34_000_000, limit: 40_000_000, want: 0.85 },
    { name: 'over the limit', spent: 44_000_000, limit: 40_000_000, want: 1.1 },
    { name: 'zero limit, nothing spent', spent: 0, limit: 0, want: 0 },
    { name: 'zero limit, something spent', spent: 1, limit: 0, want: Number.POSITIVE_INFINITY },
  ];
  it.each(cases)('$name', ({ spent, limit, want }) => {
    expect(budgetShare(spent, limit)).toBe(want);
  });
});

describe('enforcementKind', () => {
  const cases: { action: string; decision: string; want: ReturnType<typeof enforcementKind> }[] = [
    { action: 'admission', decision: 'rejected', want: 'admission-rejected' },
    { action: 'admission', decision: 'queued', want: 'queued' },
    { action: 'admission', decision: 'admitted', want: null },
    { action: 'reserve', decision: 'rejected', want: 'budget-rejected' },
    { action: 'reserve', decision: 'held', want: null },
    { action: 'step', decision: 'deny', want: 'step-denied' },
    { action: 'step', decision: 'degrade', want: 'step-degraded' },
    { action: 'step', decision: 'await-approval', want: 'held-for-approval' },
    { action: 'step', decision: 'allow', want: null },
    { action: 'approval', decision: 'approved', want: 'approved' },
    { action: 'approval', decision: 'rejected', want: 'approval-rejected' },
    { action: 'approval', decision: 'expired', want: 'approval-expired' },
    { action: 'approval.escalated', decision: 'tier-1', want: 'approval-escalated' },
    { action: 'approval.refused', decision: 'self-approval', want: 'approval-refused' },
    { action: 'settle', decision: 'CapExceeded', want: 'cap-stop' },
    { action: 'settle', decision: 'Cancelled', want: 'cancelled' },
    { action: 'settle', decision: 'Succeeded', want: null },
    { action: 'compensation', decision: 'done', want: 'compensated' },
    { action: 'compensation', decision: 'failed', want: 'compensation-failed' },
    { action: 'operator.resolve', decision: 'Failed', want: 'operator-resolved' },
    { action: 'budget.set', decision: 'recorded', want: null },
    { action: 'dispatch', decision: 'running', want: null },
  ];
  it.each(cases)('$action/$decision → $want', ({ action, decision, want }) => {
    expect(enforcementKind(action, decision)).toBe(want);
  });
});

describe('weeks', () => {
  it.each([
    { at: '2026-11-24T03:07:00Z', want: '2026-11-23' }, // a Tuesday
    { at: '2026-11-23T00:00:00Z', want: '2026-11-23' }, // Monday midnight
    { at: '2026-11-22T23:59:59Z', want: '2026-11-16' }, // Sunday night
    { at: '2027-01-01T12:00:00Z', want: '2026-12-28' }, // across a year
  ])('the week of $at starts on $want', ({ at, want }) => {
    expect(weekStart(new Date(at)).toISOString()).toBe(`${want}T00:00:00.000Z`);
  });
  it('lists the last n weeks, this one last, back to back', () => {
    const weeks = lastWeeks(new Date('2026-11-24T03:07:00Z'), 3).map((w) => [w.start.toISOString().slice(0, 10), w.end.toISOString().slice(0, 10)]);
    expect(weeks).toEqual([
      ['2026-11-09', '2026-11-16'],
      ['2026-11-16', '2026-11-23'],
      ['2026-11-23', '2026-11-30'],
    ]);
  });
});

describe('temporalTaskUrl', () => {
  it.each([
    { ui: undefined, ns: undefined, task: 'job-1', want: null },
    { ui: 'http://localhost:8233', ns: undefined, task: 'job-1', want: 'http://localhost:8233/namespaces/default/workflows/job-1' },
    { ui: 'https://cloud.temporal.io/', ns: 'my-ns.a1b2c', task: 'a b/c', want: 'https://cloud.temporal.io/namespaces/my-ns.a1b2c/workflows/a%20b%2Fc' },
  ])('$ui $ns $task', ({ ui, ns, task, want }) => {
    expect(temporalTaskUrl({ ...(ui ? { temporalUiUrl: ui } : {}), ...(ns ? { temporalNamespace: ns } : {}) }, task)).toBe(want);
  });
});
