/**
 * Budget enforcement, measured through a real Temporal dev server and a real ledger:
 *
 *   (a) lease spend checks per second in process (`BudgetLease.trySpend`, no round trip), side by
 *       side in one run with the same spends each sent as its own round trip (a `leaseSpend`
 *       update per call: what a client without a lease would pay per check);
 *   (b) the time from a threshold crossing (the usage that crosses it is committed) to the
 *       enforcement action (the ladder step recorded in the ledger, which admission and the step
 *       gate read), p50/p99 over many budgets crossing at staggered moments, at the budget
 *       controller's poll interval.
 *
 *   npm run bench:budget -- [--seconds 3] [--round-trips 300] [--crossings 24] [--poll-ms 1000]
 *                          [--database-url postgresql://…] [--json]
 *
 * Ledger: DATABASE_URL / --database-url (a real PostgreSQL; rows go under tenants of the bench's
 * own), else an embedded PGlite in a temp dir. The dev server runs headless in a temp dir.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { SimulatedCluster } from '../cluster/simulated/backend';
import { loadConfig } from '../config/load';
import { setBudget } from '../ledger/budgets';
import { Db } from '../ledger/db';
import { type EmbeddedLedger, startEmbeddedLedger } from '../ledger/embedded';
import { migrate } from '../ledger/migrate';
import { recordUsage } from '../ledger/usage';
import { startDevServer } from '../runtime/dev-server';
import { nudgeCrossed, startBudgetController } from '../runtime/schedules';
import { GovloopClient } from '../sdk';
import { bundleWorkflows, createWorkers } from '../workers/worker';
import { budgetControllerId, leaseSpendUpdate } from '../workflows/messages';
import { describeMachine, fmt, machine, nowMs, parseFlags, round, summarize, table } from './lib';

const usage = `usage: tsx bench/budget.ts [--seconds S] [--round-trips N] [--crossings C] [--poll-ms P] [--database-url URL] [--json]
  --seconds       how long to run in-process trySpend checks (default 3)
  --round-trips   spends sent one round trip each, for the side-by-side baseline (default 300)
  --crossings     budgets that each cross their notify threshold once (default 24)
  --poll-ms       the budget controller's poll interval (default 1000)
  --database-url  a PostgreSQL ledger (default: $DATABASE_URL, else an embedded PGlite)
  --json          print one JSON object instead of tables`;

async function main() {
  const flags = parseFlags(
    { seconds: 3, 'round-trips': 300, crossings: 24, 'poll-ms': 1000, 'database-url': undefined as string | undefined, json: false },
    usage,
  );
  const m = machine();
  const log = (s: string) => {
    if (!flags.json) console.log(s);
  };
  log(`machine:    ${describeMachine(m)}`);
  const dataDir = mkdtempSync(join(tmpdir(), 'govloop-bench-budget-'));
  const stops: (() => Promise<void>)[] = [];
  try {
    Runtime.install({ logger: new DefaultLogger('ERROR') });
    let ledger: EmbeddedLedger | undefined;
    const url = flags['database-url'] ?? process.env.DATABASE_URL ?? (ledger = await startEmbeddedLedger({ dataDir: join(dataDir, 'ledger') })).url;
    if (ledger) stops.push(() => ledger!.stop());
    const db = new Db(url, 10);
    stops.push(() => db.close());
    await migrate(db);
    const server = await startDevServer({ dataDir, headless: true });
    stops.push(() => server.stop());
    const config = loadConfig();
    config.policies.budgetController = { pollMillis: Math.round(flags['poll-ms']), roundsPerRun: 500 };
    const suffix = randomUUID().slice(0, 8);
    config.cluster = { ...config.cluster, name: `bench-${suffix}` };
    const backend = new SimulatedCluster(db, config.cluster, config.simulation.speedup);
    await backend.sync();
    const native = await NativeConnection.connect({ address: server.address });
    stops.push(() => native.close());
    const conn = await Connection.connect({ address: server.address });
    stops.push(() => conn.close());
    const client = new Client({ connection: conn, namespace: server.namespace });
    const controlQueue = `govloop-control-bench-${suffix}`;
    const workers = await createWorkers({
      connection: native,
      namespace: server.namespace,
      db,
      config,
      backend,
      controlQueue,
      bundle: await bundleWorkflows(),
    });
    const running = Promise.all(workers.map((w) => w.run()));
    stops.push(async () => {
      for (const w of workers) w.shutdown();
      await running;
    });
    const gov = new GovloopClient(client, controlQueue);
    log(`ledger:     ${ledger ? 'embedded PGlite' : 'PostgreSQL'}; Temporal dev server ${server.address}; controller poll ${flags['poll-ms']} ms`);

    // (a) In-process checks against one lease, then the same spends one round trip each.
    const tenant = `bench-lease-${suffix}`;
    await setBudget(db, { tenant, team: 'chat' }, 'month', 1_000_000, 'bench');
    const lease = await gov.lease({ scope: { tenant, team: 'chat' }, usd: 100_000, holder: 'bench' });
    const spendUsd = 0.000_01; // ten micro-dollars a call: the lease outlasts the measurement
    let checks = 0;
    let allowed = 0;
    const t0 = nowMs();
    const until = t0 + flags.seconds * 1000;
    while (nowMs() < until) {
      for (let i = 0; i < 1000; i++) if (lease.trySpend(spendUsd)) allowed++;
      checks += 1000;
    }
    const inProcessPerSec = checks / ((nowMs() - t0) / 1000);
    await lease.flush();
    const handle = client.workflow.getHandle(budgetControllerId({ tenant, team: 'chat', project: '*', period: 'month' }));
    const leaseId = (await db.query<{ lease_id: string }>('SELECT lease_id FROM leases WHERE tenant = $1 LIMIT 1', [tenant])).rows[0]!.lease_id;
    const rt: number[] = [];
    const t1 = nowMs();
    for (let i = 0; i < flags['round-trips']; i++) {
      const s = nowMs();
      await handle.executeUpdate(leaseSpendUpdate, { args: [{ leaseId, seq: 1_000_000 + i, usd: spendUsd }] });
      rt.push(nowMs() - s);
    }
    const roundTripPerSec = flags['round-trips'] / ((nowMs() - t1) / 1000);
    await lease.close();

    // (b) Threshold crossing → step recorded in the ledger, for many budgets at staggered moments:
    // once waiting for the controller's poll, once with the nudge that govloop serve and the
    // workers send when recorded usage or a reservation crosses a threshold.
    const crossings = Math.round(flags.crossings);
    const crossing = async (mode: 'poll' | 'nudge'): Promise<number[]> => {
      const out: number[] = [];
      await Promise.all(
        Array.from({ length: crossings }, async (_, i) => {
          const t = `bench-ladder-${mode}-${suffix}-${i}`;
          const attribution = { tenant: t, team: 'a', project: 'b', model: 'm', useCase: 'u' };
          await setBudget(db, { tenant: t }, 'total', 100, 'bench');
          await startBudgetController(client, { tenant: t, team: '*', project: '*', period: 'total' }, controlQueue);
          await new Promise((r) => setTimeout(r, 200 + ((i * 997) % Math.max(1, Math.round(flags['poll-ms'] * 2)))));
          await recordUsage(db, config.priceBook, [
            { key: `${t}:cross`, taskId: null, attribution, meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: 55 * 900, occurredAt: new Date() },
          ]);
          const crossedAt = nowMs();
          if (mode === 'nudge') await nudgeCrossed(client, db, attribution, config.policies.ladder);
          for (;;) {
            const r = await db.query("SELECT 1 FROM ladder_events e JOIN budgets b ON b.id = e.budget_id WHERE b.tenant = $1 AND e.step = 'notify'", [t]);
            if (r.rowCount) break;
            await new Promise((res) => setTimeout(res, 5));
          }
          out.push(nowMs() - crossedAt);
        }),
      );
      return out;
    };
    const latencies = await crossing('poll');
    const nudged = await crossing('nudge');
    const lat = summarize(latencies, 0);
    const nud = summarize(nudged, 0);
    const rts = summarize(rt, 2);
    const result = {
      machine: m,
      ledger: ledger ? 'pglite' : 'postgresql',
      leaseChecks: {
        inProcessPerSec: Math.round(inProcessPerSec),
        allowed,
        checks,
        roundTripPerSec: round(roundTripPerSec, 1),
        roundTripMs: rts,
        ratio: Math.round(inProcessPerSec / roundTripPerSec),
      },
      thresholdToAction: { pollMs: flags['poll-ms'], crossings, pollOnlyMs: lat, withNudgeMs: nud },
    };
    if (flags.json) {
      console.log(JSON.stringify(result, null, 2));
      return;
    }
    console.log(
      table(
        ['lease spend checks', 'per second', 'p50 ms', 'p99 ms'],
        [
          ['BudgetLease.trySpend, in process', fmt(inProcessPerSec, 0), '—', '—'],
          ['one leaseSpend update per spend (round trip)', fmt(roundTripPerSec, 1), fmt(rts.p50, 2), fmt(rts.p99, 2)],
        ],
      ),
    );
    console.log(`in process / round trip: ${fmt(inProcessPerSec / roundTripPerSec, 0)}x (same run)`);
    console.log(
      table(
        ['threshold crossing → ladder step in the ledger', 'n', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms'],
        [
          [`controller poll only (every ${flags['poll-ms']} ms)`, lat.n, fmt(lat.p50, 0), fmt(lat.p90, 0), fmt(lat.p99, 0), fmt(lat.max, 0)],
          ['with the nudge on recording (serve, workers)', nud.n, fmt(nud.p50, 0), fmt(nud.p90, 0), fmt(nud.p99, 0), fmt(nud.max, 0)],
        ],
      ),
    );
  } finally {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
