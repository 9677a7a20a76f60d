import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Period, windowKey } from '../../governance/periods';

const DAY = 86_400_000;

describe('windowKey', () => {
  it.each<{ name: string; period: Period; at: string; want: string }>([
    { name: 'the last millisecond of a UTC day', period: 'day', at: '2026-11-22T23:59:59.999Z', want: '2026-11-22' },
    { name: 'the first millisecond of the next UTC day', period: 'day', at: '2026-11-23T00:00:00.000Z', want: '2026-11-23' },
    { name: 'a local time east of UTC falls in the UTC day', period: 'day', at: '2026-11-23T01:00:00+02:00', want: '2026-11-22' },
    { name: 'a local time west of UTC falls in the UTC day', period: 'day', at: '2026-11-22T20:00:00-05:00', want: '2026-11-23' },
    { name: 'the last millisecond of a month', period: 'month', at: '2026-11-30T23:59:59.999Z', want: '2026-11' },
    { name: 'the first millisecond of the next month', period: 'month', at: '2026-12-01T00:00:00.000Z', want: '2026-12' },
    { name: 'a leap day', period: 'month', at: '2028-02-29T12:00:00Z', want: '2028-02' },
    { name: "New Year's Eve in New York is already January in UTC", period: 'month', at: '2026-12-31T23:30:00-05:00', want: '2027-01' },
    { name: 'total is one window forever', period: 'total', at: '2026-11-22T12:00:00Z', want: 'total' },
    { name: 'total, years later', period: 'total', at: '2099-01-01T00:00:00Z', want: 'total' },
    { name: 'a Sunday ends its ISO week', period: 'week', at: '2026-11-22T23:59:59.999Z', want: '2026-W47' },
    { name: 'a Monday starts the next ISO week', period: 'week', at: '2026-11-23T00:00:00.000Z', want: '2026-W48' },
    { name: 'Thursday 1 January is in week 1', period: 'week', at: '2026-01-01T00:00:00Z', want: '2026-W01' },
    { name: 'Monday 29 December belongs to week 1 of the next year', period: 'week', at: '2025-12-29T00:00:00Z', want: '2026-W01' },
    { name: 'Friday 1 January belongs to week 53 of the year before', period: 'week', at: '2027-01-01T00:00:00Z', want: '2026-W53' },
    { name: 'Sunday 3 January still belongs to the year before', period: 'week', at: '2027-01-03T23:59:59Z', want: '2026-W53' },
    { name: 'the first Monday of 2027 starts week 1', period: 'week', at: '2027-01-04T00:00:00Z', want: '2027-W01' },
    { name: '2020 has 53 weeks', period: 'week', at: '2021-01-03T12:00:00Z', want: '2020-W53' },
    { name: 'Monday 30 December 2024 is in 2025-W01', period: 'week', at: '2024-12-30T00:00:00Z', want: '2025-W01' },
    { name: 'single-digit weeks are zero-padded', period: 'week', at: '2026-02-10T00:00:00Z', want: '2026-W07' },
  ])('$period: $name → $want', ({ period, at, want }) => {
    expect(windowKey(period, new Date(at))).toBe(want);
  });

  // ISO 8601, stated independently of the implementation: a week runs Monday to Sunday (UTC) and
  // belongs to the year of its Thursday; week n is the n-th Thursday of that year.
  it('property: ISO weeks run Monday to Sunday and are numbered by their Thursday', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(1971, 0, 1), max: Date.UTC(2200, 0, 1) }), (t) => {
        const at = new Date(t);
        const dayStart = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
        const monday = dayStart - ((at.getUTCDay() + 6) % 7) * DAY;
        const thursday = new Date(monday + 3 * DAY);
        const year = thursday.getUTCFullYear();
        const dayOfYear = (thursday.getTime() - Date.UTC(year, 0, 1)) / DAY;
        const want = `${year}-W${String(Math.floor(dayOfYear / 7) + 1).padStart(2, '0')}`;
        expect(windowKey('week', at)).toBe(want);
        expect(windowKey('week', new Date(monday))).toBe(want);
        expect(windowKey('week', new Date(monday + 7 * DAY - 1))).toBe(want);
        expect(windowKey('week', new Date(monday - 1))).not.toBe(want);
      }),
      { numRuns: 2000 },
    );
  });

  it('property: day and month keys are the UTC calendar date of the moment', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(1971, 0, 1), max: Date.UTC(2200, 0, 1) }), (t) => {
        const at = new Date(t);
        const mm = String(at.getUTCMonth() + 1).padStart(2, '0');
        const dd = String(at.getUTCDate()).padStart(2, '0');
        expect(windowKey('day', at)).toBe(`${at.getUTCFullYear()}-${mm}-${dd}`);
        expect(windowKey('month', at)).toBe(`${at.getUTCFullYear()}-${mm}`);
      }),
    );
  });
});
