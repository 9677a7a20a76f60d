/**
 * The ledger's connection dying under a checked-out client: PostgreSQL ends the session (a
 * restart, pg_terminate_backend, the idle-in-transaction timeout) while Db.tx holds it. The call
 * fails with a LedgerUnavailableError that activities retry (never a DataError), the process keeps
 * running, and the pool hands out a working connection next. Real PostgreSQL only: PGlite is one
 * in-process session with no backend to kill.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, it } from 'vitest';
import { isDataError } from '../../activities/errors';
import { Db, LedgerUnavailableError, isConnectionError } from '../../ledger/db';
import { sleep } from './backends';

let db: Db;
let admin: Db;
/** Errors nobody listened for: an 'error' event of a client without a listener lands here, and would end a worker. */
let uncaught: unknown[] = [];
const record = (err: unknown) => uncaught.push(err);

beforeAll(() => {
  db = new Db(inject('databaseUrl'), 2);
  admin = new Db(inject('databaseUrl'), 2);
});
afterAll(async () => {
  await db.close();
  await admin.close();
});
beforeEach(() => {
  uncaught = [];
  process.on('uncaughtException', record);
});
afterEach(() => {
  process.off('uncaughtException', record);
});

/** Waits until the backend `pid` is in pg_stat_activity with `state` (or gone, for state null). */
async function backendIs(pid: number, state: string | null): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const { rows } = await admin.query<{ state: string }>('SELECT state FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (state === null ? rows.length === 0 : rows[0]?.state === state) return;
    await sleep(25);
  }
  throw new Error(`backend ${pid} never reached state ${state ?? '(gone)'} in 10 s`);
}

const terminate = async (pid: number) => expect((await admin.query<{ ok: boolean }>('SELECT pg_terminate_backend($1) AS ok', [pid])).rows[0]!.ok).toBe(true);
const pidOf = async (c: { query: Db['query'] }) => (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;

describe('a backend killed under a checked-out client', () => {
  it('between statements of a Db.tx: the call fails with a connection error, the process stays up, the next tx succeeds', async () => {
    let killed = 0;
    const call = db.tx(async (c) => {
      killed = await pidOf(c);
      await terminate(killed);
      // The session is gone before the transaction's next statement is sent: its FATAL message
      // reaches a client with no query running, which pg reports only as an 'error' event.
      await backendIs(killed, null);
      await sleep(100);
      await c.query('SELECT 1');
    });
    const err = await call.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(uncaught).toEqual([]);
    expect(err).toBeInstanceOf(LedgerUnavailableError);
    expect(err).toMatchObject({
      code: '57P01',
      message: expect.stringMatching(/^ledger unavailable: 57P01 terminating connection due to administrator command/),
    });
    expect(isDataError(err)).toBe(false);

    const next = await db.tx(async (c) => pidOf(c));
    expect(next).not.toBe(killed);
  });

  it('while a statement of a Db.tx runs: the same', async () => {
    let killed = 0;
    const call = db.tx(async (c) => {
      killed = await pidOf(c);
      await c.query('SELECT pg_sleep(20)');
    });
    const settled = call.then(
      () => undefined,
      (e: unknown) => e,
    );
    await expect.poll(() => killed, { timeout: 10_000 }).toBeGreaterThan(0);
    await backendIs(killed, 'active');
    await terminate(killed);
    const err = await settled;
    expect(uncaught).toEqual([]);
    expect(err).toBeInstanceOf(LedgerUnavailableError);
    expect(err).toMatchObject({ code: '57P01' });
    expect(isDataError(err)).toBe(false);
    expect((await db.tx(async (c) => c.query<{ n: number }>('SELECT 41 + 1 AS n'))).rows).toEqual([{ n: 42 }]);
  });

  it('a transaction left idle past idleInTransactionTimeoutMillis is ended by the server, reported the same way', async () => {
    const short = new Db(inject('databaseUrl'), { max: 1, idleInTransactionTimeoutMillis: 200 });
    try {
      const err = await short
        .tx(async (c) => {
          const pid = await pidOf(c);
          await backendIs(pid, null);
          await c.query('SELECT 1');
        })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      // PostgreSQL 14+: 25P03 idle_in_transaction_session_timeout.
      expect(err).toBeInstanceOf(LedgerUnavailableError);
      expect(err).toMatchObject({ code: '25P03' });
      expect(uncaught).toEqual([]);
      expect((await short.tx(async (c) => c.query('SELECT 1'))).rowCount).toBe(1);
    } finally {
      await short.close();
    }
  });

  it('Db.query against a server that is not there fails with a connection error, not a hang', async () => {
    const url = new URL(inject('databaseUrl'));
    url.port = '1'; // nothing listens on port 1
    const nowhere = new Db(url.toString(), { max: 1, connectionTimeoutMillis: 2000 });
    try {
      const err = await nowhere.query('SELECT 1').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(LedgerUnavailableError);
      expect(err).toMatchObject({ code: 'ECONNREFUSED' });
    } finally {
      await nowhere.close();
    }
  });
});

describe('session settings', () => {
  it('every connection carries the statement and idle-in-transaction timeouts of its Db', async () => {
    const { rows } = await db.query<{ s: string; i: string }>(
      "SELECT current_setting('statement_timeout') AS s, current_setting('idle_in_transaction_session_timeout') AS i",
    );
    expect(rows).toEqual([{ s: '30s', i: '1min' }]);
    const quick = new Db(inject('databaseUrl'), { max: 1, statementTimeoutMillis: 100 });
    const err = await quick
      .query('SELECT pg_sleep(5)')
      .then(
        () => undefined,
        (e: unknown) => e,
      )
      .finally(() => quick.close());
    // A statement over its time is cancelled: retryable (not a data error), and the connection lives on.
    expect(err).toMatchObject({ code: '57014' });
    expect(isConnectionError(err)).toBe(false);
    expect(isDataError(err)).toBe(false);
  });
});

describe('isConnectionError and isDataError', () => {
  const table: { name: string; err: unknown; wantConnection: boolean; wantData: boolean }[] = [
    { name: '08006 connection_failure', err: { code: '08006' }, wantConnection: true, wantData: false },
    { name: '08P01 protocol_violation', err: { code: '08P01' }, wantConnection: true, wantData: false },
    { name: '57P01 admin_shutdown', err: { code: '57P01' }, wantConnection: true, wantData: false },
    { name: '57P02 crash_shutdown', err: { code: '57P02' }, wantConnection: true, wantData: false },
    { name: '57P03 cannot_connect_now', err: { code: '57P03' }, wantConnection: true, wantData: false },
    { name: '25P03 idle_in_transaction_session_timeout', err: { code: '25P03' }, wantConnection: true, wantData: false },
    { name: 'ECONNRESET', err: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }), wantConnection: true, wantData: false },
    { name: 'ECONNREFUSED', err: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), wantConnection: true, wantData: false },
    { name: "pg's lost connection", err: new Error('Connection terminated unexpectedly'), wantConnection: true, wantData: false },
    { name: "pg-pool's connect timeout", err: new Error('timeout exceeded when trying to connect'), wantConnection: true, wantData: false },
    { name: 'LedgerUnavailableError', err: new LedgerUnavailableError({ code: '57P01', message: 'x' }), wantConnection: true, wantData: false },
    { name: '22021 NUL byte', err: { code: '22021' }, wantConnection: false, wantData: true },
    { name: '23502 not null', err: { code: '23502' }, wantConnection: false, wantData: true },
    { name: '57014 statement timeout', err: { code: '57014' }, wantConnection: false, wantData: false },
    { name: '40P01 deadlock', err: { code: '40P01' }, wantConnection: false, wantData: false },
    { name: 'a plain error', err: new Error('boom'), wantConnection: false, wantData: false },
  ];
  it.each(table)('$name', ({ err, wantConnection, wantData }) => {
    expect(isConnectionError(err)).toBe(wantConnection);
    expect(isDataError(err)).toBe(wantData);
  });
});
