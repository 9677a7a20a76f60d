/** Budget periods and the window a moment falls in. Pure: the caller passes the time. */
export const Periods = ['day', 'week', 'month', 'total'] as const;
export type Period = (typeof Periods)[number];

/** The key of the budget window that holds `at` (UTC): 2026-11-22, 2026-W47, 2026-11, total. */
export function windowKey(period: Period, at: Date): string {
  const iso = at.toISOString();
  switch (period) {
    case 'day':
      return iso.slice(0, 10);
    case 'month':
      return iso.slice(0, 7);
    case 'total':
      return 'total';
    case 'week': {
      // ISO week: the week with the year's first Thursday is week 1.
      const d = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate()));
      const day = d.getUTCDay() || 7;
      d.setUTCDate(d.getUTCDate() + 4 - day);
      const yearStart = Date.UTC(d.getUTCFullYear(), 0, 1);
      const week = Math.ceil(((d.getTime() - yearStart) / 86_400_000 + 1) / 7);
      return `${d.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
    }
  }
}

/** The window of `period` that holds `at` (UTC), as [start, end); `total` has no end. */
export function windowBounds(period: Period, at: Date): { start: Date; end: Date | null } {
  const y = at.getUTCFullYear();
  const m = at.getUTCMonth();
  const d = at.getUTCDate();
  switch (period) {
    case 'day':
      return { start: new Date(Date.UTC(y, m, d)), end: new Date(Date.UTC(y, m, d + 1)) };
    case 'month':
      return { start: new Date(Date.UTC(y, m, 1)), end: new Date(Date.UTC(y, m + 1, 1)) };
    case 'week': {
      const monday = d - ((at.getUTCDay() + 6) % 7);
      return { start: new Date(Date.UTC(y, m, monday)), end: new Date(Date.UTC(y, m, monday + 7)) };
    }
    case 'total':
      return { start: new Date(0), end: null };
  }
}
