import { mkdirSync } from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';

/**
 * The embedded ledger: PostgreSQL compiled to WASM (PGlite), persisted under a data dir and
 * served on a loopback port with the PostgreSQL wire protocol. Everything else — worker, CLI in
 * another terminal, tests — talks to it through `pg`, exactly as to a real PostgreSQL.
 */
export interface EmbeddedLedger {
  url: string;
  port: number;
  stop(): Promise<void>;
}

export async function startEmbeddedLedger(opts: { dataDir?: string; port?: number } = {}): Promise<EmbeddedLedger> {
  if (opts.dataDir) mkdirSync(opts.dataDir, { recursive: true });
  const db = await PGlite.create(opts.dataDir);
  const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port: opts.port ?? 0, maxConnections: 64 });
  await server.start();
  const address = server.getServerConn();
  const port = Number(address.split(':').pop());
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    port,
    async stop() {
      await server.stop();
      await db.close();
    },
  };
}
