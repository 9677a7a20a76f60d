import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import { Db } from '../ledger/db';
import type { EmbeddedLedger } from '../ledger/embedded';
import { migrate } from '../ledger/migrate';
import { settings } from '../config/settings';

/**
 * How every govloop process finds the Temporal server and the ledger:
 *  1. TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / TEMPORAL_API_KEY / TLS (and TOML profiles) through
 *     @temporalio/envconfig, and DATABASE_URL — production settings always win;
 *  2. else the running `govloop dev` of the data dir (its dev.json);
 *  3. else localhost:7233 and, for the ledger, an embedded PGlite opened in this process.
 */
export const dataDir = (override?: string) => resolve(override ?? settings().GOVLOOP_DATA_DIR ?? join(homedir(), '.govloop'));

export interface DevState {
  pid: number;
  temporalAddress: string;
  namespace: string;
  databaseUrl: string;
  uiUrl: string | null;
}

const devStatePath = (dir: string) => join(dir, 'dev.json');

export function writeDevState(dir: string, state: DevState): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(devStatePath(dir), JSON.stringify(state, null, 2));
}

export function clearDevState(dir: string): void {
  rmSync(devStatePath(dir), { force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The state of a `govloop dev` that is running now for this data dir, if any. */
export function readDevState(dir = dataDir()): DevState | undefined {
  const p = devStatePath(dir);
  if (!existsSync(p)) return undefined;
  try {
    const s = JSON.parse(readFileSync(p, 'utf8')) as DevState;
    return alive(s.pid) ? s : undefined;
  } catch {
    return undefined;
  }
}

export async function connectTemporal(dir?: string): Promise<{ connection: Connection; client: Client; namespace: string; address: string }> {
  const cfg = loadClientConnectConfig();
  const env = settings();
  const dev = env.TEMPORAL_ADDRESS ? undefined : readDevState(dataDir(dir));
  const address = dev?.temporalAddress ?? cfg.connectionOptions.address ?? 'localhost:7233';
  const namespace = env.TEMPORAL_NAMESPACE ?? dev?.namespace ?? cfg.namespace ?? 'default';
  const connection = await Connection.connect({ ...cfg.connectionOptions, address, connectTimeout: 5000 });
  return { connection, client: new Client({ connection, namespace }), namespace, address };
}

export interface Ledger {
  db: Db;
  /** Where the ledger is: "postgres", "govloop dev" or "embedded". */
  source: string;
  close(): Promise<void>;
}

/** Opens the ledger (migrated) the way the rules above say. */
export async function openLedger(dir?: string, opts: { poolSize?: number } = {}): Promise<Ledger> {
  const root = dataDir(dir);
  let url = settings().DATABASE_URL;
  let source = 'postgres';
  let embedded: EmbeddedLedger | undefined;
  if (!url) {
    const dev = readDevState(root);
    if (dev) {
      url = dev.databaseUrl;
      source = 'govloop dev';
    } else {
      // PGlite loads only when it is used (most CLI calls reach PostgreSQL or a running govloop dev).
      const { startEmbeddedLedger } = await import('../ledger/embedded');
      embedded = await startEmbeddedLedger({ dataDir: join(root, 'ledger') });
      url = embedded.url;
      source = 'embedded';
    }
  }
  const db = new Db(url, opts.poolSize ?? 10);
  await migrate(db);
  return {
    db,
    source,
    async close() {
      await db.close();
      await embedded?.stop();
    },
  };
}
