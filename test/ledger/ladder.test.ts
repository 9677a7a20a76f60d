import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { windowBounds } from '../../governance/periods';
import { setBudget } from '../../ledger/budgets';
import { budgetIdOf, budgetSnapshot, scopeLadder } from '../../ledger/ladder';
import { recordUsage } from '../../ledger/usage';
import { loadConfig } from '../../config/load';
import { type Ledger, attributionOf, backends, newTenant } from './backends';

const priceBook = loadConfig().priceBook;

describe.each(backends)('budget windows and the ladder on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('resets at the period boundary: the next window starts empty and at step ok', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    await setBudget(db, { tenant }, 'day', 10, 'test');
    const id = (await budgetIdOf(db, { tenant, team: '*', project: '*', period: 'day' }))!;
    const late = new Date('2026-06-15T23:59:00Z');
    // $8 of H100 time late on the 15th, and the controller had moved the ladder to queue.
    await recordUsage(db, priceBook, [
      {
        key: `${tenant}:late`,
        taskId: null,
        attribution: attributionOf(tenant),
        meter: 'gpu_seconds',
        subject: 'H100:exclusive',
        quantity: 7200,
        occurredAt: late,
      },
    ]);
    await db.query(`UPDATE budget_windows SET ladder_step = 'queue' WHERE budget_id = $1 AND window_key = '2026-06-15'`, [id]);
    expect(await budgetSnapshot(db, id, late)).toMatchObject({ window: '2026-06-15', spentMicros: 8_000_000, sharePct: 80, step: 'queue' });
    expect((await scopeLadder(db, attributionOf(tenant), late)).map((w) => w.step)).toEqual(['queue']);

    const next = new Date('2026-06-16T00:00:01Z');
    expect(await budgetSnapshot(db, id, next)).toMatchObject({
      window: '2026-06-16',
      spentMicros: 0,
      reservedMicros: 0,
      sharePct: 0,
      step: 'ok',
      forecastUsd: 0,
    });
    expect((await scopeLadder(db, attributionOf(tenant), next)).map((w) => [w.step, w.sharePct])).toEqual([['ok', 0]]);
  });
});

describe('windowBounds', () => {
  it.each([
    { period: 'day' as const, at: '2026-11-24T13:00:00Z', start: '2026-11-24T00:00:00.000Z', end: '2026-11-25T00:00:00.000Z' },
    { period: 'week' as const, at: '2026-11-29T23:00:00Z', start: '2026-11-23T00:00:00.000Z', end: '2026-11-30T00:00:00.000Z' },
    { period: 'month' as const, at: '2026-12-31T23:59:59Z', start: '2026-12-01T00:00:00.000Z', end: '2027-01-01T00:00:00.000Z' },
  ])('$period of $at', ({ period, at, start, end }) => {
    const b = windowBounds(period, new Date(at));
    expect([b.start.toISOString(), b.end?.toISOString()]).toEqual([start, end]);
  });
  it('total has no end', () => expect(windowBounds('total', new Date()).end).toBeNull());
});
