/**
 * PostgreSQL restarted twice under a running deployment: a `govloop worker` process with cluster
 * tasks in flight on the simulated backend, and a `govloop serve` process taking usage, both on the
 * chaos suite's private cluster (global-setup.ts). Both processes stay up; serve answers 503 while
 * the ledger is down and 200 once it is back; every task ends Succeeded with each GPU-second and
 * token charged exactly once; every usage event sent through serve is in the ledger once.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { Db } from '../../ledger/db';
import { taskUsage } from '../../ledger/usage';
import { GovloopClient } from '../../sdk';
import { govloop, govloopBin, repoRoot } from '../support/cli';
import { intent } from '../support/harness';
import { restartPostgres, startPostgres, stopPostgres } from './support/postgres';
import { waitFor as pollUntil } from '../support/worker-process';

const suffix = randomUUID().slice(0, 8);
const tenant = `t-pgrestart-${suffix}`;
const taskQueue = `govloop-control-pgrestart-${suffix}`;
/**
 * DURATION_S simulated seconds at SPEEDUP: a minute of wall time per task, so all four are still
 * running at the second restart on a loaded machine (the test checks that they are).
 */
const SPEEDUP = 100;
const DURATION_S = 6000;
const TASKS = 4;
/** 2.5M llama-3-8b output tokens at $0.40/M: $1 per usage event sent through serve. */
const EVENT_MICROS = 1_000_000;

let dir: string;
let db: Db;
let connection: Connection;
let gov: GovloopClient;
const children: { name: string; child: ChildProcess; log: () => string }[] = [];

/** Spawns a govloop process; keeps the tail of its stderr (drained, so a chatty outage cannot block it) for failure messages. */
function spawnGovloop(name: string, args: string[], env: Record<string, string>): { child: ChildProcess; stdout: () => string } {
  const child = spawn(process.execPath, [govloopBin, ...args], { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out = (out + d).slice(-20_000)));
  child.stderr!.on('data', (d) => (err = (err + d).slice(-20_000)));
  children.push({ name, child, log: () => err });
  return { child, stdout: () => out };
}

const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
const why = () =>
  children
    .map((c) => `${c.name} (${alive(c.child) ? 'running' : `exited ${c.child.exitCode ?? c.child.signalCode}`}): ${c.log().slice(-3000)}`)
    .join('\n---\n');

/** The shared poll, its failure also showing what the worker and serve logged. */
const waitFor = <T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number, last?: () => string): Promise<T> =>
  pollUntil(what, fn, timeoutMs, () => `${last ? last() : ''}\n${why()}`);

const usageEvent = (id: string) => ({
  id,
  time: new Date(Date.now() - 60_000).toISOString(),
  attribution: { tenant, team: 'ingest', project: 'api', model: 'llama-3-8b', useCase: 'chat' },
  meter: 'tokens_out',
  quantity: 2_500_000,
});

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'govloop-pgrestart-'));
  db = new Db(inject('databaseUrl'), 2);
  connection = await Connection.connect({ address: inject('temporalAddress') });
  gov = new GovloopClient(new Client({ connection }), taskQueue);
});

afterAll(async () => {
  for (const { child } of children) {
    if (!alive(child)) continue;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  await connection?.close();
  await db?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('PostgreSQL restarted twice mid-run', () => {
  it('worker and serve stay up, serve says 503 while it is down, every task succeeds with exact charges, no usage twice', async () => {
    const env = { DATABASE_URL: inject('databaseUrl'), GOVLOOP_DATA_DIR: join(dir, 'state'), GOVLOOP_LOG_LEVEL: 'warn' };
    await setBudget(db, { tenant }, 'month', 1000, 'test');
    const created = await govloop(['keys', 'create', '--tenant', tenant, '--as', 'ops', '--json'], env);
    expect(created.code, created.stderr).toBe(0);
    const key: string = created.json().key;

    const worker = spawnGovloop('worker', ['worker', '--task-queue', taskQueue, '--cluster', `sim-pgrestart-${suffix}`, '--no-controllers'], {
      ...env,
      TEMPORAL_ADDRESS: inject('temporalAddress'),
      GOVLOOP_SIM_SPEEDUP: String(SPEEDUP),
    }).child;
    const served = spawnGovloop('serve', ['serve', '--port', '0'], env);
    const serve = served.child;
    // Either process exiting fails the test at once, with its log, rather than at a timeout.
    const died = new Promise<never>((_, reject) => {
      for (const [name, c] of [
        ['worker', worker],
        ['serve', serve],
      ] as const)
        c.once('exit', (code, signal) => reject(new Error(`govloop ${name} exited (${code ?? signal}):\n${why()}`)));
    });
    died.catch(() => undefined);
    const base = await waitFor('govloop serve to listen', async () => /listening on (http:\/\/\S+)/.exec(served.stdout())?.[1], 60_000);

    const post = (events: unknown[]) =>
      fetch(`${base}/v1/usage`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events }),
      });
    /** A client that honours 503: re-sends the same batch until it is answered 200. */
    const sendUntilAccepted = async (events: unknown[]) =>
      waitFor(
        'the usage batch to be accepted',
        async () => {
          if (!alive(serve)) throw new Error(`govloop serve exited:\n${why()}`);
          const r = await post(events).catch(() => undefined);
          if (r === undefined || r.status === 503) return undefined;
          expect(r.status, await r.clone().text()).toBe(200);
          return (await r.json()) as { accepted: number; duplicates: number };
        },
        120_000,
      );
    const sent = new Set<string>();
    const batch = (n: string) => {
      const events = [1, 2, 3].map((i) => usageEvent(`${n}-${i}`));
      for (const e of events) sent.add(e.id);
      return events;
    };
    expect(await sendUntilAccepted(batch('before'))).toMatchObject({ accepted: 3 });

    const ids: string[] = [];
    for (let i = 0; i < TASKS; i++) {
      const a = await gov.submit(
        intent(tenant, {
          name: `pgrestart-${i}`,
          attribution: { tenant, team: `team-${i}`, project: 'p', model: 'llama-3-8b', useCase: 'u' },
          resources: { gpus: 2, gpuType: i % 2 ? 'A100' : 'H100', sharing: 'exclusive' },
          simulation: { durationSeconds: DURATION_S, tokensPerSecond: 7 },
        }),
        { requester: 'test' },
      );
      expect(a.decision).toBe('admitted');
      ids.push(a.taskId);
    }
    let seen = '';
    const meteredNow = async () => {
      const s = await Promise.all(ids.map((id) => gov.status(id)));
      seen = s.map((x) => `${x.taskId} ${x.state} ${x.usage.gpuSeconds} GPU-s`).join('; ');
      return s;
    };
    const allRunningPast = async (floor: number[]) =>
      waitFor(
        'every task running and metered further',
        async () => {
          if (!alive(worker)) throw new Error(`govloop worker exited:\n${why()}`);
          const s = await meteredNow();
          return s.every((x, i) => x.state === 'Running' && x.usage.gpuSeconds > floor[i]!) ? s.map((x) => x.usage.gpuSeconds) : undefined;
        },
        180_000,
        () => seen,
      );

    // Restart 1: stopped long enough to ask serve while it is down, then started.
    const metered = await allRunningPast(ids.map(() => 0));
    await stopPostgres();
    const down = await post(batch('during-1'));
    expect(down.status).toBe(503);
    expect(down.headers.get('retry-after')).toBe('5');
    expect(((await down.json()) as { error: string }).error).toMatch(/ledger \(PostgreSQL\) is unavailable/);
    expect((await fetch(`${base}/healthz`)).status).toBe(503);
    expect([alive(worker), alive(serve)], why()).toEqual([true, true]);
    await startPostgres();
    await waitFor('serve to answer /healthz again', async () => ((await fetch(`${base}/healthz`)).status === 200 ? true : undefined), 60_000);
    // The batch refused while it was down, re-sent: in once.
    expect(await sendUntilAccepted([...sent].filter((id) => id.startsWith('during-1')).map(usageEvent))).toMatchObject({ accepted: 3 });

    // Restart 2: pg_ctl restart while a batch is on its way; the sender retries through it.
    await allRunningPast(metered);
    const racing = sendUntilAccepted(batch('during-2'));
    await restartPostgres();
    expect((await racing).accepted + (await racing).duplicates).toBe(3);
    await waitFor('serve to answer /healthz again', async () => ((await fetch(`${base}/healthz`)).status === 200 ? true : undefined), 60_000);
    expect(await sendUntilAccepted(batch('after'))).toMatchObject({ accepted: 3 });

    const results = await Promise.race([Promise.all(ids.map((id) => gov.result(id))), died]);
    expect([alive(worker), alive(serve)], why()).toEqual([true, true]);
    for (const [i, r] of results.entries()) {
      expect(r.state).toBe('Succeeded');
      const usage = await taskUsage(db, ids[i]!);
      expect(usage.gpuSeconds).toBe(2 * DURATION_S);
      expect(usage.tokensProcessed).toBe(7 * DURATION_S);
      const price = i % 2 ? 2 : 4;
      expect(usage.costMicros).toBe(Math.round(2 * (DURATION_S / 3600) * price * 1e6));
      expect(r.costUsd).toBeCloseTo(usage.costMicros / 1e6, 6);
      // The meter's rows, counted directly: each covers [before, after) of its meter's running
      // total, and together they tile [0, total] with no overlap. A row written twice (a retried
      // activity whose first commit went through) would overlap its twin.
      const { rows } = await db.query<{ idempotency_key: string; meter: string }>('SELECT idempotency_key, meter FROM usage_events WHERE task_id = $1', [
        ids[i],
      ]);
      for (const [meter, total] of [
        ['gpu_seconds', 2 * DURATION_S],
        ['tokens_processed', 7 * DURATION_S],
      ] as const) {
        const ranges = rows
          .filter((row) => row.meter === meter)
          .map((row) => /:([0-9.e+]+)-([0-9.e+]+)$/.exec(row.idempotency_key)!.slice(1).map(Number) as [number, number])
          .sort((a, b) => a[0] - b[0]);
        expect(ranges.length).toBeGreaterThan(1);
        expect(ranges[0]![0]).toBe(0);
        for (let k = 1; k < ranges.length; k++) expect(ranges[k]![0], `${meter} rows of ${ids[i]}`).toBe(ranges[k - 1]![1]);
        expect(ranges.at(-1)![1]).toBeCloseTo(total, 6);
      }
    }

    // Usage through serve: each event id once, each $1.
    const ingested = await db.query<{ n: number; keys: number; cost: number }>(
      `SELECT count(*)::int AS n, count(DISTINCT u.idempotency_key)::int AS keys, sum(u.cost_micros)::float8 AS cost
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1 AND u.task_id IS NULL`,
      [tenant],
    );
    expect(ingested.rows).toEqual([{ n: sent.size, keys: sent.size, cost: sent.size * EVENT_MICROS }]);

    const [budget] = await showBudgets(db, { tenant }, new Date());
    const total = (await Promise.all(ids.map((id) => taskUsage(db, id)))).reduce((s, u) => s + u.costMicros, 0) + sent.size * EVENT_MICROS;
    expect(budget!.spentUsd).toBeCloseTo(total / 1e6, 6);
    expect(budget!.reservedUsd).toBe(0);
  }, 600_000);
});
