import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { startDevServer } from '../../runtime/dev-server';
import { Db } from '../../ledger/db';
import { createDatabase } from '../../ledger/scratch';
import { migrate } from '../../ledger/migrate';
import { clearScratchRecord, recordScratch } from './scratch-record';

declare module 'vitest' {
  export interface ProvidedContext {
    temporalAddress: string;
    databaseUrl: string;
    temporalCli: string;
  }
}

/**
 * One real Temporal dev server and one fresh PostgreSQL database for the whole run. Each test
 * file runs its own workers on its own task queues and uses its own tenants, so files do not meet.
 * PostgreSQL comes from TEST_DATABASE_URL's server (default: the local one, trust auth).
 */
export default async function setup(project: TestProject) {
  const dataDir = mkdtempSync(join(tmpdir(), 'govloop-test-'));
  recordScratch({ dirs: [dataDir] });
  const server = await startDevServer({ dataDir, headless: true, onProgress: (m) => console.log(m) });
  const adminUrl = process.env.TEST_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';
  const name = `govloop_test_${process.pid}_${Date.now()}`;
  recordScratch({ databases: [{ adminUrl, name }] });
  const database = await createDatabase(adminUrl, name);
  const db = new Db(database.url, 2);
  await migrate(db);
  await db.close();

  project.provide('temporalAddress', server.address);
  project.provide('databaseUrl', database.url);
  const { findTemporalCli } = await import('../../runtime/temporal-cli');
  project.provide('temporalCli', findTemporalCli({ build: false })?.path ?? '');

  return async () => {
    await server.stop();
    await database.drop();
    rmSync(dataDir, { recursive: true, force: true });
    clearScratchRecord();
  };
}
