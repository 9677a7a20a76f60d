import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { Db } from '../../ledger/db';
import { migrate } from '../../ledger/migrate';
import { createDatabase } from '../../ledger/scratch';
import { startDevServer } from '../../runtime/dev-server';
import { findTemporalCli } from '../../runtime/temporal-cli';
import { clearScratchRecord, recordScratch } from '../support/scratch-record';
import { type PgCluster, createPgCluster, removePgCluster, stopPgClusterArgv } from './support/pg-cluster';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The chaos suite's private PostgreSQL cluster: test/chaos/support/postgres.ts stops and starts it. */
    chaosPostgres: PgCluster;
  }
}

/**
 * The chaos suite's own servers: a Temporal dev server, as the main suite's setup starts one, and a
 * private PostgreSQL cluster (support/pg-cluster.ts) that the tests may stop and restart without
 * touching the machine's PostgreSQL, which the main suite and other runs share. The same keys as
 * the main setup (temporalAddress, databaseUrl, temporalCli), plus chaosPostgres.
 */
export default async function setup(project: TestProject) {
  // The cluster first: without PostgreSQL binaries the suite fails here, saying what to install.
  const cluster = await createPgCluster();
  // pg_ctl detaches the server from the run's process group: a run the watchdog ends leaves it running.
  recordScratch({ commands: [stopPgClusterArgv(cluster)], dirs: [cluster.root] });
  let dataDir: string | undefined;
  let server: Awaited<ReturnType<typeof startDevServer>> | undefined;
  try {
    const database = await createDatabase(cluster.adminUrl, 'govloop_chaos');
    const db = new Db(database.url, 2);
    await migrate(db);
    await db.close();
    dataDir = mkdtempSync(join(tmpdir(), 'govloop-chaos-'));
    recordScratch({ dirs: [dataDir] });
    server = await startDevServer({ dataDir, headless: true, onProgress: (m) => console.log(m) });
    project.provide('temporalAddress', server.address);
    project.provide('databaseUrl', database.url);
    project.provide('temporalCli', findTemporalCli({ build: false })?.path ?? '');
    project.provide('chaosPostgres', cluster);
  } catch (err) {
    await removePgCluster(cluster);
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }

  return async () => {
    await server?.stop();
    await removePgCluster(cluster);
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    clearScratchRecord();
  };
}
