import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AuditEntry, type AuditVerdict, appendAudit, verifyAudit } from '../../ledger/audit';
import { Db, type Queryable } from '../../ledger/db';
import { migrate } from '../../ledger/migrate';
import { type Ledger, backends, newTenant, sleep } from './backends';

const entry = (tenant: string, n: number, over: Partial<AuditEntry> = {}): AuditEntry => ({
  actor: 'test',
  taskId: `${tenant}-task`,
  action: 'budget.set',
  decision: 'recorded',
  detail: { tenant, n, nested: { b: 2, a: [1, { y: 'z', x: null }] } },
  ...over,
});

describe.each(backends)('audit chain on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  /** Appends three entries of a tenant of its own in one transaction, so their ids are consecutive. */
  async function threeRows(): Promise<number[]> {
    const tenant = newTenant();
    await ledger.db.tx(async (c) => {
      for (let n = 0; n < 3; n++) await appendAudit(c, entry(tenant, n));
    });
    const { rows } = await ledger.db.query<{ id: number }>('SELECT id FROM audit_log WHERE task_id = $1 ORDER BY id', [`${tenant}-task`]);
    return rows.map((r) => r.id);
  }

  /**
   * Tampers with the log inside a transaction that is rolled back, and returns what verifyAudit
   * says from inside it: the shared database is never left broken for the other test files.
   * audit_log refuses UPDATE and DELETE (0010_audit_guard): the tamperer is a superuser who
   * switches triggers off for its own transaction, as someone with database access could.
   */
  async function verifyTampered(tamper: (c: pg.PoolClient) => Promise<unknown>): Promise<{ before: AuditVerdict; during: AuditVerdict }> {
    const c = await ledger.db.pool.connect();
    try {
      await c.query('BEGIN');
      const before = await verifyAudit(c);
      await c.query('SET LOCAL session_replication_role = replica');
      await tamper(c);
      const during = await verifyAudit(c);
      return { before, during };
    } finally {
      await c.query('ROLLBACK');
      c.release();
    }
  }

  it('verifies an intact chain', async () => {
    const ids = await threeRows();
    expect(ids).toHaveLength(3);
    expect(ids[2]! - ids[0]!).toBe(2);
    const { rows } = await ledger.db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log WHERE id <= $1', [ids[2]]);
    const verdict = await verifyAudit(ledger.db);
    expect(verdict.ok).toBe(true);
    expect(verdict.rows).toBeGreaterThanOrEqual(rows[0]!.n);
  });

  it('names a row whose detail was edited with SQL as altered', async () => {
    const [, middle] = await threeRows();
    const { before, during } = await verifyTampered((c) => c.query(`UPDATE audit_log SET detail = jsonb_set(detail, '{n}', '99') WHERE id = $1`, [middle]));
    expect(before).toMatchObject({ ok: true });
    expect(during).toMatchObject({ ok: false, firstBadId: middle, problem: 'altered' });
    expect((await verifyAudit(ledger.db)).ok).toBe(true);
  });

  it.each([
    { column: 'actor', sql: `UPDATE audit_log SET actor = 'mallory' WHERE id = $1` },
    { column: 'decision', sql: `UPDATE audit_log SET decision = 'approved' WHERE id = $1` },
    { column: 'at', sql: `UPDATE audit_log SET at = at - interval '1 day' WHERE id = $1` },
  ])('names a row whose $column was edited as altered', async ({ sql }) => {
    const [, middle] = await threeRows();
    const { during } = await verifyTampered((c) => c.query(sql, [middle]));
    expect(during).toMatchObject({ ok: false, firstBadId: middle, problem: 'altered' });
  });

  it('names the row after a deleted one as removed-before', async () => {
    const [, middle, last] = await threeRows();
    const { before, during } = await verifyTampered((c) => c.query('DELETE FROM audit_log WHERE id = $1', [middle]));
    expect(before).toMatchObject({ ok: true });
    expect(during).toMatchObject({ ok: false, firstBadId: last, problem: 'removed-before' });
    expect((await verifyAudit(ledger.db)).ok).toBe(true);
  });

  it('appends an entry with a dedupe key once, however often and however concurrently it is appended', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const key = `${tenant}:reserve`;
    await db.tx((c) => appendAudit(c, entry(tenant, 1, { dedupeKey: key })));
    await db.tx((c) => appendAudit(c, entry(tenant, 2, { dedupeKey: key })));
    const other = ledger.pool(3);
    await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? other : db).tx((c) => appendAudit(c, entry(tenant, 3 + i, { dedupeKey: key })))));
    const { rows } = await db.query<{ n: number }>("SELECT (detail->>'n')::int AS n FROM audit_log WHERE dedupe_key = $1", [key]);
    expect(rows).toEqual([{ n: 1 }]);
    // Entries without a key are all kept.
    await db.tx((c) => appendAudit(c, entry(tenant, 10)));
    await db.tx((c) => appendAudit(c, entry(tenant, 10)));
    const all = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log WHERE task_id = $1', [`${tenant}-task`]);
    expect(all.rows[0]!.n).toBe(3);
    expect((await verifyAudit(db)).ok).toBe(true);
  });

  it('keeps the chain intact under concurrent appends, each in its own transaction, even when one pauses mid-append', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const other = ledger.pool(3);
    // Each append stops after reading the chain's tip, for the others to catch up (or 200 ms):
    // inside a transaction the advisory lock keeps them out.
    const gate = barrier(2, 200);
    await Promise.all([db.tx((c) => appendAudit(pausing(c, gate), entry(tenant, 1))), other.tx((c) => appendAudit(pausing(c, gate), entry(tenant, 2)))]);
    await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? other : db).tx((c) => appendAudit(c, entry(tenant, 3 + i)))));
    expect((await verifyAudit(db)).ok).toBe(true);
  });

  // appendAudit's advisory lock is transaction-scoped: given the pool, appendAudit must open a
  // transaction itself, or two appends could read the same tip and both link to it.
  it('keeps the chain intact when an entry is appended through the pool', async () => {
    const scratch = await backend.scratch();
    try {
      await migrate(scratch.db);
      const tenant = newTenant();
      await scratch.db.tx((c) => appendAudit(c, entry(tenant, 0)));
      // A pool whose own queries stop right after reading the chain's tip, for the other append to catch up.
      const gate = barrier(2, 2000);
      const pool = new PausingDb(scratch.db.url, gate);
      try {
        await Promise.all([appendAudit(pool, entry(tenant, 1)), appendAudit(pool, entry(tenant, 2))]);
      } finally {
        await pool.close();
      }
      expect(await verifyAudit(scratch.db)).toEqual({ ok: true, rows: 3 });
    } finally {
      await scratch.close();
    }
  });
});

/** Resolves `arrive()` once `n` callers have arrived, or after `timeoutMs`. */
function barrier(n: number, timeoutMs: number): { arrive(): Promise<void> } {
  let count = 0;
  let open: () => void = () => undefined;
  const opened = new Promise<void>((r) => (open = r));
  return {
    arrive() {
      if (++count >= n) open();
      return Promise.race([opened, sleep(timeoutMs)]);
    },
  };
}

/** A Queryable that waits at the barrier right after appendAudit has read the chain's tip. */
function pausing(q: Queryable, gate: { arrive(): Promise<void> }): Queryable {
  return {
    async query(sql: string, params?: unknown[]) {
      const r = await q.query(sql, params);
      if (/SELECT hash FROM audit_log/.test(sql)) await gate.arrive();
      return r;
    },
  } as Queryable;
}

/** A pool whose own queries wait at the barrier right after reading the chain's tip. */
class PausingDb extends Db {
  constructor(
    url: string,
    private readonly gate: { arrive(): Promise<void> },
  ) {
    super(url, 4);
  }

  override async query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>> {
    const r = await super.query<R>(sql, params);
    if (/SELECT hash FROM audit_log/.test(sql)) await this.gate.arrive();
    return r;
  }
}
