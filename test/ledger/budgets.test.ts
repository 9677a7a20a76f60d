import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { usdToMicros } from '../../governance/pricing';
import { type ReserveResult, budgetHeadroom, chargeBudgets, release, reserve, setBudget, showBudgets } from '../../ledger/budgets';
import type { Db } from '../../ledger/db';
import { AT, type Ledger, attributionOf, backends, lockWaiters, newTask, newTenant, windows } from './backends';

const charge = (db: Db, taskId: string, tenant: string, micros: number) =>
  db.tx((c) => chargeBudgets(c, taskId, attributionOf(tenant), micros, AT, `charge-${randomUUID()}`));

describe.each(backends)('budget reservations on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('20 concurrent reservations against a budget that fits exactly 5: 5 are held, 15 get BUDGET_EXCEEDED', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const a = attributionOf(tenant);
    const worst = usdToMicros(3);
    await setBudget(db, { tenant }, 'total', 15, 'test');
    const tasks: string[] = [];
    for (let i = 0; i < 20; i++) tasks.push(await newTask(db, tenant));

    const results = await Promise.all(tasks.map((t) => reserve(db, t, a, worst, AT)));

    const held = tasks.filter((_, i) => results[i]!.ok);
    expect(held).toHaveLength(5);
    for (const r of results.filter((x) => !x.ok)) {
      expect(r).toEqual({
        ok: false,
        retry: false,
        reasons: [expect.objectContaining({ code: 'BUDGET_EXCEEDED', limit: 0, requested: 3, policy: `budget:${tenant}/*/*:total` })],
      });
    }
    expect(await windows(db, tenant)).toEqual({ '*/*': { limit: worst * 5, reserved: worst * 5, spent: 0 } });
    expect(await showBudgets(db, { tenant }, AT)).toEqual([
      { budgetId: expect.any(Number), scope: `${tenant}/*/*`, period: 'total', window: 'total', limitUsd: 15, reservedUsd: 15, spentUsd: 0 },
    ]);
    const rows = await db.query<{ task_id: string; state: string }>("SELECT task_id, state FROM tasks WHERE task_id = ANY($1) AND state = 'Reserved'", [tasks]);
    expect(rows.rows.map((r) => r.task_id).sort()).toEqual([...held].sort());
    const reservations = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM reservations WHERE task_id = ANY($1) AND state = 'held'", [tasks]);
    expect(reservations.rows[0]!.n).toBe(5);
    const audit = await db.query<{ decision: string; n: number }>(
      "SELECT decision, count(*)::int AS n FROM audit_log WHERE task_id = ANY($1) AND action = 'reserve' GROUP BY decision ORDER BY decision",
      [tasks],
    );
    expect(audit.rows).toEqual([
      { decision: 'held', n: 5 },
      { decision: 'rejected', n: 15 },
    ]);
  });

  it('release returns what is left of the reservation, once', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const a = attributionOf(tenant);
    await setBudget(db, { tenant }, 'total', 10, 'test');
    const t = await newTask(db, tenant);
    expect(await reserve(db, t, a, usdToMicros(4), AT)).toEqual({ ok: true, amountMicros: usdToMicros(4) });
    await charge(db, t, tenant, usdToMicros(1));
    expect(await windows(db, tenant)).toEqual({ '*/*': { limit: usdToMicros(10), reserved: usdToMicros(3), spent: usdToMicros(1) } });

    expect(await release(db, t)).toBe(usdToMicros(3));
    expect(await release(db, t)).toBe(0);
    expect(await windows(db, tenant)).toEqual({ '*/*': { limit: usdToMicros(10), reserved: 0, spent: usdToMicros(1) } });
    const r = await db.query('SELECT state, amount_micros, remaining_micros FROM reservations WHERE task_id = $1', [t]);
    expect(r.rows).toEqual([{ state: 'released', amount_micros: usdToMicros(4), remaining_micros: 0 }]);

    // What was released can be reserved again; what was spent cannot.
    const t2 = await newTask(db, tenant);
    const t3 = await newTask(db, tenant);
    expect((await reserve(db, t2, a, usdToMicros(9) + 1, AT)).ok).toBe(false);
    expect((await reserve(db, t3, a, usdToMicros(9), AT)).ok).toBe(true);
  });

  it('concurrent releases of one reservation return it once', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    await setBudget(db, { tenant }, 'total', 10, 'test');
    const t = await newTask(db, tenant);
    await reserve(db, t, attributionOf(tenant), usdToMicros(4), AT);
    const other = ledger.pool(2);
    const released = await Promise.all([release(db, t), release(other, t), release(db, t)]);
    expect(released.sort((x, y) => x - y)).toEqual([0, 0, usdToMicros(4)]);
    expect((await windows(db, tenant))['*/*']!.reserved).toBe(0);
  });

  it('reserve is idempotent by task id', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    await setBudget(db, { tenant }, 'total', 10, 'test');
    const t = await newTask(db, tenant);
    expect(await reserve(db, t, attributionOf(tenant), usdToMicros(4), AT)).toEqual({ ok: true, amountMicros: usdToMicros(4) });
    expect(await reserve(db, t, attributionOf(tenant), usdToMicros(4), AT)).toEqual({ ok: true, amountMicros: usdToMicros(4) });
    expect((await windows(db, tenant))['*/*']!.reserved).toBe(usdToMicros(4));
  });

  // admitTask with `reserve` is one local activity: retried after the reservation was made, it runs
  // admission again (which puts the task back to Admitting or Queued) and then reserve() again.
  it('a repeated reserve() after admission ran again answers ok, holds once and leaves the task Reserved', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const a = attributionOf(tenant);
    await setBudget(db, { tenant }, 'total', 10, 'test');
    const t = await newTask(db, tenant, { state: 'Admitting' });
    expect(await reserve(db, t, a, usdToMicros(4), AT)).toEqual({ ok: true, amountMicros: usdToMicros(4) });
    await db.query(`UPDATE tasks SET state = 'Queued' WHERE task_id = $1`, [t]);
    expect(await reserve(db, t, a, usdToMicros(4), AT)).toEqual({ ok: true, amountMicros: usdToMicros(4) });
    const task = await db.query<{ state: string }>('SELECT state FROM tasks WHERE task_id = $1', [t]);
    expect(task.rows[0]!.state).toBe('Reserved');
    expect((await windows(db, tenant))['*/*']!.reserved).toBe(usdToMicros(4));
    const audited = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM audit_log WHERE task_id = $1 AND action = 'reserve'`, [t]);
    expect(audited.rows[0]!.n).toBe(1);
  });

  // Two calls for the same task that overlap (an activity retried after a timeout while its first
  // attempt still runs) must answer like a sequential repeat. Once both passed reserve()'s look for
  // an existing reservation before either inserted, and the second threw "duplicate key value
  // violates unique constraint reservations_pkey"; now the second waits on the task's advisory
  // lock. PGlite runs one transaction at a time, so it never showed the race.
  it('overlapping reserve() calls for one task both answer ok and hold it once', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const a = attributionOf(tenant);
    await setBudget(db, { tenant }, 'total', 10, 'test');
    await budgetHeadroom(db, a, AT); // creates the window row
    const t = await newTask(db, tenant);
    // Hold the window, so both calls are in flight before either inserts: one waits on the window,
    // the other on the task's lock (before the fix, both on the window).
    const blocker = await db.pool.connect();
    let results: ReserveResult[];
    try {
      await blocker.query('BEGIN');
      await blocker.query('SELECT 1 FROM budget_windows w JOIN budgets b ON b.id = w.budget_id WHERE b.tenant = $1 FOR UPDATE OF w', [tenant]);
      const calls = Promise.allSettled([reserve(db, t, a, usdToMicros(4), AT), reserve(db, t, a, usdToMicros(4), AT)]);
      await lockWaiters(backend, db, ['FOR UPDATE OF w', "hashtext('reserve/'"], 2);
      await blocker.query('ROLLBACK');
      results = (await calls).map((r) =>
        r.status === 'fulfilled' ? r.value : { ok: false, retry: false, reasons: [{ code: 'THREW', message: String(r.reason) }] as never },
      );
    } finally {
      blocker.release();
    }
    expect(results).toEqual([
      { ok: true, amountMicros: usdToMicros(4) },
      { ok: true, amountMicros: usdToMicros(4) },
    ]);
    expect((await windows(db, tenant))['*/*']!.reserved).toBe(usdToMicros(4));
    const held = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM reservations WHERE task_id = $1', [t]);
    expect(held.rows[0]!.n).toBe(1);
  });

  it('a reservation must fit every covering budget, all or nothing, and names only the short ones', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const a = attributionOf(tenant);
    await setBudget(db, { tenant }, 'total', 100, 'test');
    await setBudget(db, { tenant, team: 'search' }, 'total', 5, 'test');
    // Another project of the team: does not cover the task.
    await setBudget(db, { tenant, team: 'search', project: 'other' }, 'total', 1, 'test');
    const t = await newTask(db, tenant);

    const short = await reserve(db, t, a, usdToMicros(6), AT);
    expect(short).toEqual({
      ok: false,
      retry: false,
      reasons: [expect.objectContaining({ code: 'BUDGET_EXCEEDED', limit: 5, requested: 6, policy: `budget:${tenant}/search/*:total` })],
    });
    const w = await windows(db, tenant);
    expect(w['*/*']!.reserved).toBe(0);
    expect(w['search/*']!.reserved).toBe(0);

    const t2 = await newTask(db, tenant);
    expect((await reserve(db, t2, a, usdToMicros(5), AT)).ok).toBe(true);
    const after = await windows(db, tenant);
    expect(after['*/*']!.reserved).toBe(usdToMicros(5));
    expect(after['search/*']!.reserved).toBe(usdToMicros(5));
    expect(after['search/other']?.reserved ?? 0).toBe(0);
  });

  it('property: concurrent reserve/charge/release never leave reserved + spent above the limit', async () => {
    const { db } = ledger;
    const other = ledger.pool(4);
    // Each task: reserve an amount; if held, charge parts of it (never more than it holds), then maybe release.
    const taskArb = fc.record({
      amount: fc.integer({ min: 1, max: 4_000_000 }),
      charges: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 }),
      release: fc.boolean(),
      viaOther: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1_000_000, max: 10_000_000 }), fc.array(taskArb, { minLength: 1, maxLength: 8 }), async (limit, specs) => {
        const tenant = newTenant();
        const a = attributionOf(tenant);
        await setBudget(db, { tenant }, 'total', limit / 1_000_000, 'test');
        const ids: string[] = [];
        for (let i = 0; i < specs.length; i++) ids.push(await newTask(db, tenant));
        let spent = 0;
        let stillHeld = 0;
        let done = false;
        const samples: { reserved: number; spent: number }[] = [];
        const sampler = (async () => {
          while (!done) {
            // Read in a transaction: on PGlite an autocommit read racing transactions of other
            // connections can fail (see the report on ledger/embedded.ts).
            const w = (await db.tx((c) => windows(c, tenant)))['*/*'];
            if (w) samples.push(w);
            await new Promise((r) => setTimeout(r, 5));
          }
        })();
        await Promise.all(
          specs.map(async (s, i) => {
            const q = s.viaOther ? other : db;
            const id = ids[i]!;
            const r = await reserve(q, id, a, s.amount, AT);
            if (!r.ok) {
              expect(r.reasons[0]?.code).toBe('BUDGET_EXCEEDED');
              return;
            }
            let remaining = s.amount;
            for (const share of s.charges) {
              const micros = Math.floor(remaining * share);
              await charge(q, id, tenant, micros);
              remaining -= micros;
              spent += micros;
            }
            if (s.release) expect(await release(q, id)).toBe(remaining);
            else stillHeld += remaining;
          }),
        );
        done = true;
        await sampler;
        const w = (await windows(db, tenant))['*/*']!;
        samples.push(w);
        for (const x of samples) expect(x.reserved + x.spent).toBeLessThanOrEqual(limit);
        expect(w).toEqual({ limit, reserved: stillHeld, spent });
      }),
      { numRuns: 6, endOnFailure: true },
    );
  });
});
