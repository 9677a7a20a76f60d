import { type Socket, connect } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedLedger, startEmbeddedLedger } from '../../ledger/embedded';

/**
 * The embedded ledger serves one PGlite session to many connections. These tests drive the wire
 * protocol by hand where `pg` would hide the timing: a client whose Parse and Bind arrive apart
 * must still run its own statement, whatever other clients do in between.
 */
let ledger: EmbeddedLedger;

beforeAll(async () => {
  ledger = await startEmbeddedLedger();
});

afterAll(async () => {
  await ledger.stop();
});

const msg = (type: string, body: Buffer) => {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'ascii');
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
};
const cstr = (s: string) => Buffer.from(`${s}\0`, 'utf8');
const int16 = (n: number) => Buffer.from([(n >> 8) & 0xff, n & 0xff]);
const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};

/** A raw protocol client: collects backend messages and waits for ReadyForQuery. */
class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  messages: { type: string; body: Buffer }[] = [];
  constructor(readonly socket: Socket) {
    socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 5 && this.buf.length >= 1 + this.buf.readInt32BE(1)) {
        const len = 1 + this.buf.readInt32BE(1);
        this.messages.push({ type: String.fromCharCode(this.buf[0]!), body: this.buf.subarray(5, len) });
        this.buf = this.buf.subarray(len);
        if (this.messages.at(-1)!.type === 'Z') this.waiters.shift()?.();
      }
    });
  }
  static async open(port: number): Promise<RawClient> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    const c = new RawClient(socket);
    const params = Buffer.concat([cstr('user'), cstr('postgres'), cstr('database'), cstr('postgres'), Buffer.from([0])]);
    const ready = c.ready();
    socket.write(Buffer.concat([int32(params.length + 8), int32(196608), params]));
    await ready;
    c.messages = [];
    return c;
  }
  ready(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }
  rows(): string[] {
    return this.messages
      .filter((m) => m.type === 'D')
      .map((m) => {
        const len = m.body.readInt32BE(2);
        return m.body.subarray(6, 6 + len).toString('utf8');
      });
  }
}

describe('embedded ledger wire server', () => {
  it("keeps one client's Parse … Sync together when another client's statements arrive in between", async () => {
    const a = await RawClient.open(ledger.port);
    const pool = new pg.Pool({ connectionString: ledger.url, max: 4 });
    // Client A parses its (unnamed) statement and, before binding it, other clients run theirs.
    a.socket.write(msg('P', Buffer.concat([cstr(''), cstr("SELECT 'from-a:' || $1::text"), int16(0)])));
    await new Promise((r) => setTimeout(r, 30));
    const others = await Promise.all(Array.from({ length: 8 }, (_, i) => pool.query('SELECT $1::int * 10 AS x', [i])));
    expect(others.map((r) => r.rows[0].x)).toEqual([0, 10, 20, 30, 40, 50, 60, 70]);
    const done = a.ready();
    const value = Buffer.from('42');
    a.socket.write(msg('B', Buffer.concat([cstr(''), cstr(''), int16(0), int16(1), int32(value.length), value, int16(0)])));
    await new Promise((r) => setTimeout(r, 30));
    a.socket.write(Buffer.concat([msg('E', Buffer.concat([cstr(''), int32(0)])), msg('S', Buffer.alloc(0))]));
    await done;
    expect(a.messages.filter((m) => m.type === 'E')).toEqual([]);
    expect(a.rows()).toEqual(['from-a:42']);
    a.socket.destroy();
    await pool.end();
  });

  it('gives an open transaction to its client alone, and rolls it back when the client goes away', async () => {
    const pool = new pg.Pool({ connectionString: ledger.url, max: 20 });
    await pool.query('CREATE TABLE counter (n int)');
    await pool.query('INSERT INTO counter VALUES (0)');
    // 100 read-modify-write transactions at once: no update may be lost.
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        const c = await pool.connect();
        try {
          await c.query('BEGIN');
          const { rows } = await c.query('SELECT n FROM counter');
          await c.query('UPDATE counter SET n = $1', [rows[0].n + 1]);
          await c.query('COMMIT');
        } finally {
          c.release();
        }
      }),
    );
    expect((await pool.query('SELECT n FROM counter')).rows[0].n).toBe(100);
    // A client that dies inside a transaction leaves nothing behind and blocks no one.
    const dying = new pg.Client({ connectionString: ledger.url });
    dying.on('error', () => undefined);
    await dying.connect();
    await dying.query('BEGIN');
    await dying.query('UPDATE counter SET n = -1');
    (dying as unknown as { connection: { stream: Socket } }).connection.stream.destroy();
    expect((await pool.query('SELECT n FROM counter')).rows[0].n).toBe(100);
    await pool.end();
  });
});
