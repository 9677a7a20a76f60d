import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { costMicros, priceVersionAt, usdToMicros } from '../../governance/pricing';
import { reserve, setBudget, showBudgets } from '../../ledger/budgets';
import { type UsageEvent, recordUsage, taskUsage } from '../../ledger/usage';
import { AT, type Ledger, attributionOf, backends, newTask, newTenant, windows } from './backends';

const priceBook = loadConfig().priceBook;
const v1 = priceVersionAt(priceBook, AT.toISOString());

describe.each(backends)('usage on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  /** A tenant with a $100 total budget and one running task holding a reservation of `reserveUsd`. */
  async function fixture(reserveUsd = 10) {
    const { db } = ledger;
    const tenant = newTenant();
    const attribution = attributionOf(tenant);
    await setBudget(db, { tenant }, 'total', 100, 'test');
    const taskId = await newTask(db, tenant, { state: 'Running' });
    expect(await reserve(db, taskId, attribution, usdToMicros(reserveUsd), AT)).toEqual({ ok: true, amountMicros: usdToMicros(reserveUsd) });
    // 900 H100-seconds at $4/hour: exactly $1.
    const event = (key: string, over: Partial<UsageEvent> = {}): UsageEvent => ({
      key: `${taskId}:${key}`,
      taskId,
      attribution,
      meter: 'gpu_seconds',
      subject: 'H100:exclusive',
      quantity: 900,
      occurredAt: AT,
      ...over,
    });
    const state = async () => {
      const task = await db.query<{ cost_micros: number }>('SELECT cost_micros FROM tasks WHERE task_id = $1', [taskId]);
      const events = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM usage_events WHERE task_id = $1', [taskId]);
      const w = (await windows(db, tenant))['*/*']!;
      return { events: events.rows[0]!.n, taskCost: task.rows[0]!.cost_micros, spent: w.spent, reserved: w.reserved };
    };
    return { tenant, taskId, attribution, event, state };
  }

  it('stores and charges an event delivered twice once', async () => {
    const { db } = ledger;
    const f = await fixture();
    const e = f.event('gpu:1');
    expect(await recordUsage(db, priceBook, [e])).toEqual({ accepted: 1, duplicates: 0, costMicros: 1_000_000, overages: [] });
    expect(await recordUsage(db, priceBook, [e])).toEqual({ accepted: 0, duplicates: 1, costMicros: 0, overages: [] });
    expect(await f.state()).toEqual({ events: 1, taskCost: 1_000_000, spent: 1_000_000, reserved: 9_000_000 });
    expect(await showBudgets(db, { tenant: f.tenant }, AT)).toEqual([
      { budgetId: expect.any(Number), scope: `${f.tenant}/*/*`, period: 'total', window: 'total', limitUsd: 100, reservedUsd: 9, spentUsd: 1 },
    ]);
  });

  it('stores and charges a key repeated within one batch once', async () => {
    const { db } = ledger;
    const f = await fixture();
    const [a, b] = [f.event('gpu:a'), f.event('gpu:b')];
    expect(await recordUsage(db, priceBook, [a, a, b, a])).toEqual({ accepted: 2, duplicates: 2, costMicros: 2_000_000, overages: [] });
    expect(await f.state()).toEqual({ events: 2, taskCost: 2_000_000, spent: 2_000_000, reserved: 8_000_000 });
  });

  it('stores and charges events delivered concurrently from two connections once', async () => {
    const { db } = ledger;
    const other = ledger.pool(4);
    const f = await fixture(20);
    const batch = Array.from({ length: 10 }, (_, i) => f.event(`gpu:${i}`));
    // The same ten events, redelivered by another worker in another order, while a third
    // delivery races both with one of them.
    const results = await Promise.all([
      recordUsage(db, priceBook, batch),
      recordUsage(other, priceBook, [...batch].reverse()),
      recordUsage(other, priceBook, [batch[4]!]),
    ]);
    expect(results.reduce((s, r) => s + r.accepted, 0)).toBe(10);
    expect(results.reduce((s, r) => s + r.duplicates, 0)).toBe(11);
    expect(results.reduce((s, r) => s + r.costMicros, 0)).toBe(10_000_000);
    expect(await f.state()).toEqual({ events: 10, taskCost: 10_000_000, spent: 10_000_000, reserved: 10_000_000 });
    expect((await taskUsage(db, f.taskId)).gpuSeconds).toBe(9000);
  });

  it('charges one key raced by many deliveries exactly once', async () => {
    const f = await fixture();
    const pools = [ledger.db, ledger.pool(4)];
    const e = f.event('gpu:raced');
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => recordUsage(pools[i % 2]!, priceBook, [e])));
    expect(results.map((r) => r.accepted).sort()).toEqual([0, 0, 0, 0, 0, 0, 0, 1]);
    expect(await f.state()).toEqual({ events: 1, taskCost: 1_000_000, spent: 1_000_000, reserved: 9_000_000 });
  });

  it('prices streamed partial events on the running total, so the parts add up to the whole exactly', async () => {
    const { db } = ledger;
    const f = await fixture();
    // 13 reports of 7 H100-seconds ($0.0077777… each): priced one by one they would round to 7778
    // micros each, 3 micros more than the 91 seconds cost together.
    const parts = Array.from({ length: 13 }, (_, i) => f.event(`stream:${i}`, { quantity: 7, cumulativeBefore: 7 * i }));
    const whole = costMicros(v1, { meter: 'gpu_seconds', quantity: 91, subject: 'H100:exclusive' });
    expect(whole).toBe(101_111);
    expect(13 * costMicros(v1, { meter: 'gpu_seconds', quantity: 7, subject: 'H100:exclusive' })).toBe(101_114);
    let total = 0;
    for (const p of parts) total += (await recordUsage(db, priceBook, [p])).costMicros;
    // A redelivered report changes nothing.
    expect((await recordUsage(db, priceBook, [parts[5]!])).costMicros).toBe(0);
    expect(total).toBe(whole);
    expect(await f.state()).toEqual({ events: 13, taskCost: whole, spent: whole, reserved: 10_000_000 - whole });
  });

  it('property: any split of a stream into partial events costs exactly what the whole does', async () => {
    const { db } = ledger;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.integer({ min: 1, max: 5000 }).map((q) => q / 10),
          { minLength: 1, maxLength: 8 },
        ),
        fc.constantFrom('H100:exclusive', 'A100:mig:1g.10gb', 'H100:timeslice'),
        async (quantities, subject) => {
          const f = await fixture(100);
          let before = 0;
          const events = quantities.map((q, i) => {
            const e = f.event(`p:${i}`, { subject, quantity: q, cumulativeBefore: before });
            before += q;
            return e;
          });
          await recordUsage(db, priceBook, events);
          const whole = costMicros(v1, { meter: 'gpu_seconds', quantity: before, subject });
          const s = await f.state();
          expect(s.taskCost).toBe(whole);
          expect(s.spent).toBe(whole);
        },
      ),
      { numRuns: 5 },
    );
  });

  it('records a meter it does not price at no cost', async () => {
    const { db } = ledger;
    const f = await fixture();
    const r = await recordUsage(db, priceBook, [f.event('processed', { meter: 'tokens_processed', subject: 'llama-3-8b', quantity: 5000 })]);
    expect(r).toEqual({ accepted: 1, duplicates: 0, costMicros: 0, overages: [] });
    expect(await f.state()).toEqual({ events: 1, taskCost: 0, spent: 0, reserved: 10_000_000 });
    expect((await taskUsage(db, f.taskId)).tokensProcessed).toBe(5000);
  });

  it('keeps usage_events append-only: UPDATE and DELETE raise and change nothing', async () => {
    const { db } = ledger;
    const f = await fixture();
    const key = `${f.taskId}:${randomUUID()}`;
    await recordUsage(db, priceBook, [f.event('x', { key })]);
    await expect(db.query('UPDATE usage_events SET quantity = 0, cost_micros = 0 WHERE idempotency_key = $1', [key])).rejects.toThrow(
      /usage_events is append-only: UPDATE refused/,
    );
    await expect(db.query('DELETE FROM usage_events WHERE idempotency_key = $1', [key])).rejects.toThrow(/usage_events is append-only: DELETE refused/);
    const { rows } = await db.query('SELECT quantity, cost_micros FROM usage_events WHERE idempotency_key = $1', [key]);
    expect(rows).toEqual([{ quantity: 900, cost_micros: 1_000_000 }]);
  });
});
