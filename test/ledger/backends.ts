/**
 * The two ledgers every ledger test runs against: the real PostgreSQL of the test run (the
 * database the global setup created and migrated, shared with the other test files, so each test
 * uses tenants of its own) and PGlite, the embedded ledger `govloop dev` runs (fresh and in memory).
 */
import { randomUUID } from 'node:crypto';
import { inject } from 'vitest';
import type { Attribution } from '../../governance/intent';
import { Db, type DbOptions, type Queryable } from '../../ledger/db';
import { startEmbeddedLedger } from '../../ledger/embedded';
import { createDatabase } from '../../ledger/scratch';
import { migrate } from '../../ledger/migrate';
import { upsertTask } from '../../ledger/tasks';
import { anIntent } from '../support/builders';

export interface Ledger {
  db: Db;
  /** Another pool on the same ledger: other connections, as another worker process would have. */
  pool(max?: number, options?: Omit<DbOptions, 'max'>): Db;
  close(): Promise<void>;
}

export interface Backend {
  name: 'postgresql' | 'pglite';
  /** A migrated ledger: the shared test database (PostgreSQL) or a fresh in-memory one (PGlite). */
  open(): Promise<Ledger>;
  /** An empty, unmigrated ledger no other test sees: for migrations and for tests that break the ledger. */
  scratch(): Promise<Ledger>;
}

function ledgerAt(url: string, stop: () => Promise<void>): Ledger {
  const db = new Db(url, 10);
  const extra: Db[] = [];
  return {
    db,
    pool(max = 4, options = {}) {
      const d = new Db(url, { ...options, max });
      extra.push(d);
      return d;
    },
    async close() {
      await Promise.all([db, ...extra].map((d) => d.close()));
      await stop();
    },
  };
}

const postgresql: Backend = {
  name: 'postgresql',
  async open() {
    return ledgerAt(inject('databaseUrl'), async () => undefined);
  },
  async scratch() {
    const scratch = await createDatabase(inject('databaseUrl'), `govloop_scratch_${process.pid}_${randomUUID().slice(0, 8).replace(/-/g, '_')}`);
    return ledgerAt(scratch.url, scratch.drop);
  },
};

const pglite: Backend = {
  name: 'pglite',
  async open() {
    const ledger = await this.scratch();
    await migrate(ledger.db);
    return ledger;
  },
  async scratch() {
    const embedded = await startEmbeddedLedger();
    return ledgerAt(embedded.url, () => embedded.stop());
  },
};

export const backends: Backend[] = [postgresql, pglite];

/** A tenant no other test uses. */
export const newTenant = () => `t-${randomUUID()}`;

export const attributionOf = (tenant: string, over: Partial<Attribution> = {}): Attribution => ({
  tenant,
  team: 'search',
  project: 'ranker',
  model: 'llama-3-8b',
  useCase: 'relevance',
  ...over,
});

/** Every usage, reservation and audit entry in these tests happens at this moment. */
export const AT = new Date('2026-06-15T12:00:00.000Z');

/** A task row (reservations and charges need one), in the attribution of `tenant`/`team`. */
export async function newTask(db: Db, tenant: string, opts: { team?: string; state?: string } = {}): Promise<string> {
  const taskId = `task-${randomUUID()}`;
  const intent = anIntent()
    .tenant(tenant)
    .team(opts.team ?? 'search')
    .build();
  await upsertTask(db, { taskId, intent, requester: 'test', state: opts.state ?? 'Admitted' });
  return taskId;
}

/** Reserved and spent micros of the one window of each of a tenant's budgets, by scope. */
export async function windows(db: Queryable, tenant: string): Promise<Record<string, { limit: number; reserved: number; spent: number }>> {
  const { rows } = await db.query<{ team: string; project: string; limit_micros: number; reserved_micros: number; spent_micros: number }>(
    `SELECT b.team, b.project, b.limit_micros, w.reserved_micros, w.spent_micros
     FROM budgets b JOIN budget_windows w ON w.budget_id = b.id WHERE b.tenant = $1`,
    [tenant],
  );
  return Object.fromEntries(rows.map((r) => [`${r.team}/${r.project}`, { limit: r.limit_micros, reserved: r.reserved_micros, spent: r.spent_micros }]));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Waits until `n` sessions of this database wait on a lock while running a statement containing
 * `sqlFragment` (or any of several) (PostgreSQL). PGlite runs one transaction at a time, so there
 * the callers are simply queued behind the blocker: give them a moment to queue up.
 */
export async function lockWaiters(backend: Backend, db: Db, sqlFragment: string | string[], n: number): Promise<void> {
  if (backend.name === 'pglite') return sleep(300);
  for (let i = 0; i < 400; i++) {
    const { rows } = await db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND EXISTS (SELECT 1 FROM unnest($1::text[]) f WHERE position(f in query) > 0)",
      [([] as string[]).concat(sqlFragment)],
    );
    if (rows[0]!.n >= n) return;
    await sleep(25);
  }
  throw new Error(`no ${n} sessions waiting on a lock in "${sqlFragment}" after 10 s`);
}
