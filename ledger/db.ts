import pg from 'pg';
import { MAX_LEDGER_MICROS, UsageLimitError } from '../governance/limits';

// bigint columns hold micro-dollars and ids: well inside Number's exact range (money counters are
// held to MAX_LEDGER_MICROS by CHECK constraints, migration 0012; sums are read as float8).
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

/**
 * The refusal of an addition that would carry a money counter past MAX_LEDGER_MICROS (a `*_max`
 * CHECK constraint, 23514) or past bigint (22003), as a UsageLimitError naming `what`; null for any
 * other error. The statement failed, so the caller's transaction rolls back: nothing moved.
 */
export function overLimit(err: unknown, what: string, addingMicros: number): UsageLimitError | null {
  const e = err as { code?: string; constraint?: string };
  const over = e.code === '22003' || (e.code === '23514' && typeof e.constraint === 'string' && e.constraint.endsWith('_max'));
  if (!over) return null;
  return new UsageLimitError(
    `adding $${(addingMicros / 1e6).toLocaleString('en-US')} to ${what} would pass the ledger's ceiling of $${(MAX_LEDGER_MICROS / 1e6).toLocaleString('en-US')} (2^53 - 1 micro-dollars): refused, nothing recorded`,
  );
}

export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
}

/**
 * How the ledger's connections behave when PostgreSQL is slow or gone. The defaults fit the
 * activities: a statement may run as long as the activity that issued it (startToCloseTimeout 30 s,
 * workflows/activity-options.ts), so a retry never races an older try still holding locks.
 */
export interface DbOptions {
  /** Most connections open at once. */
  max?: number;
  /** How long opening a connection may take before the call fails (and is retried by its caller). */
  connectionTimeoutMillis?: number;
  /** An idle pooled connection is closed after this long. */
  idleTimeoutMillis?: number;
  /** PostgreSQL's statement_timeout: longer statements are cancelled (57014). 0: none. */
  statementTimeoutMillis?: number;
  /**
   * PostgreSQL's idle_in_transaction_session_timeout: a session that sits inside a transaction
   * this long is ended by the server, so a stalled process cannot hold row locks or the audit
   * chain's lock for ever. 0: none.
   */
  idleInTransactionTimeoutMillis?: number;
  /** TCP keepalive: a server that vanished without closing the socket (host down, network cut) is noticed. */
  keepAliveInitialDelayMillis?: number;
}

export const dbDefaults: Required<DbOptions> = {
  max: 10,
  connectionTimeoutMillis: 10_000,
  idleTimeoutMillis: 30_000,
  statementTimeoutMillis: 30_000,
  idleInTransactionTimeoutMillis: 60_000,
  keepAliveInitialDelayMillis: 10_000,
};

/**
 * SQLSTATEs that mean the connection, not the statement, failed: class 08 (connection exception),
 * 57P01 admin_shutdown (a restart or pg_terminate_backend), 57P02 crash_shutdown, 57P03
 * cannot_connect_now (starting up or shutting down), 57P05 idle_session_timeout and 25P03
 * idle_in_transaction_session_timeout (the server ended the session).
 */
const CONNECTION_SQLSTATE = /^(08...|57P0[1235]|25P03)$/;
/** Socket errors of a server that is down, restarting or unreachable. */
const CONNECTION_ERRNO = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND']);
/** pg 8's own errors for a lost or unobtainable connection carry no code, only these messages. */
const CONNECTION_MESSAGE =
  /^(Connection terminated|Client has encountered a connection error|Client was closed and is not queryable|timeout exceeded when trying to connect)/;

/** True when `err` says the ledger could not be reached or dropped the connection: worth a retry, never a data error. */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof LedgerUnavailableError) return true;
  const e = err as { code?: unknown; message?: unknown } | null;
  if (typeof e?.code === 'string' && (CONNECTION_SQLSTATE.test(e.code) || CONNECTION_ERRNO.has(e.code))) return true;
  return typeof e?.message === 'string' && CONNECTION_MESSAGE.test(e.message);
}

/**
 * The ledger's connection failed (PostgreSQL down, restarting, or it ended the session). Thrown by
 * Db in place of pg's error, so every caller sees one type: activities fail with it and are retried
 * (its name is no DataError, decision 0020), `govloop serve` answers 503. `code` is the cause's
 * SQLSTATE or errno, when it had one. Whether a COMMIT in flight took effect is unknown: ledger
 * writes are idempotent, so the retry is safe either way.
 */
export class LedgerUnavailableError extends Error {
  override readonly name = 'LedgerUnavailableError';
  readonly code: string | undefined;
  constructor(cause: unknown) {
    const e = cause as { code?: unknown; message?: unknown } | null;
    const code = typeof e?.code === 'string' ? e.code : undefined;
    super(`ledger unavailable: ${code ? `${code} ` : ''}${typeof e?.message === 'string' ? e.message : String(cause)}`, { cause });
    this.code = code;
  }
}

const asLedgerError = (err: unknown): unknown => (isConnectionError(err) && !(err instanceof LedgerUnavailableError) ? new LedgerUnavailableError(err) : err);

/** The ledger's connection: one pg pool, to PostgreSQL or to the embedded PGlite server. */
export class Db implements Queryable {
  readonly pool: pg.Pool;
  readonly options: Required<DbOptions>;

  /** `options` as a number is the pool size, the other settings at their defaults. */
  constructor(
    readonly url: string,
    options: DbOptions | number = {},
  ) {
    this.options = { ...dbDefaults, ...(typeof options === 'number' ? { max: options } : options) };
    const o = this.options;
    this.pool = new pg.Pool({
      connectionString: url,
      max: o.max,
      connectionTimeoutMillis: o.connectionTimeoutMillis,
      idleTimeoutMillis: o.idleTimeoutMillis,
      keepAlive: true,
      keepAliveInitialDelayMillis: o.keepAliveInitialDelayMillis,
      // Sent as startup parameters: they hold for every statement of the session. (The embedded
      // PGlite server ignores them: one in-process session, nothing to cut loose.)
      ...(o.statementTimeoutMillis > 0 ? { statement_timeout: o.statementTimeoutMillis } : {}),
      ...(o.idleInTransactionTimeoutMillis > 0 ? { idle_in_transaction_session_timeout: o.idleInTransactionTimeoutMillis } : {}),
    });
    // An idle client that loses its server (ledger restart) must not crash the process.
    this.pool.on('error', () => undefined);
  }

  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>> {
    // pool.query watches its client's 'error' event while the query runs.
    try {
      return await this.pool.query<R>(sql, params);
    } catch (err) {
      throw asLedgerError(err);
    }
  }

  /**
   * Runs `fn` with a client of its own. A checked-out client has no listener of the pool's: the
   * server ending the session (a restart, pg_terminate_backend, the idle-in-transaction timeout)
   * while `fn` holds it would emit an 'error' nobody hears, and crash the process. Here it is
   * heard: the next statement fails, `fn`'s error becomes a LedgerUnavailableError, and the
   * broken client is dropped from the pool instead of returned to it.
   */
  async withClient<T>(fn: (client: pg.PoolClient, lost: () => Error | undefined) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw asLedgerError(err);
    }
    let lost: Error | undefined;
    const onError = (err: Error) => (lost ??= err);
    client.on('error', onError);
    let failure: unknown;
    try {
      return await fn(client, () => lost);
    } catch (err) {
      failure = err;
      // The most telling cause: the statement's own SQLSTATE (57P01 …) if it had one, else what the client heard.
      if (lost)
        throw err instanceof LedgerUnavailableError
          ? err
          : new LedgerUnavailableError(isConnectionError(err) && typeof (err as { code?: unknown }).code === 'string' ? err : lost);
      throw asLedgerError(err);
    } finally {
      client.removeListener('error', onError);
      // Released with an error, the pool closes the client; otherwise it is reused.
      client.release(lost ?? (isConnectionError(failure) ? (failure as Error) : undefined));
    }
  }

  /**
   * Runs `fn` in one transaction; rolls back on any error. A deadlock or serialization failure
   * (the server chose this transaction as the victim) is retried a few times: `fn` must be safe to
   * rerun. A lost connection is not retried here: the caller (an activity's retry policy, the
   * HTTP client on a 503) tries again once PostgreSQL is back.
   */
  async tx<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.withClient(async (client, lost) => {
          await client.query('BEGIN');
          try {
            const result = await fn(client);
            await client.query('COMMIT');
            return result;
          } catch (err) {
            if (!lost()) await client.query('ROLLBACK').catch(() => undefined);
            throw err;
          }
        });
      } catch (err) {
        const code = (err as { code?: string }).code;
        if ((code === '40P01' || code === '40001') && attempt < 5) continue;
        throw err;
      }
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
