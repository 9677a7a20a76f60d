/**
 * Usage ingestion throughput: events/s through the HTTP API (`POST /v1/usage`, batches, real
 * loopback HTTP, validation, dedupe, multi-row insert, budget charge) against a baseline that
 * writes the same events with one INSERT … ON CONFLICT DO NOTHING round trip per event, straight
 * to the same PostgreSQL with the same number of connections in flight. The two paths alternate
 * round by round on fresh tenants, so a machine getting busier or quieter hits both.
 *
 * The baseline does less than the API does (no HTTP, no JSON, no validation, no budget charge,
 * no per-event answer), so the ratio understates what batching buys.
 *
 * It creates a database of its own on the server of $DATABASE_URL (default
 * postgresql://postgres@127.0.0.1:5432/postgres) and drops it at the end.
 *
 *   npm run bench:ingest -- [--events 10000] [--resent 0.3] [--batch 500] [--concurrency 4] [--rounds 5] [--json]
 */
import { loadConfig } from '../config/load';
import { type Meter, costMicros, priceVersionAt } from '../governance/pricing';
import { attributionId } from '../ledger/attribution';
import { setBudget } from '../ledger/budgets';
import { Db } from '../ledger/db';
import { createDatabase } from '../ledger/scratch';
import { createKey } from '../ledger/keys';
import { migrate } from '../ledger/migrate';
import { buildApi } from '../server/app';
import { describeMachine, fail, fmt, machine, median, nowMs, parseFlags, rng, round, table } from './lib';

const usage = `usage: tsx bench/ingest.ts [--events N] [--resent F] [--batch B] [--concurrency C] [--rounds R] [--json]
  --events       events sent per path per round, re-sends included (default 10000)
  --resent       share of those that are re-sends of earlier events (default 0.3)
  --batch        events per POST /v1/usage (default 500)
  --concurrency  requests (API) or connections (baseline) in flight (default 4)
  --rounds       rounds; each runs both paths on fresh tenants, order alternating (default 5)
  --json         print one JSON object instead of tables`;

interface Event {
  id: string;
  time: string;
  attribution: { tenant: string; team: string; project: string; model: string; useCase: string };
  meter: string;
  quantity: number;
  gpuType?: string;
}

/** `n` events of `tenant`, `resent` of them copies of earlier ones, shuffled. */
function makeEvents(tenant: string, n: number, resent: number, now: Date, seed: number): { events: Event[]; unique: number } {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const unique = Math.max(1, Math.round(n * (1 - resent)));
  const meters = ['tokens_in', 'tokens_out', 'gpu_seconds', 'kv_gb_seconds', 'network_bytes'];
  const base: Event[] = Array.from({ length: unique }, (_, i) => {
    const meter = pick(meters);
    return {
      id: `ev-${seed}-${i}`,
      time: new Date(now.getTime() - Math.floor(r() * 3_600_000)).toISOString(),
      attribution: {
        tenant,
        team: pick(['search', 'support', 'ads', 'infra']),
        project: pick(['ranker', 'helpdesk', 'bidder']),
        model: pick(['llama-3-8b', 'llama-3-70b', 'frontier-large']),
        useCase: 'relevance',
      },
      meter,
      quantity: meter === 'gpu_seconds' ? Math.floor(r() * 600) : Math.floor(r() * 20_000),
      ...(meter === 'gpu_seconds' ? { gpuType: pick(['H100', 'A100']) } : {}),
    };
  });
  const events = [...base, ...Array.from({ length: n - unique }, () => pick(base))];
  for (let i = events.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [events[i], events[j]] = [events[j]!, events[i]!];
  }
  return { events, unique };
}

/** Runs `work(i)` for i in [0, n) with at most `c` in flight. */
async function pool(n: number, c: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(c, n) }, async () => {
      while (next < n) await work(next++);
    }),
  );
}

async function main() {
  const flags = parseFlags({ events: 10_000, resent: 0.3, batch: 500, concurrency: 4, rounds: 5, json: false }, usage);
  if (flags.resent >= 1) fail(`--resent must be below 1\n${usage}`);
  const rounds = Math.max(1, Math.round(flags.rounds));
  const batchSize = Math.round(flags.batch);
  const concurrency = Math.round(flags.concurrency);
  const events = Math.round(flags.events);
  const m = machine();
  const priceBook = loadConfig().priceBook;

  const adminUrl = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';
  const dbName = `govloop_bench_ingest_${process.pid}_${Date.now()}`;
  const database = await createDatabase(adminUrl, dbName);
  const url = new URL(database.url);
  // Room for the API's connections and the baseline's, never both at once.
  const db = new Db(database.url, Math.max(10, concurrency * 2));
  const api = await buildApi({ db, config: { priceBook, maxAgeHours: 72, futureSkewSeconds: 300 } });
  try {
    await migrate(db);
    const base = await api.app.listen({ host: '127.0.0.1', port: 0 });
    const { rows: ver } = await db.query<{ v: string }>("SELECT current_setting('server_version') AS v");

    const apiRun = async (round: number) => {
      const tenant = `bench-api-${round}`;
      await setBudget(db, { tenant }, 'month', 1e9, 'bench');
      const { key } = await createKey(db, tenant, 'bench');
      const { events: evs, unique } = makeEvents(tenant, events, flags.resent, new Date(), 1000 + round);
      const bodies = Array.from({ length: Math.ceil(evs.length / batchSize) }, (_, i) =>
        JSON.stringify({ events: evs.slice(i * batchSize, (i + 1) * batchSize) }),
      );
      let accepted = 0;
      let duplicates = 0;
      const start = nowMs();
      await pool(bodies.length, concurrency, async (i) => {
        const res = await fetch(`${base}/v1/usage`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: bodies[i]!,
        });
        const body = (await res.json()) as { accepted: number; duplicates: number; rejected: unknown[] };
        if (res.status !== 200 || body.rejected.length > 0) throw new Error(`POST /v1/usage answered ${res.status}: ${JSON.stringify(body).slice(0, 300)}`);
        accepted += body.accepted;
        duplicates += body.duplicates;
      });
      const seconds = (nowMs() - start) / 1000;
      if (accepted !== unique || duplicates !== evs.length - unique)
        throw new Error(`API round ${round}: accepted ${accepted}, duplicates ${duplicates}; want ${unique}, ${evs.length - unique}`);
      return { seconds, eventsPerSec: evs.length / seconds, accepted, duplicates };
    };

    const baselineRun = async (round: number) => {
      const tenant = `bench-row-${round}`;
      const { events: evs, unique } = makeEvents(tenant, events, flags.resent, new Date(), 1000 + round);
      // Attribution rows resolved before the clock starts, one at a time (a concurrent first use
      // of a tuple is not safe in attributionId): this only helps the baseline.
      const ids = new Map<string, number>();
      for (const e of evs) {
        const a = e.attribution;
        const tuple = `${a.team}|${a.project}|${a.model}`;
        if (!ids.has(tuple)) ids.set(tuple, await attributionId(db, a));
      }
      let accepted = 0;
      const start = nowMs();
      const clients = await Promise.all(Array.from({ length: concurrency }, () => db.pool.connect()));
      try {
        let next = 0;
        await Promise.all(
          clients.map(async (c) => {
            while (next < evs.length) {
              const e = evs[next++]!;
              const a = e.attribution;
              const attr = ids.get(`${a.team}|${a.project}|${a.model}`)!;
              const version = priceVersionAt(priceBook, e.time);
              const subject = e.meter === 'gpu_seconds' ? `${e.gpuType}:exclusive` : a.model;
              const cost = ['tokens_in', 'tokens_out', 'gpu_seconds'].includes(e.meter)
                ? costMicros(version, { meter: e.meter as Meter, quantity: e.quantity, subject })
                : 0;
              const r = await c.query(
                `INSERT INTO usage_events (idempotency_key, task_id, attribution_id, tool, meter, subject, quantity, price_version, cost_micros, occurred_at)
                 VALUES ($1, NULL, $2, NULL, $3, $4, $5, $6, $7, $8) ON CONFLICT (idempotency_key) DO NOTHING`,
                [`row:${tenant}:${e.id}`, attr, e.meter, subject, e.quantity, version.version, cost, e.time],
              );
              accepted += r.rowCount ?? 0;
            }
          }),
        );
      } finally {
        for (const c of clients) c.release();
      }
      const seconds = (nowMs() - start) / 1000;
      if (accepted !== unique) throw new Error(`baseline round ${round}: accepted ${accepted}, want ${unique}`);
      return { seconds, eventsPerSec: evs.length / seconds, accepted, duplicates: evs.length - accepted };
    };

    // Warm-up: JIT, connections, the first attribution rows; not counted.
    await apiRun(0);
    await baselineRun(0);
    const perRound: { round: number; api: Awaited<ReturnType<typeof apiRun>>; baseline: Awaited<ReturnType<typeof baselineRun>> }[] = [];
    for (let r = 1; r <= rounds; r++) {
      // Alternate which path goes first.
      if (r % 2 === 1) {
        const a = await apiRun(r);
        const b = await baselineRun(r);
        perRound.push({ round: r, api: a, baseline: b });
      } else {
        const b = await baselineRun(r);
        const a = await apiRun(r);
        perRound.push({ round: r, api: a, baseline: b });
      }
    }

    const stats = (xs: number[]) => ({
      medianPerSec: Math.round(median(xs)),
      minPerSec: Math.round(Math.min(...xs)),
      maxPerSec: Math.round(Math.max(...xs)),
      rounds: xs.map(Math.round),
    });
    const results = {
      api: { what: `POST /v1/usage over HTTP, ${batchSize} events per request, ${concurrency} in flight`, ...stats(perRound.map((p) => p.api.eventsPerSec)) },
      baseline: { what: `one INSERT … ON CONFLICT per event, ${concurrency} connections`, ...stats(perRound.map((p) => p.baseline.eventsPerSec)) },
    };
    const ratio = round(results.api.medianPerSec / results.baseline.medianPerSec, 2);
    const perRoundRatios = perRound.map((p) => round(p.api.eventsPerSec / p.baseline.eventsPerSec, 2));
    const report = {
      benchmark: 'ingest',
      machine: m,
      postgres: ver[0]?.v ?? 'unknown',
      parameters: { events, resent: flags.resent, batch: batchSize, concurrency, rounds },
      results,
      ratio: { apiToBaseline: ratio, perRound: perRoundRatios },
    };
    if (flags.json) {
      console.log(JSON.stringify(report));
    } else {
      console.log(`machine:    ${describeMachine(m)}`);
      console.log(`postgres:   ${report.postgres} at ${url.host} (database ${dbName}, dropped afterwards)`);
      console.log(
        `parameters: ${events} events per path per round (${Math.round(flags.resent * 100)}% re-sent, shuffled), ${rounds} rounds after a warm-up round, paths alternating`,
      );
      console.log();
      console.log(
        table(
          ['path', 'median events/s', 'min /s', 'max /s', 'per round /s'],
          (['api', 'baseline'] as const).map((k) => [
            results[k].what,
            fmt(results[k].medianPerSec),
            fmt(results[k].minPerSec),
            fmt(results[k].maxPerSec),
            results[k].rounds.map((x) => fmt(x)).join(' / '),
          ]),
        ),
      );
      console.log(
        `API / per-event INSERT: ${ratio}x (medians; per round ${perRoundRatios.join(', ')}). The baseline skips HTTP, validation and budget charging.`,
      );
    }
  } finally {
    await api.app.close();
    await db.close();
    await database.drop();
  }
}

main().catch((err) => {
  console.error(`bench:ingest failed: ${(err as Error).stack ?? String(err)}`);
  process.exit(1);
});
