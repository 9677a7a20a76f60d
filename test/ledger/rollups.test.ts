import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PriceBookVersion } from '../../config/schema';
import { type Meter, costMicros, priceVersionAt } from '../../governance/pricing';
import { UNATTRIBUTED, rollUp, rollupUsageBy, showback } from '../../ledger/rollups';
import { type UsageEvent, recordUsage } from '../../ledger/usage';
import { type Ledger, attributionOf, backends, newTenant } from './backends';

/** Two price versions: GPU and token prices double at 2026-06-15T00:00Z, in the middle of the data. */
const v1: PriceBookVersion = {
  version: 1,
  effectiveFrom: '2026-01-01T00:00:00Z',
  gpuHourUsd: { H100: { exclusive: 4, mps: 1.5, timeslice: 1, mig: 0.6 }, A100: { exclusive: 2, mps: 0.8, timeslice: 0.6, mig: 0.3 } },
  tokensPerMillionUsd: { default: { in: 3, out: 15 }, 'llama-3-8b': { in: 0.2, out: 0.4 }, 'small-fast': { in: 0.1, out: 0.2 } },
};
const v2: PriceBookVersion = {
  ...v1,
  version: 2,
  effectiveFrom: '2026-06-15T00:00:00Z',
  gpuHourUsd: { H100: { exclusive: 8, mps: 3, timeslice: 2, mig: 1.2 }, A100: { exclusive: 4, mps: 1.6, timeslice: 1.2, mig: 0.6 } },
  tokensPerMillionUsd: { default: { in: 6, out: 30 }, 'llama-3-8b': { in: 0.4, out: 0.8 }, 'small-fast': { in: 0.2, out: 0.4 } },
};
const book = [v1, v2];
const DAY0 = Date.parse('2026-06-14T00:00:00Z');
const day = (d: number) => new Date(DAY0 + d * 86_400_000);

const teams = ['search', 'ads', 'support'];
const models = ['llama-3-8b', 'small-fast'];
const meterSubjects: { meter: Meter; subject: (model: string) => string }[] = [
  { meter: 'tokens_in', subject: (m) => m },
  { meter: 'tokens_out', subject: (m) => m },
  { meter: 'gpu_seconds', subject: () => 'H100:exclusive' },
  { meter: 'gpu_seconds', subject: () => 'A100:mps' },
];

/** `n` distinct events of one tenant over three days (seeded), each with the cost the ledger must charge. */
function makeEvents(tenant: string, n: number, seed: number): { e: UsageEvent; cost: number; team: string; model: string; day: number }[] {
  const events = fc.sample(
    fc.record({
      team: fc.constantFrom(...teams),
      model: fc.constantFrom(...models),
      ms: fc.constantFrom(...meterSubjects),
      quantity: fc.integer({ min: 1, max: 50_000 }),
      at: fc.integer({ min: DAY0, max: DAY0 + 3 * 86_400_000 - 1 }),
    }),
    { numRuns: n, seed },
  );
  return events.map((x, i) => {
    const e: UsageEvent = {
      key: `rollup-test:${tenant}:${i}`,
      taskId: null,
      attribution: attributionOf(tenant, { team: x.team, model: x.model }),
      meter: x.ms.meter,
      subject: x.ms.subject(x.model),
      quantity: x.quantity,
      occurredAt: new Date(x.at),
    };
    const cost = costMicros(priceVersionAt(book, e.occurredAt.toISOString()), { meter: x.ms.meter, quantity: x.quantity, subject: e.subject });
    return { e, cost, team: x.team, model: x.model, day: Math.floor((x.at - DAY0) / 86_400_000) };
  });
}

/** Fisher–Yates with a seeded generator: the same "random" order on every run. */
function shuffle<T>(xs: T[], seed: number): T[] {
  const order = fc.sample(fc.integer({ min: 0, max: 2 ** 30 }), { numRuns: xs.length, seed });
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = order[i]! % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe.each(backends)('usage rollups on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('10,000 events, 30% re-sent, in random order: hourly and daily rollups equal the deduplicated truth to the micro-dollar', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const truth = makeEvents(tenant, 10_000, 7);
    const resent = truth.filter((_, i) => i % 10 < 3).map((t) => t.e);
    const deliveries = shuffle([...truth.map((t) => t.e), ...resent], 11);
    let accepted = 0;
    let duplicates = 0;
    for (let i = 0; i < deliveries.length; i += 500) {
      const r = await recordUsage(db, book, deliveries.slice(i, i + 500));
      accepted += r.accepted;
      duplicates += r.duplicates;
      // A rollup in the middle of the stream: later events must land in buckets already rolled up.
      if (i === 6_500) await rollUp(db, { lateArrivalSeconds: 0 });
    }
    expect({ accepted, duplicates }).toEqual({ accepted: 10_000, duplicates: 3_000 });
    // No late-arrival margin: only the watermark decides which buckets the second run recomputes.
    await rollUp(db, { lateArrivalSeconds: 0 });

    // Daily grain, by team × model × meter, for each of the three days.
    for (let d = 0; d < 3; d++) {
      const want = new Map<string, { cost: number; events: number; quantity: number }>();
      for (const t of truth.filter((x) => x.day === d)) {
        const k = `${t.team}|${t.model}|${t.e.meter}`;
        const w = want.get(k) ?? { cost: 0, events: 0, quantity: 0 };
        w.cost += t.cost;
        w.events += 1;
        w.quantity += t.e.quantity;
        want.set(k, w);
      }
      const rows = await rollupUsageBy(db, ['team', 'model', 'meter'], day(d), day(d + 1), tenant);
      const got = new Map(
        rows.map((r) => [
          `${r.team}|${r.model}|${r.meter}`,
          { cost: Math.round(r.costUsd * 1e6), events: r.events, quantity: r.meter === 'gpu_seconds' ? Math.round(r.gpuHours * 3600) : r.tokens },
        ]),
      );
      expect(got).toEqual(want);
    }

    // Hourly grain: every hour of the second day, all dimensions summed, against the truth.
    const hourRows = await Promise.all(
      Array.from({ length: 24 }, (_, h) =>
        rollupUsageBy(db, [], new Date(day(1).getTime() + h * 3_600_000), new Date(day(1).getTime() + (h + 1) * 3_600_000), tenant),
      ),
    );
    const wantHours = Array.from({ length: 24 }, (_, h) => {
      const ts = truth.filter((t) => Math.floor((t.e.occurredAt.getTime() - day(1).getTime()) / 3_600_000) === h);
      return { cost: ts.reduce((s, t) => s + t.cost, 0), events: ts.length };
    });
    expect(hourRows.map((r) => ({ cost: Math.round((r[0]?.costUsd ?? 0) * 1e6), events: r[0]?.events ?? 0 }))).toEqual(wantHours);

    // And the rollups agree with the raw events the ledger kept.
    const raw = await db.query<{ cost: number }>(
      'SELECT SUM(u.cost_micros)::bigint AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1',
      [tenant],
    );
    const all = await rollupUsageBy(db, [], day(0), day(3), tenant);
    expect(Math.round(all[0]!.costUsd * 1e6)).toBe(raw.rows[0]!.cost);
    expect(raw.rows[0]!.cost).toBe(truth.reduce((s, t) => s + t.cost, 0));
  });

  it('prices each event with the version in force at its time; a late event lands in its own hour and day', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const a = attributionOf(tenant);
    // One H100-hour each side of the price change: $4 under v1, $8 under v2.
    const ev = (key: string, at: string): UsageEvent => ({
      key: `${tenant}:${key}`,
      taskId: null,
      attribution: a,
      meter: 'gpu_seconds',
      subject: 'H100:exclusive',
      quantity: 3600,
      occurredAt: new Date(at),
    });
    await recordUsage(db, book, [ev('a', '2026-06-14T23:30:00Z'), ev('b', '2026-06-15T00:30:00Z')]);
    await rollUp(db, { lateArrivalSeconds: 0 });
    const byDay = async () => Promise.all([0, 1, 2].map(async (d) => (await rollupUsageBy(db, [], day(d), day(d + 1), tenant))[0]?.costUsd ?? 0));
    expect(await byDay()).toEqual([4, 8, 0]);

    // Recorded now, for an hour two days ago: the next run recomputes that hour and day.
    await recordUsage(db, book, [ev('late', '2026-06-14T05:10:00Z')]);
    await rollUp(db, { lateArrivalSeconds: 0 });
    expect(await byDay()).toEqual([8, 8, 0]);
    const fiveAm = await rollupUsageBy(db, [], new Date('2026-06-14T05:00:00Z'), new Date('2026-06-14T06:00:00Z'), tenant);
    expect(fiveAm[0]).toMatchObject({ costUsd: 4, gpuHours: 1, events: 1 });

    // Running again with nothing new changes nothing.
    await rollUp(db);
    expect(await byDay()).toEqual([8, 8, 0]);
  });

  it('counts usage without full attribution as unattributed, never drops it', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const at = new Date('2026-06-16T10:00:00Z');
    await recordUsage(db, book, [
      { key: `${tenant}:ok`, taskId: null, attribution: attributionOf(tenant), meter: 'tokens_in', subject: 'llama-3-8b', quantity: 1_000_000, occurredAt: at },
      {
        key: `${tenant}:noteam`,
        taskId: null,
        attribution: attributionOf(tenant, { team: '', project: '' }),
        meter: 'tokens_in',
        subject: 'llama-3-8b',
        quantity: 2_000_000,
        occurredAt: at,
      },
    ]);
    await rollUp(db);
    const rows = await rollupUsageBy(db, ['team'], day(2), day(3), tenant);
    expect(rows.map((r) => [r.team, r.costUsd, r.tokens])).toEqual([
      [UNATTRIBUTED, 0.8, 2_000_000],
      ['search', 0.4, 1_000_000],
    ]);
    const report = await showback(db, { by: ['team'], from: day(2), to: day(3), tenant });
    expect(report.totalCostUsd).toBeCloseTo(1.2, 9);
    expect(report.unattributed).toEqual({ costUsd: 0.8, events: 1 });
    expect(report.unitCosts.per1MTokensUsd).toBeCloseTo(0.4, 9);
  });

  it('two rollups at once both finish and leave exact figures', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const truth = makeEvents(tenant, 600, 3);
    const other = ledger.pool(2);
    await Promise.all([
      (async () => {
        for (let i = 0; i < truth.length; i += 100)
          await recordUsage(
            db,
            book,
            truth.slice(i, i + 100).map((t) => t.e),
          );
      })(),
      rollUp(other),
      rollUp(db),
    ]);
    await Promise.all([rollUp(other), rollUp(db)]);
    const all = await rollupUsageBy(db, [], day(0), day(3), tenant);
    expect(Math.round(all[0]!.costUsd * 1e6)).toBe(truth.reduce((s, t) => s + t.cost, 0));
    expect(all[0]!.events).toBe(600);
  });
});

describe('showback unit costs', () => {
  it('has no unit cost where there is nothing to divide by', async () => {
    const ledger = await backends[1]!.open();
    try {
      const r = await showback(ledger.db, { by: ['team'], from: day(0), to: day(1), tenant: `t-${randomUUID()}` });
      expect(r).toMatchObject({
        rows: [],
        totalCostUsd: 0,
        unitCosts: { per1MTokensUsd: null, perGpuHourUsd: null, perAgentTaskUsd: null, perTrainingJobUsd: null },
        unattributed: { costUsd: 0, events: 0 },
        idle: null,
      });
    } finally {
      await ledger.close();
    }
  });
});
