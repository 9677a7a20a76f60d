import { mkdirSync } from 'node:fs';
import { type Server, type Socket, createServer } from 'node:net';
import { PGlite } from '@electric-sql/pglite';

/**
 * The embedded ledger: PostgreSQL compiled to WASM (PGlite), persisted under a data dir and
 * served on a loopback port with the PostgreSQL wire protocol. Everything else — worker, CLI in
 * another terminal, tests — talks to it through `pg`, exactly as to a real PostgreSQL.
 *
 * PGlite is one backend session. Many client connections share it safely only if each client's
 * work runs as a unit: an extended-protocol exchange (Parse … Sync) must not interleave with
 * another client's, and an open transaction belongs to its client until it ends. This server
 * guarantees both (pglite-socket 0.2 interleaves single messages, which lets one client's Bind
 * meet another's Parse: wrong or lost statements under concurrency; see docs/decisions).
 */
export interface EmbeddedLedger {
  url: string;
  port: number;
  stop(): Promise<void>;
}

const SSL_REQUEST = 80877103;
const GSS_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
/** Messages after which the backend answers ReadyForQuery: the end of a unit of work. */
const UNIT_END = new Set(['S'.charCodeAt(0), 'Q'.charCodeAt(0)]);
const TERMINATE = 'X'.charCodeAt(0);
/** Flush: the client wants what it sent so far answered, but the unit goes on (the session stays held). */
const FLUSH = 'H'.charCodeAt(0);

/** Hands the one PGlite session to one connection at a time, in arrival order. */
class SessionLock {
  private owner: Connection | null = null;
  private waiters: { c: Connection; resolve: () => void }[] = [];

  async acquire(c: Connection): Promise<void> {
    if (this.owner === c) return;
    if (this.owner === null) {
      this.owner = c;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push({ c, resolve }));
  }

  release(c: Connection): void {
    if (this.owner !== c) return;
    const next = this.waiters.shift();
    this.owner = next?.c ?? null;
    next?.resolve();
  }

  drop(c: Connection): void {
    this.waiters = this.waiters.filter((w) => w.c !== c);
    this.release(c);
  }

  ownedBy(c: Connection): boolean {
    return this.owner === c;
  }
}

class Connection {
  private buffer = Buffer.alloc(0);
  private started = false;
  private batch: Uint8Array[] = [];
  private work: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly db: PGlite,
    private readonly lock: SessionLock,
    private readonly socket: Socket,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (d) => this.onData(d));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => void this.onClose());
  }

  private onData(data: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, data]);
    for (;;) {
      if (!this.started) {
        if (this.buffer.length < 8) return;
        const len = this.buffer.readInt32BE(0);
        if (this.buffer.length < len) return;
        const code = this.buffer.readInt32BE(4);
        const msg = this.buffer.subarray(0, len);
        this.buffer = this.buffer.subarray(len);
        if (code === SSL_REQUEST || code === GSS_REQUEST) {
          this.socket.write('N');
          continue;
        }
        if (code === CANCEL_REQUEST) {
          this.socket.end();
          return;
        }
        this.started = true;
        this.enqueue([new Uint8Array(msg)], 'end');
        continue;
      }
      if (this.buffer.length < 5) return;
      const len = 1 + this.buffer.readInt32BE(1);
      if (this.buffer.length < len) return;
      const type = this.buffer[0]!;
      const msg = new Uint8Array(this.buffer.subarray(0, len));
      this.buffer = this.buffer.subarray(len);
      if (type === TERMINATE) {
        this.socket.end();
        return;
      }
      this.batch.push(msg);
      if (UNIT_END.has(type) || type === FLUSH) {
        const unit = this.batch;
        this.batch = [];
        this.enqueue(unit, type === FLUSH ? 'hold' : 'end');
      }
    }
  }

  /** Runs one unit with the session held; keeps holding it while this client's transaction is open. */
  private enqueue(unit: Uint8Array[], then: 'end' | 'hold'): void {
    this.work = this.work.then(async () => {
      if (this.closed) return;
      await this.lock.acquire(this);
      try {
        for (const m of unit) {
          await this.db.execProtocolRawStream(m, {
            onRawData: (out) => {
              if (!this.closed && this.socket.writable) this.socket.write(out);
            },
          });
        }
      } finally {
        if (then === 'end' && !this.db.isInTransaction()) this.lock.release(this);
      }
    });
    this.work.catch(() => this.socket.destroy());
  }

  private async onClose(): Promise<void> {
    this.closed = true;
    await this.work.catch(() => undefined);
    if (this.lock.ownedBy(this) && this.db.isInTransaction()) await this.db.exec('ROLLBACK').catch(() => undefined);
    this.lock.drop(this);
  }
}

export async function startEmbeddedLedger(opts: { dataDir?: string; port?: number } = {}): Promise<EmbeddedLedger> {
  if (opts.dataDir) mkdirSync(opts.dataDir, { recursive: true });
  const db = await PGlite.create(opts.dataDir);
  const lock = new SessionLock();
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    new Connection(db, lock, socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    port,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      await db.close();
    },
  };
}
