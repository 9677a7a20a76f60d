/**
 * Issue 11: usage that overflows. Before the fix, nine events of 1e15 GPU-seconds ($1.1 trillion
 * each) of a tenant without budgets were accepted, and the next rollup failed with "bigint out of
 * range" for every tenant. Each test runs on a scratch ledger of its own: the rollup is global, and
 * a poisoned usage_events table would break the rollup of every other test file.
 */
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { DEFAULT_USAGE_LIMITS, MAX_LEDGER_MICROS, UsageLimitError } from '../../governance/limits';
import { setBudget } from '../../ledger/budgets';
import type { Db } from '../../ledger/db';
import { createKey } from '../../ledger/keys';
import { migrate } from '../../ledger/migrate';
import { rollUp, rollupUsageBy } from '../../ledger/rollups';
import { recordUsage } from '../../ledger/usage';
import { type Api, type ApiConfig, buildApi } from '../../server/app';
import { type Ledger, attributionOf, backends, newTask, windows } from './backends';

const priceBook = loadConfig().priceBook;
const NOW = new Date('2026-11-22T12:00:00.000Z');
const HOUR = new Date('2026-11-22T11:00:00.000Z');
const NEXT_HOUR = new Date('2026-11-22T12:00:00.000Z');
const TIME = '2026-11-22T11:30:00Z';

const attribution = (tenant: string) => ({ tenant, team: 'search', project: 'ranker', model: 'm', useCase: 'u' });
/** 900 H100-seconds at $4/hour: exactly $1. */
const gpuEvent = (tenant: string, over: Record<string, unknown> = {}) => ({
  id: randomUUID(),
  time: TIME,
  attribution: attribution(tenant),
  meter: 'gpu_seconds',
  gpuType: 'H100',
  quantity: 900,
  ...over,
});

async function eventCount(db: Db, tenant: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1',
    [tenant],
  );
  return rows[0]!.n;
}
async function attributionCount(db: Db, tenant: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM attributions WHERE tenant = $1', [tenant]);
  return rows[0]!.n;
}

describe.each(backends)('usage limits on $name', (backend) => {
  const open: { close(): Promise<void> }[] = [];
  afterEach(async () => {
    for (const x of open.splice(0).reverse()) await x.close();
  });
  async function ledger(): Promise<Ledger> {
    const l = await backend.scratch();
    open.push(l);
    await migrate(l.db);
    return l;
  }
  async function api(
    db: Db,
    config: Partial<ApiConfig> = {},
  ): Promise<{ api: Api; post: (tenant: string, events: object[]) => Promise<Awaited<ReturnType<Api['app']['inject']>>> }> {
    const a = await buildApi({ db, config: { priceBook, maxAgeHours: 72, futureSkewSeconds: 300, ...config }, clock: () => NOW });
    open.push({ close: () => a.app.close() });
    return {
      api: a,
      post: async (tenant, events) => {
        const { key } = await createKey(db, tenant, 'test');
        return a.app.inject({ method: 'POST', url: '/v1/usage', headers: { authorization: `Bearer ${key}` }, payload: { events } });
      },
    };
  }

  it('the reproduction: nine 1e15 GPU-second events are refused with their field paths, nothing is written, and the rollup goes on for everyone', async () => {
    const { db } = await ledger();
    const { post } = await api(db);
    const other = `t-${randomUUID().slice(0, 8)}`;
    const huge = `t-${randomUUID().slice(0, 8)}`;
    expect((await post(other, [gpuEvent(other)])).statusCode).toBe(200);

    const res = await post(
      huge,
      Array.from({ length: 9 }, () => gpuEvent(huge, { quantity: 1e15 })),
    );
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({
      error: 'invalid input',
      errors: Array.from({ length: 9 }, (_, i) => ({
        path: `events.${i}.quantity`,
        message: '1,000,000,000,000,000 gpu_seconds is above the cap of 100,000,000 per event (usageLimits.perEvent.gpu_seconds)',
      })),
    });
    expect(await eventCount(db, huge)).toBe(0);
    expect(await attributionCount(db, huge)).toBe(0);

    await rollUp(db);
    expect(await rollupUsageBy(db, ['tenant'], HOUR, NEXT_HOUR)).toEqual([expect.objectContaining({ tenant: other, costUsd: 1, events: 1 })]);
  });

  it('a rollup bucket whose sum passes bigint (events written past the caps, e.g. before them) no longer breaks the rollup of other tenants', async () => {
    const { db } = await ledger();
    const { post } = await api(db);
    const other = `t-${randomUUID().slice(0, 8)}`;
    const huge = `t-${randomUUID().slice(0, 8)}`;
    expect((await post(other, [gpuEvent(other)])).statusCode).toBe(200);
    // 1,100 events at the ledger's ceiling each: their sum (~9.9e18) is past bigint (9.22e18).
    const { rows } = await db.query<{ id: number }>(
      "INSERT INTO attributions (tenant, team, project, model, use_case) VALUES ($1, 'x', 'x', 'x', 'x') RETURNING id",
      [huge],
    );
    await db.query(
      `INSERT INTO usage_events (idempotency_key, attribution_id, meter, subject, quantity, price_version, cost_micros, occurred_at)
       SELECT 'legacy:' || g, $1, 'gpu_seconds', 'H100:exclusive', 8.1e12, 1, $2, $3 FROM generate_series(1, 1100) g`,
      [rows[0]!.id, MAX_LEDGER_MICROS, new Date(TIME)],
    );

    const runs = await rollUp(db);
    expect(runs.map((r) => r.grain)).toEqual(['hour', 'day']);
    expect(await rollupUsageBy(db, ['tenant'], HOUR, NEXT_HOUR, other)).toEqual([expect.objectContaining({ tenant: other, costUsd: 1, events: 1 })]);
    // The global view answers too: the huge tenant's true (inexact) sum, not an error.
    const all = await rollupUsageBy(db, ['tenant'], HOUR, NEXT_HOUR);
    expect(all.map((r) => [r.tenant, r.events])).toEqual([
      [huge, 1100],
      [other, 1],
    ]);
    expect(all[0]!.costUsd).toBeCloseTo((1100 * MAX_LEDGER_MICROS) / 1e6, -8);
  });

  it('an event over the cost cap is refused with its field path; the other events of the request are not written', async () => {
    const { db } = await ledger();
    const { post } = await api(db, { usageLimits: { ...DEFAULT_USAGE_LIMITS, maxUsdPerEvent: 100 } });
    const tenant = `t-${randomUUID().slice(0, 8)}`;
    // 900 * 101 H100-seconds: $101.
    const res = await post(tenant, [
      gpuEvent(tenant),
      gpuEvent(tenant, { quantity: 900 * 101 }),
      gpuEvent(tenant, { meter: 'tokens_in', gpuType: undefined, quantity: 2e9 }),
    ]);
    expect(res.statusCode).toBe(400);
    // Quantity caps are judged on the whole request first.
    expect(res.json().errors).toEqual([
      { path: 'events.2.quantity', message: '2,000,000,000 tokens_in is above the cap of 1,000,000,000 per event (usageLimits.perEvent.tokens_in)' },
    ]);
    const cost = await post(tenant, [gpuEvent(tenant), gpuEvent(tenant, { quantity: 900 * 101 })]);
    expect(cost.statusCode).toBe(400);
    expect(cost.json().errors).toEqual([{ path: 'events.1.quantity', message: 'costs $101, above the cap of $100 per event (usageLimits.maxUsdPerEvent)' }]);
    expect(await eventCount(db, tenant)).toBe(0);
    expect(await attributionCount(db, tenant)).toBe(0);
  });

  it('a charge that would carry a budget window past the ceiling is refused cleanly (422), nothing written; recordUsage throws UsageLimitError', async () => {
    const { db } = await ledger();
    const { post } = await api(db);
    const tenant = `t-${randomUUID().slice(0, 8)}`;
    await setBudget(db, { tenant }, 'month', 9_000_000_000, 'test');
    expect((await post(tenant, [gpuEvent(tenant)])).statusCode).toBe(200);
    // The window is $0.50 short of the ceiling (as if it had been charged that much).
    await db.query('UPDATE budget_windows w SET spent_micros = $2 FROM budgets b WHERE b.id = w.budget_id AND b.tenant = $1', [
      tenant,
      MAX_LEDGER_MICROS - 500_000,
    ]);
    const before = await windows(db, tenant);

    const res = await post(tenant, [gpuEvent(tenant)]);
    expect(res.statusCode).toBe(422);
    expect(res.json()).toEqual({
      error: 'usage refused: recording it would pass a ledger limit; nothing was written',
      errors: [
        {
          path: 'events',
          message: `adding $1 to the spend of budget ${tenant}/*/* month window 2026-11 would pass the ledger's ceiling of $9,007,199,254.741 (2^53 - 1 micro-dollars): refused, nothing recorded`,
        },
      ],
    });
    expect(await eventCount(db, tenant)).toBe(1);
    expect(await windows(db, tenant)).toEqual(before);

    // The same from inside govloop (the activities' path), for a task's cost too.
    const direct = recordUsage(db, priceBook, [
      {
        key: `k:${randomUUID()}`,
        taskId: null,
        attribution: attributionOf(tenant),
        meter: 'gpu_seconds',
        subject: 'H100:exclusive',
        quantity: 900,
        occurredAt: new Date(TIME),
      },
    ]);
    await expect(direct).rejects.toThrow(UsageLimitError);
    const other = `t-${randomUUID().slice(0, 8)}`;
    const taskId = await newTask(db, other, { state: 'Running' });
    await db.query('UPDATE tasks SET cost_micros = $2 WHERE task_id = $1', [taskId, MAX_LEDGER_MICROS - 1]);
    await expect(
      recordUsage(db, priceBook, [
        {
          key: `k:${randomUUID()}`,
          taskId,
          attribution: attributionOf(other),
          meter: 'gpu_seconds',
          subject: 'H100:exclusive',
          quantity: 900,
          occurredAt: new Date(TIME),
        },
      ]),
    ).rejects.toThrow(
      new UsageLimitError(
        `adding $1 to task ${taskId}'s cost would pass the ledger's ceiling of $9,007,199,254.741 (2^53 - 1 micro-dollars): refused, nothing recorded`,
      ),
    );
    expect(await eventCount(db, other)).toBe(0);
  });

  it('recordUsage refuses an event over its meter cap before writing anything', async () => {
    const { db } = await ledger();
    const tenant = `t-${randomUUID().slice(0, 8)}`;
    const key = `k:${randomUUID()}`;
    await expect(
      recordUsage(db, priceBook, [
        { key, taskId: null, attribution: attributionOf(tenant), meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: 1e15, occurredAt: new Date(TIME) },
      ]),
    ).rejects.toThrow(
      `usage event ${key}: quantity: 1,000,000,000,000,000 gpu_seconds is above the cap of 100,000,000 per event (usageLimits.perEvent.gpu_seconds)`,
    );
    expect(await eventCount(db, tenant)).toBe(0);
  });
});
