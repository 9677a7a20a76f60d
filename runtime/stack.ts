import { join } from 'node:path';
import { NativeConnection, type Worker } from '@temporalio/worker';
import { Client, Connection } from '@temporalio/client';
import type { GovConfig } from '../config/load';
import { SimulatedCluster } from '../cluster/simulated/backend';
import { Db } from '../ledger/db';
import { type EmbeddedLedger, startEmbeddedLedger } from '../ledger/embedded';
import { migrate } from '../ledger/migrate';
import { createWorkers } from '../workers/worker';
import { ensureAuditCheckpointSchedule, ensureBudgetControllers, ensureReconcileSchedule, ensureRollupSchedule } from './schedules';
import { auditPaths } from '../ledger/audit-checkpoints';
import { type DevServer, startDevServer } from './dev-server';
import { clearDevState, writeDevState } from './environment';
import { settings } from '../config/settings';

export interface Stack {
  address: string;
  namespace: string;
  databaseUrl: string;
  ledgerSource: 'postgres' | 'embedded';
  uiUrl: string | null;
  db: Db;
  client: Client;
  workers: Worker[];
  /** Resolves when the workers stop (shutdown or failure). */
  running: Promise<void>;
  stop(): Promise<void>;
}

/**
 * Everything of a single-machine govloop: the Temporal dev server, the ledger (DATABASE_URL, or
 * an embedded PGlite served on a loopback port), the simulated cluster and the workers. Writes
 * dev.json so other govloop commands find this stack; stop() takes it all down in reverse.
 */
export async function startStack(opts: {
  dataDir: string;
  config: GovConfig;
  port?: number;
  uiPort?: number;
  ledgerPort?: number;
  headless?: boolean;
  onProgress?: (msg: string) => void;
}): Promise<Stack> {
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    stops.length = 0;
  };
  try {
    let ledger: EmbeddedLedger | undefined;
    let databaseUrl = settings().DATABASE_URL;
    if (!databaseUrl) {
      opts.onProgress?.('starting the embedded ledger (PGlite) ...');
      ledger = await startEmbeddedLedger({ dataDir: join(opts.dataDir, 'ledger'), ...(opts.ledgerPort !== undefined ? { port: opts.ledgerPort } : {}) });
      stops.push(() => ledger!.stop());
      databaseUrl = ledger.url;
    }
    const db = new Db(databaseUrl, 10);
    stops.push(() => db.close());
    await migrate(db);
    opts.onProgress?.('starting the Temporal dev server ...');
    const server: DevServer = await startDevServer({
      dataDir: opts.dataDir,
      ...(opts.port !== undefined ? { port: opts.port } : {}),
      ...(opts.uiPort !== undefined ? { uiPort: opts.uiPort } : {}),
      headless: opts.headless ?? false,
      onProgress: opts.onProgress,
    });
    stops.push(() => server.stop());
    const backend = new SimulatedCluster(db, opts.config.cluster, opts.config.simulation.speedup);
    await backend.sync();
    const connection = await NativeConnection.connect({ address: server.address });
    stops.push(() => connection.close());
    const clientConnection = await Connection.connect({ address: server.address });
    stops.push(() => clientConnection.close());
    const client = new Client({ connection: clientConnection, namespace: server.namespace });
    opts.onProgress?.('bundling workflows and starting workers ...');
    // Audit checkpoints and the signing key default to this stack's data dir (policies.audit nulls).
    opts.config.policies.audit = { ...opts.config.policies.audit, ...auditPaths(opts.config.policies.audit, opts.dataDir) };
    const workers = await createWorkers({ connection, namespace: server.namespace, db, config: opts.config, backend });
    await ensureRollupSchedule(client, { everySeconds: opts.config.policies.metering.rollupEverySeconds });
    await ensureAuditCheckpointSchedule(client, { everySeconds: opts.config.policies.audit.checkpointEverySeconds });
    await ensureReconcileSchedule(client, { everySeconds: opts.config.policies.reconcile.everySeconds });
    await ensureBudgetControllers(client, db);
    const running = Promise.all(workers.map((w) => w.run())).then(() => undefined);
    stops.push(async () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await running.catch(() => undefined);
    });
    writeDevState(opts.dataDir, { pid: process.pid, temporalAddress: server.address, namespace: server.namespace, databaseUrl, uiUrl: server.uiUrl });
    stops.push(async () => clearDevState(opts.dataDir));
    return {
      address: server.address,
      namespace: server.namespace,
      databaseUrl,
      ledgerSource: ledger ? 'embedded' : 'postgres',
      uiUrl: server.uiUrl,
      db,
      client,
      workers,
      running,
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
