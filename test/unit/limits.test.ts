import { mkdtempSync, readFileSync, writeFileSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, defaultConfigDir, loadConfig } from '../../config/load';
import { DEFAULT_USAGE_LIMITS, type LimitCheck, MAX_LEDGER_MICROS, MAX_USD_PER_EVENT, UsageLimits, checkCost, checkQuantity } from '../../governance/limits';
import { MAX_EVENTS_PER_REQUEST } from '../../ledger/ingest';

describe('checkQuantity (default caps)', () => {
  const cases: { meter: string; quantity: number; want: LimitCheck }[] = [
    { meter: 'gpu_seconds', quantity: 1e8, want: { ok: true } },
    {
      meter: 'gpu_seconds',
      quantity: 1e8 + 1,
      want: { ok: false, field: 'quantity', message: '100,000,001 gpu_seconds is above the cap of 100,000,000 per event (usageLimits.perEvent.gpu_seconds)' },
    },
    { meter: 'tokens_out', quantity: 1e9, want: { ok: true } },
    {
      meter: 'tokens_out',
      quantity: 1e15,
      want: {
        ok: false,
        field: 'quantity',
        message: '1,000,000,000,000,000 tokens_out is above the cap of 1,000,000,000 per event (usageLimits.perEvent.tokens_out)',
      },
    },
    { meter: 'network_bytes', quantity: 1e14, want: { ok: true } },
    // Lease spend is recorded as meter usd, capped by its lease, not here.
    { meter: 'usd', quantity: 1e12, want: { ok: true } },
  ];
  it.each(cases)('$quantity $meter', ({ meter, quantity, want }) => expect(checkQuantity(DEFAULT_USAGE_LIMITS, meter, quantity)).toEqual(want));
});

describe('checkCost', () => {
  const cases: { name: string; cost: number; streamTotal?: number; wantOk: boolean; wantField?: string }[] = [
    { name: 'at the cap', cost: 1e12, wantOk: true },
    { name: 'a micro-dollar over', cost: 1e12 + 1, wantOk: false, wantField: 'quantity' },
    { name: 'not an exact integer', cost: 1.1e18, wantOk: false, wantField: 'quantity' },
    { name: 'NaN', cost: NaN, wantOk: false, wantField: 'quantity' },
    { name: 'a stream part whose running total is priced past the ceiling', cost: 10, streamTotal: MAX_LEDGER_MICROS + 2, wantOk: false, wantField: 'offset' },
    { name: 'a stream part within it', cost: 10, streamTotal: MAX_LEDGER_MICROS, wantOk: true },
  ];
  it.each(cases)('$name', ({ cost, streamTotal, wantOk, wantField }) => {
    const r = checkCost(DEFAULT_USAGE_LIMITS, { cost, ...(streamTotal === undefined ? {} : { streamTotal }) });
    expect(r.ok).toBe(wantOk);
    if (!r.ok) expect(r.field).toBe(wantField);
  });

  it('a whole request at the cost cap sums to an exact integer', () => {
    expect(MAX_USD_PER_EVENT * 1e6 * MAX_EVENTS_PER_REQUEST).toBeLessThanOrEqual(MAX_LEDGER_MICROS);
  });
});

describe('usageLimits in policies.yaml', () => {
  it('ships the defaults', () => {
    expect(loadConfig().policies.usageLimits).toEqual(DEFAULT_USAGE_LIMITS);
  });

  it('fills a meter left out with its default', () => {
    expect(UsageLimits.parse({ perEvent: { gpu_seconds: 10 } }).perEvent).toEqual({ ...DEFAULT_USAGE_LIMITS.perEvent, gpu_seconds: 10 });
  });

  it('refuses a bad cap, naming the file and the path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'govloop-limits-'));
    cpSync(defaultConfigDir, dir, { recursive: true, filter: (src) => !src.endsWith('.ts') });
    const file = join(dir, 'policies.yaml');
    writeFileSync(
      file,
      readFileSync(file, 'utf8').replace(
        /^usageLimits:[\s\S]*?(?=^#)/m,
        'usageLimits: { maxUsdPerEvent: 2000000, perEvent: { gpu_seconds: -1, tokens: 5 } }\n',
      ),
    );
    let err: unknown;
    try {
      loadConfig(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).file).toBe(file);
    expect((err as ConfigError).errors.map((e) => e.path).sort()).toEqual([
      'usageLimits.maxUsdPerEvent',
      'usageLimits.perEvent',
      'usageLimits.perEvent.gpu_seconds',
    ]);
  });
});
