import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { costMicros, priceVersionAt, unitPriceUsd } from '../../governance/pricing';
import { capReached, runLimit } from '../../governance/run-limit';

const shipped = loadConfig();
const prices = priceVersionAt(shipped.priceBook, '2026-06-01T00:00:00Z');
const subjects = Object.entries(prices.gpuHourUsd).flatMap(([type, bySharing]) =>
  Object.keys(bySharing).map((s) => `${type}:${s === 'mig' ? 'mig:1g.10gb' : s}`),
);

describe('runLimit: how long a cluster job may still run', () => {
  it('the issue-15 task: 1 H100, maxUsd $1, maxGpuHours 0.2 at $4/h reserved $0.80: 720 s, set by maxGpuHours', () => {
    const perSecond = unitPriceUsd(prices, { meter: 'gpu_seconds', subject: 'H100:exclusive' }) * 1e6;
    const r = runLimit({
      caps: { maxUsd: 1, maxGpuHours: 0.2 },
      reservationMicros: 800_000,
      gpus: 1,
      microsPerGpuSecond: perSecond,
      used: { gpuSeconds: 0, costMicros: 0 },
      stopMarginSeconds: 0,
    });
    // 0.2 GPU-hours is 720 s; $0.80 at $4/h is 720 s less the micro kept for rounding.
    expect(r.maxRunSeconds).toBeGreaterThan(719.99);
    expect(r.maxRunSeconds).toBeLessThanOrEqual(720);
  });

  it('takes what ran off, and the stop margin; nothing left is 0, never negative', () => {
    const base = { caps: { maxUsd: 100, maxGpuHours: 1 }, reservationMicros: null, gpus: 2, microsPerGpuSecond: 1000, stopMarginSeconds: 0 };
    expect(runLimit({ ...base, used: { gpuSeconds: 3600, costMicros: 0 } })).toEqual({ maxRunSeconds: 0, binding: 'maxGpuHours' });
    expect(runLimit({ ...base, used: { gpuSeconds: 1800, costMicros: 0 }, stopMarginSeconds: 100 }).maxRunSeconds).toBe(800);
    expect(runLimit({ ...base, used: { gpuSeconds: 0, costMicros: 0 }, stopMarginSeconds: 5000 }).maxRunSeconds).toBe(0);
  });

  it('property: a job that runs its limit plus the stop margin stays within maxGpuHours and within the lower of maxUsd and its reservation', () => {
    fc.assert(
      fc.property(
        fc.record({
          subject: fc.constantFrom(...subjects),
          gpus: fc.integer({ min: 1, max: 64 }),
          maxUsd: fc.double({ min: 0.01, max: 20_000, noNaN: true }),
          maxGpuHours: fc.double({ min: 0.001, max: 4096, noNaN: true }),
          reservedShare: fc.option(fc.double({ min: 0.1, max: 1, noNaN: true })),
          usedShare: fc.double({ min: 0, max: 1.2, noNaN: true }),
          margin: fc.constantFrom(0, 10, 40),
        }),
        (x) => {
          const unit = unitPriceUsd(prices, { meter: 'gpu_seconds', subject: x.subject });
          const perSecond = unit * 1e6;
          const maxUsdMicros = Math.round(x.maxUsd * 1e6);
          const reserved = x.reservedShare === null ? null : Math.round(maxUsdMicros * x.reservedShare);
          const ceiling = reserved === null ? maxUsdMicros : Math.min(maxUsdMicros, reserved);
          // Usage so far: a share of the GPU-hour cap (over it, too: the poll check was late).
          const usedGpuSeconds = x.usedShare * x.maxGpuHours * 3600;
          const used = { gpuSeconds: usedGpuSeconds, costMicros: costMicros(prices, { meter: 'gpu_seconds', quantity: usedGpuSeconds, subject: x.subject }) };
          const r = runLimit({ caps: x, reservationMicros: reserved, gpus: x.gpus, microsPerGpuSecond: perSecond, used, stopMarginSeconds: x.margin });
          expect(r.maxRunSeconds).toBeGreaterThanOrEqual(0);
          // The cluster stops it up to `margin` late.
          const total = usedGpuSeconds + (r.maxRunSeconds + x.margin) * x.gpus;
          const cost = costMicros(prices, { meter: 'gpu_seconds', quantity: total, subject: x.subject });
          if (r.maxRunSeconds > 0) {
            expect(total).toBeLessThanOrEqual(x.maxGpuHours * 3600 * (1 + 1e-12));
            expect(cost).toBeLessThanOrEqual(ceiling);
          } else {
            // Nothing left: either a cap is used up, or the margin alone would pass one.
            const left = Math.min(x.maxGpuHours * 3600 - usedGpuSeconds, (ceiling - used.costMicros) / perSecond);
            expect(left / x.gpus).toBeLessThanOrEqual(x.margin + 1e-6);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('capReached names the cap that leaves the least; a reservation priced from maxGpuHours names maxGpuHours', () => {
    const x = { caps: { maxUsd: 1, maxGpuHours: 0.2 }, gpus: 1, microsPerGpuSecond: 4e6 / 3600 };
    expect(capReached({ ...x, reservationMicros: 800_000, used: { gpuSeconds: 720, costMicros: 800_000 } })).toBe('maxGpuHours');
    expect(capReached({ ...x, reservationMicros: 800_000, used: { gpuSeconds: 719.9991, costMicros: 799_999 } })).toBe('maxGpuHours');
    expect(capReached({ ...x, caps: { maxUsd: 0.5, maxGpuHours: 0.2 }, reservationMicros: 500_000, used: { gpuSeconds: 450, costMicros: 500_000 } })).toBe(
      'maxUsd',
    );
  });
});
