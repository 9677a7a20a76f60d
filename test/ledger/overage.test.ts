/**
 * Issue 15, decision 0023: a task's usage is charged to its budgets at most what it reserved; the
 * rest is overage, recorded with the task's attribution and audited, charged to no budget.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { PoliciesFile } from '../../config/schema';
import { costMicros, priceVersionAt, usdToMicros } from '../../governance/pricing';
import { release, reserve, setBudget } from '../../ledger/budgets';
import { migrate } from '../../ledger/migrate';
import { type UsageEvent, overageCrossed, recordUsage } from '../../ledger/usage';
import { govloop } from '../support/cli';
import { AT, type Ledger, attributionOf, backends, newTask, newTenant, windows } from './backends';

const priceBook = loadConfig().priceBook;
const v1 = priceVersionAt(priceBook, AT.toISOString());
/** H100 exclusive is $4 per GPU-hour: 900 GPU-seconds are $1. */
const secondsFor = (usd: number) => Math.round(usd * 900);

describe.each(backends)('overage on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  /** A tenant with a total budget and one running task holding `reserveUsd`; its GPU meter as a stream, as observeJob reports it. */
  async function fixture(reserveUsd = 0.8, budgetUsd = 3) {
    const { db } = ledger;
    const tenant = newTenant();
    const attribution = attributionOf(tenant);
    await setBudget(db, { tenant }, 'total', budgetUsd, 'test');
    const taskId = await newTask(db, tenant, { state: 'Running' });
    expect(await reserve(db, taskId, attribution, usdToMicros(reserveUsd), AT)).toEqual({ ok: true, amountMicros: usdToMicros(reserveUsd) });
    /** The part of the task's GPU stream from `before` to `after` GPU-seconds. */
    const part = (before: number, after: number): UsageEvent => ({
      key: `${taskId}:gpu_seconds:${before}-${after}`,
      taskId,
      attribution,
      meter: 'gpu_seconds',
      subject: 'H100:exclusive',
      quantity: after - before,
      cumulativeBefore: before,
      occurredAt: AT,
    });
    const state = async () => {
      const task = await db.query<{ cost_micros: number }>('SELECT cost_micros FROM tasks WHERE task_id = $1', [taskId]);
      const r = await db.query<{ state: string; remaining_micros: number; charged_micros: number }>(
        'SELECT state, remaining_micros, charged_micros FROM reservations WHERE task_id = $1',
        [taskId],
      );
      const o = await db.query<{ micros: number; n: number }>(
        'SELECT COALESCE(SUM(micros), 0)::float8 AS micros, count(*)::int AS n FROM overages WHERE task_id = $1',
        [taskId],
      );
      const audit = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_log WHERE task_id = $1 AND action = 'overage'", [taskId]);
      const w = (await windows(db, tenant))['*/*']!;
      return {
        taskCost: task.rows[0]!.cost_micros,
        reservation: r.rows[0],
        overage: Number(o.rows[0]!.micros),
        overageRows: o.rows[0]!.n,
        overageAudits: audit.rows[0]!.n,
        spent: w.spent,
        reserved: w.reserved,
      };
    };
    return { tenant, taskId, attribution, part, state };
  }

  it('a task reserving $0.80 whose job reports $1.05: the budget is charged $0.80, $0.25 is overage, attributed and audited', async () => {
    const { db } = ledger;
    const f = await fixture(0.8);
    // Two observations: 600 GPU-seconds ($0.666667), then 345 more (the job stopped late): $1.05 in all.
    const first = await recordUsage(db, priceBook, [f.part(0, 600)]);
    expect(first.overages).toEqual([]);
    const second = await recordUsage(db, priceBook, [f.part(600, secondsFor(1.05))]);
    expect(second.overages).toEqual([{ taskId: f.taskId, overageMicros: 250_000, taskOverageMicros: 250_000 }]);

    expect(await f.state()).toEqual({
      taskCost: 1_050_000,
      reservation: { state: 'held', remaining_micros: 0, charged_micros: 800_000 },
      overage: 250_000,
      overageRows: 1,
      overageAudits: 1,
      spent: 800_000,
      reserved: 0,
    });
    const o = await db.query('SELECT tenant, team, project, micros, occurred_at, charge_key FROM overages WHERE task_id = $1', [f.taskId]);
    expect(o.rows).toEqual([
      { tenant: f.tenant, team: 'search', project: 'ranker', micros: 250_000, occurred_at: AT, charge_key: `${f.taskId}:gpu_seconds:600-945` },
    ]);
    const audit = await db.query("SELECT actor, decision, detail FROM audit_log WHERE task_id = $1 AND action = 'overage'", [f.taskId]);
    expect(audit.rows).toEqual([
      {
        actor: 'govloop',
        decision: 'recorded',
        detail: expect.objectContaining({
          usd: 0.25,
          chargedUsd: 0.133333,
          costUsd: 0.383333,
          reservedUsd: 0.8,
          taskOverageUsd: 0.25,
          scope: `${f.tenant}/search/ranker`,
        }),
      },
    ]);

    // Nothing hidden: the task's usage still reads its whole cost.
    const usage = await db.query<{ cost: number }>('SELECT SUM(cost_micros)::float8 AS cost FROM usage_events WHERE task_id = $1', [f.taskId]);
    expect(Number(usage.rows[0]!.cost)).toBe(1_050_000);

    // A replayed event changes nothing.
    const replay = await recordUsage(db, priceBook, [f.part(600, secondsFor(1.05))]);
    expect(replay).toEqual({ accepted: 0, duplicates: 1, costMicros: 0, overages: [] });
    expect(await f.state()).toMatchObject({ taskCost: 1_050_000, overage: 250_000, overageRows: 1, overageAudits: 1, spent: 800_000 });
  });

  it('usage after release is charged up to what the reservation had left; the rest is overage', async () => {
    const { db } = ledger;
    const f = await fixture(0.8);
    await recordUsage(db, priceBook, [f.part(0, secondsFor(0.5))]);
    expect(await release(db, f.taskId)).toBe(300_000);
    expect((await f.state()).reserved).toBe(0);
    // A late observation after settling: $0.40 more, of which $0.30 fits what was reserved.
    const late = await recordUsage(db, priceBook, [f.part(secondsFor(0.5), secondsFor(0.9))]);
    expect(late.overages).toEqual([{ taskId: f.taskId, overageMicros: 100_000, taskOverageMicros: 100_000 }]);
    expect(await f.state()).toEqual({
      taskCost: 900_000,
      reservation: { state: 'released', remaining_micros: 0, charged_micros: 800_000 },
      overage: 100_000,
      overageRows: 1,
      overageAudits: 1,
      spent: 800_000,
      reserved: 0,
    });
    // Past the reservation entirely: all overage.
    const later = await recordUsage(db, priceBook, [f.part(secondsFor(0.9), secondsFor(1))]);
    expect(later.overages).toEqual([{ taskId: f.taskId, overageMicros: 100_000, taskOverageMicros: 200_000 }]);
    expect(await f.state()).toMatchObject({ taskCost: 1_000_000, overage: 200_000, overageRows: 2, overageAudits: 2, spent: 800_000 });
  });

  it('usage of a task without a reservation, and usage without a task, is charged in full as before', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const attribution = attributionOf(tenant);
    await setBudget(db, { tenant }, 'total', 100, 'test');
    const taskId = await newTask(db, tenant, { state: 'Running' });
    const ev = (key: string, task: string | null): UsageEvent => ({
      key: `${tenant}:${key}`,
      taskId: task,
      attribution,
      meter: 'gpu_seconds',
      subject: 'H100:exclusive',
      quantity: 900,
      occurredAt: AT,
    });
    const r = await recordUsage(db, priceBook, [ev('a', taskId), ev('b', null)]);
    expect(r).toEqual({ accepted: 2, duplicates: 0, costMicros: 2_000_000, overages: [] });
    expect((await windows(db, tenant))['*/*']).toEqual({ limit: 100_000_000, reserved: 0, spent: 2_000_000 });
    expect((await db.query('SELECT 1 FROM overages WHERE tenant = $1', [tenant])).rowCount).toBe(0);
  });

  it('two charges of one task in concurrent transactions never carry it past its reservation', async () => {
    const f = await fixture(0.8);
    const event = (key: string): UsageEvent => ({
      key: `${f.taskId}:${key}`,
      taskId: f.taskId,
      attribution: f.attribution,
      meter: 'gpu_seconds',
      subject: 'H100:exclusive',
      quantity: secondsFor(0.6),
      occurredAt: AT,
    });
    // $0.60 each, delivered at once over two pools: together $1.20 against $0.80 reserved.
    const [ra, rb] = await Promise.all([recordUsage(ledger.pool(2), priceBook, [event('one')]), recordUsage(ledger.pool(2), priceBook, [event('two')])]);
    expect([...ra.overages, ...rb.overages]).toEqual([{ taskId: f.taskId, overageMicros: 400_000, taskOverageMicros: 400_000 }]);
    expect(await f.state()).toEqual({
      taskCost: 1_200_000,
      reservation: { state: 'held', remaining_micros: 0, charged_micros: 800_000 },
      overage: 400_000,
      overageRows: 1,
      overageAudits: 1,
      spent: 800_000,
      reserved: 0,
    });
  });

  it('the operator is alerted once per task: only the observation whose overage takes the total past the tolerance crosses it', async () => {
    const { db } = ledger;
    const f = await fixture(0.8);
    const tolerance = usdToMicros(0.1);
    // $0.75 (inside), $0.10 ($0.05 over), $0.10 ($0.15 over: crosses), $0.10 ($0.25 over).
    const marks = [0, secondsFor(0.75), secondsFor(0.85), secondsFor(0.95), secondsFor(1.05)];
    const crossed: boolean[] = [];
    for (let i = 1; i < marks.length; i++) {
      const r = await recordUsage(db, priceBook, [f.part(marks[i - 1]!, marks[i]!)]);
      crossed.push(r.overages.some((o) => overageCrossed(o, tolerance)));
    }
    expect(crossed).toEqual([false, false, true, false]);
    expect(overageCrossed({ taskId: f.taskId, overageMicros: 250_000, taskOverageMicros: 250_000 }, 0)).toBe(true);
    expect(overageCrossed({ taskId: f.taskId, overageMicros: 100_000, taskOverageMicros: 100_000 }, 100_000)).toBe(false);
  });

  it('property: over any sequence of observations, replays and a release, the budget gets min(cost, reserved) and the rest is overage', async () => {
    const { db } = ledger;
    const step = fc.oneof(
      { arbitrary: fc.record({ kind: fc.constant('observe' as const), seconds: fc.integer({ min: 1, max: 900 }) }), weight: 6 },
      { arbitrary: fc.record({ kind: fc.constant('replay' as const), seconds: fc.constant(0) }), weight: 2 },
      { arbitrary: fc.record({ kind: fc.constant('release' as const), seconds: fc.constant(0) }), weight: 1 },
    );
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2_000_000 }), fc.array(step, { minLength: 1, maxLength: 8 }), async (reservedMicros, steps) => {
        const f = await fixture(reservedMicros / 1e6, 100);
        const before = await f.state();
        let metered = 0;
        const sent: UsageEvent[] = [];
        for (const s of steps) {
          if (s.kind === 'observe') {
            const e = f.part(metered, metered + s.seconds);
            metered += s.seconds;
            sent.push(e);
            await recordUsage(db, priceBook, [e]);
          } else if (s.kind === 'replay' && sent.length > 0) {
            expect((await recordUsage(db, priceBook, [sent[sent.length - 1]!])).duplicates).toBe(1);
          } else if (s.kind === 'release') {
            await release(db, f.taskId);
          }
        }
        const total = costMicros(v1, { meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: metered });
        const charged = Math.min(total, reservedMicros);
        const after = await f.state();
        expect(after.taskCost).toBe(total);
        expect(after.spent - before.spent).toBe(charged);
        expect(after.overage).toBe(total - charged);
        expect(after.reservation!.charged_micros).toBe(charged);
        expect(after.spent + after.reserved).toBeLessThanOrEqual(reservedMicros);
      }),
      { numRuns: backend.name === 'pglite' ? 10 : 25 },
    );
  });
});

describe('migration 0013 on a ledger that already holds reservations', () => {
  it('backfills charged_micros: what a held reservation gave up; for a released one, its task cost capped at the amount', async () => {
    const ledger = await backends[0]!.scratch();
    try {
      const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ledger', 'migrations');
      const { db } = ledger;
      await db.query('CREATE TABLE govloop_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
      const earlier = readdirSync(dir)
        .filter((x) => x.endsWith('.sql') && x < '0013')
        .sort();
      for (const file of earlier) {
        await db.query(readFileSync(join(dir, file), 'utf8'));
        await db.query('INSERT INTO govloop_migrations (name) VALUES ($1)', [file.replace(/\.sql$/, '')]);
      }
      const tenant = newTenant();
      const a = attributionOf(tenant);
      const held = await newTask(db, tenant);
      const done = await newTask(db, tenant);
      const over = await newTask(db, tenant);
      for (const t of [held, done, over]) expect((await reserve(db, t, a, 800_000, AT)).ok).toBe(true);
      await db.query('UPDATE reservations SET remaining_micros = 300000 WHERE task_id = $1', [held]);
      await db.query(`UPDATE reservations SET state = 'released', remaining_micros = 0 WHERE task_id = ANY($1)`, [[done, over]]);
      await db.query('UPDATE tasks SET cost_micros = 450000 WHERE task_id = $1', [done]);
      await db.query('UPDATE tasks SET cost_micros = 1050000 WHERE task_id = $1', [over]);

      expect(await migrate(db)).toContain('0013_overage');
      const { rows } = await db.query<{ task_id: string; charged_micros: number }>('SELECT task_id, charged_micros FROM reservations');
      expect(Object.fromEntries(rows.map((r) => [r.task_id, r.charged_micros]))).toEqual({ [held]: 500_000, [done]: 450_000, [over]: 800_000 });
    } finally {
      await ledger.close();
    }
  });
});

describe('policies.overage', () => {
  it('toleranceUsd defaults to 0 and must be a nonnegative number', () => {
    expect(loadConfig().policies.overage).toEqual({ toleranceUsd: 0 });
    const bad = PoliciesFile.safeParse({ ...loadConfig().policies, overage: { toleranceUsd: -1 } });
    expect(bad.success).toBe(false);
    expect(bad.error!.issues[0]!.path).toEqual(['overage', 'toleranceUsd']);
  });
});

describe('govloop report', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'govloop-overage-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('shows the overage per scope: in the cost, charged to no budget', async () => {
    const ledger = await backends[0]!.open();
    try {
      const { db } = ledger;
      const tenant = newTenant();
      const attribution = attributionOf(tenant);
      await setBudget(db, { tenant }, 'total', 3, 'test');
      const taskId = await newTask(db, tenant, { state: 'Running' });
      expect((await reserve(db, taskId, attribution, 800_000, AT)).ok).toBe(true);
      await recordUsage(db, priceBook, [
        { key: `${taskId}:gpu`, taskId, attribution, meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: secondsFor(1.05), occurredAt: AT },
      ]);
      const env = { DATABASE_URL: inject('databaseUrl'), GOVLOOP_DATA_DIR: join(dir, 'state') };
      const args = ['report', '--by', 'team,project', '--period', '2026-06', '--tenant', tenant];
      const json = await govloop([...args, '--format', 'json'], env);
      expect(json.code, json.stderr).toBe(0);
      expect(json.json().overages).toEqual([{ tenant, team: 'search', project: 'ranker', tasks: 1, costUsd: 0.25 }]);
      const text = await govloop(args, env);
      expect(text.code, text.stderr).toBe(0);
      expect(text.stdout).toContain('Overage: usage past the tasks’ reservations');
      const cells = text.stdout
        .split('\n')
        .find((l) => l.includes(tenant) && l.includes('$0.250000'))
        ?.split('│')
        .map((c) => c.trim())
        .filter((c) => c !== '');
      expect(cells, text.stdout).toEqual([tenant, 'search', 'ranker', '1', '$0.250000']);
    } finally {
      await ledger.close();
    }
  });
});
