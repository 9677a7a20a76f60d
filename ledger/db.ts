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
  return new UsageLimitError(`adding $${(addingMicros / 1e6).toLocaleString('en-US')} to ${what} would pass the ledger's ceiling of $${(MAX_LEDGER_MICROS / 1e6).toLocaleString('en-US')} (2^53 - 1 micro-dollars): refused, nothing recorded`);
}

export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
}

/** The ledger's connection: one pg pool, to PostgreSQL or to the embedded PGlite server. */
export class Db implements Queryable {
  readonly pool: pg.Pool;

  constructor(readonly url: string, max = 10) {
    this.pool = new pg.Pool({ connectionString: url, max });
    // An idle client that loses its server (ledger restart) must not crash the process.
    this.pool.on('error', () => undefined);
  }

  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>> {
    return this.pool.query<R>(sql, params);
  }

  /**
   * Runs `fn` in one transaction; rolls back on any error. A deadlock or serialization failure
   * (the server chose this transaction as the victim) is retried a few times: `fn` must be safe to rerun.
   */
  async tx<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        await client.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        const code = (err as { code?: string }).code;
        if ((code === '40P01' || code === '40001') && attempt < 5) continue;
        throw err;
      } finally {
        client.release();
      }
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
