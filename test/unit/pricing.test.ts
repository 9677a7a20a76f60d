import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import type { PriceBookVersion } from '../../config/schema';
import { type PricedUsage, costMicros, microsToUsd, priceVersionAt, usdToMicros } from '../../governance/pricing';

const v1 = loadConfig().priceBook[0]!;

/** A later version: every price multiplied by `factor`. */
function laterVersion(version: number, effectiveFrom: string, factor: number): PriceBookVersion {
  const scale = <T extends Record<string, number>>(o: T) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v * factor])) as T;
  return {
    version,
    effectiveFrom,
    gpuHourUsd: Object.fromEntries(Object.entries(v1.gpuHourUsd).map(([t, p]) => [t, scale(p)])),
    tokensPerMillionUsd: Object.fromEntries(Object.entries(v1.tokensPerMillionUsd).map(([m, p]) => [m, scale(p)])),
  };
}

const v2 = laterVersion(2, '2026-07-01T00:00:00Z', 2);
const v3 = laterVersion(3, '2027-01-01T00:00:00Z', 3);
const book = [v1, v2, v3];

describe('priceVersionAt', () => {
  it.each([
    { at: '2026-03-01T00:00:00Z', wantVersion: 1 },
    { at: '2026-06-30T23:59:59.999Z', wantVersion: 1 },
    { at: '2026-07-01T00:00:00.000Z', wantVersion: 2 },
    { at: '2026-07-01T02:00:00+02:00', wantVersion: 2 },
    { at: '2026-07-01T01:59:59+02:00', wantVersion: 1 },
    { at: '2026-12-31T23:59:59Z', wantVersion: 2 },
    { at: '2030-01-01T00:00:00Z', wantVersion: 3 },
    // Before the first version there is nothing else to price with.
    { at: '2025-01-01T00:00:00Z', wantVersion: 1 },
  ])('at $at the version in force is v$wantVersion', ({ at, wantVersion }) => {
    expect(priceVersionAt(book, at).version).toBe(wantVersion);
  });

  it('refuses an empty price book', () => {
    expect(() => priceVersionAt([], '2026-01-01T00:00:00Z')).toThrow(/price book is empty/);
  });
});

describe('costMicros', () => {
  it.each<{ name: string; usage: PricedUsage; wantMicros: number }>([
    { name: 'an H100-hour, exclusive', usage: { meter: 'gpu_seconds', quantity: 3600, subject: 'H100:exclusive' }, wantMicros: 4_000_000 },
    { name: 'one H100-second rounds to the nearest micro-dollar', usage: { meter: 'gpu_seconds', quantity: 1, subject: 'H100:exclusive' }, wantMicros: 1111 },
    { name: 'an H100-hour under MPS', usage: { meter: 'gpu_seconds', quantity: 3600, subject: 'H100:mps' }, wantMicros: 1_500_000 },
    {
      name: 'an A100-hour of any MIG profile at the MIG price',
      usage: { meter: 'gpu_seconds', quantity: 3600, subject: 'A100:mig:1g.10gb' },
      wantMicros: 300_000,
    },
    { name: 'an A100-hour time-sliced', usage: { meter: 'gpu_seconds', quantity: 3600, subject: 'A100:timeslice' }, wantMicros: 600_000 },
    { name: 'a GPU subject without sharing is exclusive', usage: { meter: 'gpu_seconds', quantity: 3600, subject: 'H100' }, wantMicros: 4_000_000 },
    { name: 'nothing used costs nothing', usage: { meter: 'gpu_seconds', quantity: 0, subject: 'H100:exclusive' }, wantMicros: 0 },
    { name: '1M input tokens of llama-3-8b', usage: { meter: 'tokens_in', quantity: 1_000_000, subject: 'llama-3-8b' }, wantMicros: 200_000 },
    { name: '1M output tokens of llama-3-8b', usage: { meter: 'tokens_out', quantity: 1_000_000, subject: 'llama-3-8b' }, wantMicros: 400_000 },
    {
      name: 'a model not in the book gets the default input price',
      usage: { meter: 'tokens_in', quantity: 1_000_000, subject: 'mystery-9b' },
      wantMicros: 3_000_000,
    },
    {
      name: 'a model not in the book gets the default output price',
      usage: { meter: 'tokens_out', quantity: 1_000_000, subject: 'mystery-9b' },
      wantMicros: 15_000_000,
    },
    { name: 'one llama-3-8b input token (0.2 micro) rounds down', usage: { meter: 'tokens_in', quantity: 1, subject: 'llama-3-8b' }, wantMicros: 0 },
    { name: 'three llama-3-8b input tokens (0.6 micro) round up', usage: { meter: 'tokens_in', quantity: 3, subject: 'llama-3-8b' }, wantMicros: 1 },
    { name: 'one frontier-large output token', usage: { meter: 'tokens_out', quantity: 1, subject: 'frontier-large' }, wantMicros: 25 },
  ])('$name: $wantMicros micros', ({ usage, wantMicros }) => {
    expect(costMicros(v1, usage)).toBe(wantMicros);
  });

  it('refuses a GPU type the version has no price for', () => {
    expect(() => costMicros(v1, { meter: 'gpu_seconds', quantity: 1, subject: 'B200:exclusive' })).toThrow(/no GPU-hour price for B200/);
  });

  it('converts dollars to integer micro-dollars without floating-point residue', () => {
    expect(usdToMicros(0.1 + 0.2)).toBe(300_000);
    expect(usdToMicros(19.99)).toBe(19_990_000);
    expect(microsToUsd(1_234_567)).toBe(1.234567);
  });

  const usageArb = fc.oneof(
    fc.record({
      meter: fc.constant('gpu_seconds' as const),
      quantity: fc.integer({ min: 0, max: 10_000_000 }),
      subject: fc.constantFrom('H100:exclusive', 'H100:mps', 'A100:mig:3g.40gb', 'A100:timeslice'),
    }),
    fc.record({
      meter: fc.constantFrom('tokens_in' as const, 'tokens_out' as const),
      quantity: fc.integer({ min: 0, max: 1_000_000_000 }),
      subject: fc.constantFrom('llama-3-8b', 'frontier-large', 'default', 'unlisted-model'),
    }),
  );
  const v2From = Date.parse(v2.effectiveFrom);

  it('property: a new price version never changes the cost of an event that happened before it', () => {
    fc.assert(
      fc.property(usageArb, fc.integer({ min: Date.parse(v1.effectiveFrom), max: v2From - 1 }), (usage, t) => {
        const at = new Date(t).toISOString();
        expect(costMicros(priceVersionAt(book, at), usage)).toBe(costMicros(priceVersionAt([v1], at), usage));
      }),
    );
  });

  it('property: an event at or after a new version is priced with it', () => {
    fc.assert(
      fc.property(usageArb, fc.integer({ min: v2From, max: Date.parse(v3.effectiveFrom) - 1 }), (usage, t) => {
        expect(costMicros(priceVersionAt(book, new Date(t).toISOString()), usage)).toBe(costMicros(v2, usage));
      }),
    );
  });

  // Prices of v1 written out by hand, in USD per unit, to check the arithmetic independently.
  const perUnitUsd: Record<string, number> = {
    'gpu_seconds/H100:exclusive': 4 / 3600,
    'gpu_seconds/H100:mps': 1.5 / 3600,
    'gpu_seconds/A100:mig:3g.40gb': 0.3 / 3600,
    'gpu_seconds/A100:timeslice': 0.6 / 3600,
    'tokens_in/llama-3-8b': 0.2 / 1e6,
    'tokens_out/llama-3-8b': 0.4 / 1e6,
    'tokens_in/frontier-large': 5 / 1e6,
    'tokens_out/frontier-large': 25 / 1e6,
    'tokens_in/default': 3 / 1e6,
    'tokens_out/default': 15 / 1e6,
    'tokens_in/unlisted-model': 3 / 1e6,
    'tokens_out/unlisted-model': 15 / 1e6,
  };

  it('property: cost is whole micro-dollars within half a micro of the exact price, and never falls when usage grows', () => {
    fc.assert(
      fc.property(usageArb, fc.integer({ min: 0, max: 1_000_000 }), (usage, more) => {
        const a = costMicros(v1, usage);
        expect(Number.isInteger(a)).toBe(true);
        const exact = usage.quantity * perUnitUsd[`${usage.meter}/${usage.subject}`]! * 1e6;
        expect(Math.abs(a - exact)).toBeLessThanOrEqual(0.5 + 1e-3);
        expect(costMicros(v1, { ...usage, quantity: usage.quantity + more })).toBeGreaterThanOrEqual(a);
      }),
    );
  });
});
