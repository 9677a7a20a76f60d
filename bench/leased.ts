/**
 * The leased step gate against the synchronous one, in the same run (issue 13, decision 0030).
 *
 *   (a) synchronous: agent tasks whose every step is the `step` update (sent → answered);
 *   (b) leased: agent tasks whose steps go through the SDK's LeasedStepGate — decided in process,
 *       reported in batches. A decision's time is `await gate.step()`, the first step of each task
 *       (which waits for the grant) counted apart.
 *
 * After both, every task is finished and its ledger checked: each step metered once, the leased
 * tasks charged exactly what the synchronous tasks were for the same steps.
 *
 *   npm run bench:leased -- [--tasks 4] [--steps 150] [--database-url postgres://…] [--json]
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, type Worker } from '@temporalio/worker';
import { SimulatedCluster } from '../cluster/simulated/backend';
import { loadConfig } from '../config/load';
import type { IntentInput } from '../governance/intent';
import { Db } from '../ledger/db';
import { type EmbeddedLedger, startEmbeddedLedger } from '../ledger/embedded';
import { migrate } from '../ledger/migrate';
import { taskUsage } from '../ledger/usage';
import { startDevServer } from '../runtime/dev-server';
import { GovloopClient, type StepUsage } from '../sdk';
import { bundleWorkflows, createWorkers } from '../workers/worker';
import { clusterTaskQueue } from '../workflows/messages';
import { describeMachine, fmt, machine, nowMs, parseFlags, summarize, table } from './lib';

const usage = `usage: tsx bench/leased.ts [--tasks N] [--steps K] [--database-url URL] [--json]
  --tasks   agent tasks per gate (default 4)
  --steps   steps per task, at most 190 (default 150)`;

async function main() {
  const flags = parseFlags({ tasks: 4, steps: 150, 'database-url': undefined as string | undefined, json: false }, usage);
  const tasks = Math.round(flags.tasks);
  const steps = Math.min(190, Math.round(flags.steps));
  const log = (s: string) => {
    if (!flags.json) console.log(s);
  };
  const m = machine();
  log(`machine:    ${describeMachine(m)}`);
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const suffix = randomUUID().slice(0, 8);
  const tenant = `bench-${suffix}`;
  const dataDir = mkdtempSync(join(tmpdir(), 'govloop-bench-leased-'));
  const cleanups: (() => Promise<void>)[] = [];
  try {
    let url = flags['database-url'] ?? process.env.DATABASE_URL;
    if (!url) {
      const ledger: EmbeddedLedger = await startEmbeddedLedger({ dataDir: join(dataDir, 'ledger') });
      cleanups.push(() => ledger.stop());
      url = ledger.url;
    }
    const db = new Db(url, 10);
    cleanups.push(() => db.close());
    await migrate(db);
    const server = await startDevServer({ dataDir, headless: true, tuning: 'tuned', onProgress: log });
    cleanups.push(() => server.stop());
    const config = loadConfig();
    config.cluster = { ...config.cluster, name: `bench-${suffix}` };
    const backend = new SimulatedCluster(db, config.cluster, config.simulation.speedup);
    await backend.sync();
    const connection = await NativeConnection.connect({ address: server.address });
    cleanups.push(() => connection.close());
    const clientConnection = await Connection.connect({ address: server.address });
    cleanups.push(() => clientConnection.close());
    const client = new Client({ connection: clientConnection, namespace: server.namespace });
    const controlQueue = `govloop-control-bench-${suffix}`;
    const workers: Worker[] = await createWorkers({
      connection,
      namespace: server.namespace,
      db,
      config,
      backend,
      controlQueue,
      dispatchQueue: clusterTaskQueue(config.cluster.name),
      bundle: await bundleWorkflows(),
    });
    const running = Promise.all(workers.map((w) => w.run()));
    cleanups.push(async () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await running;
    });
    const gov = new GovloopClient(client, controlQueue);
    log(
      `parameters: ${tasks} agent tasks per gate, ${steps} steps each, one at a time; ledger ${(flags['database-url'] ?? process.env.DATABASE_URL) ? 'PostgreSQL' : 'embedded PGlite'}`,
    );

    const intent = (name: string): IntentInput => ({
      kind: 'agent',
      name,
      attribution: { tenant, team: 'search', project: 'helpdesk', model: 'llama-3-8b', useCase: 'ticket-triage' },
      caps: { maxContextTokens: 16000, maxSteps: steps + 1, maxToolCalls: 100, maxTokens: 2_000_000, maxUsd: 50 },
      priority: 'high',
      riskClass: 'low',
      tools: ['search.web'],
      resources: { gpus: 0 },
    });
    // Every fourth step calls a read-only low-risk tool; the rest are model calls.
    const step = (k: number): StepUsage => ({ tokensIn: 1200 + 10 * k, tokensOut: 250, contextTokens: 2000, ...(k % 4 === 3 ? { tool: 'search.web' } : {}) });
    const submit = async (name: string) => {
      const a = await gov.submit(intent(name), { requester: 'bench' });
      if (a.decision !== 'admitted') throw new Error(`admission ${a.decision}`);
      return a.taskId;
    };

    const syncMs: number[] = [];
    const leasedMs: number[] = [];
    const grantMs: number[] = [];
    const syncTasks: string[] = [];
    const leasedTasks: string[] = [];
    let fellBack = 0;
    for (let t = 0; t < tasks; t++) {
      const s = await submit('bench-sync');
      syncTasks.push(s);
      for (let k = 0; k < steps; k++) {
        const t0 = nowMs();
        const a = await gov.step(s, step(k), { as: 'bench' });
        syncMs.push(nowMs() - t0);
        if (a.answer !== 'allow') throw new Error(`sync step ${k} ${a.answer}`);
      }
      const l = await submit('bench-leased');
      leasedTasks.push(l);
      const gate = gov.leasedSteps(l, { as: 'bench', steps: steps + 1, batchSize: 64, flushMs: 500 });
      for (let k = 0; k < steps; k++) {
        const t0 = nowMs();
        const a = await gate.step(step(k));
        (k === 0 ? grantMs : leasedMs).push(nowMs() - t0);
        if (a.answer !== 'allow') throw new Error(`leased step ${k} ${a.answer}`);
        if (!a.leased) fellBack++;
      }
      await gate.close();
    }
    for (const id of [...syncTasks, ...leasedTasks]) await gov.finish(id, 'bench');
    const results = await Promise.all([...syncTasks, ...leasedTasks].map((id) => gov.result(id)));
    // The ledger after settle: every step metered once, leased charged as synchronous.
    const ledgers = await Promise.all([...syncTasks, ...leasedTasks].map((id) => taskUsage(db, id)));
    const syncCost = ledgers.slice(0, tasks).reduce((x, u) => x + u.costMicros, 0);
    const leasedCost = ledgers.slice(tasks).reduce((x, u) => x + u.costMicros, 0);
    const metered = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM agent_steps WHERE task_id = ANY($1)`, [leasedTasks]);
    const exact = leasedCost === syncCost && metered.rows[0]!.n === tasks * steps && results.every((r) => r.state === 'Succeeded');

    const s = summarize(syncMs, 3);
    const l = summarize(leasedMs, 4);
    const g = summarize(grantMs, 1);
    const report = {
      machine: m,
      parameters: { tasks, steps },
      synchronousMs: s,
      leasedMs: l,
      firstLeasedStepMs: g,
      leasedFellBack: fellBack,
      ledgerExact: exact,
      syncCostMicros: syncCost,
      leasedCostMicros: leasedCost,
    };
    if (flags.json) console.log(JSON.stringify(report, null, 2));
    else {
      log(
        table(
          ['gate', 'n', 'p50 ms', 'p99 ms', 'max ms'],
          [
            ['synchronous (step update round trip)', s.n, fmt(s.p50, 2), fmt(s.p99, 2), fmt(s.max, 2)],
            ['leased (decided in process)', l.n, fmt(l.p50, 4), fmt(l.p99, 4), fmt(l.max, 3)],
            ['leased, first step of a task (waits for the grant)', g.n, fmt(g.p50, 1), fmt(g.p99, 1), fmt(g.max, 1)],
          ],
        ),
      );
      log(`leased steps that fell back to the synchronous gate: ${fellBack}`);
      log(
        `ledger after settle: ${exact ? 'exact' : 'NOT exact'} (leased $${leasedCost / 1e6} vs synchronous $${syncCost / 1e6}, ${metered.rows[0]!.n} leased steps metered)`,
      );
    }
    if (!exact) process.exitCode = 1;
  } finally {
    for (const c of cleanups.reverse()) await c().catch((e: unknown) => console.error(`cleanup: ${String(e)}`));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
