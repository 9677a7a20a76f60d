import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { attributionId } from '../../ledger/attribution';
import type { Db } from '../../ledger/db';
import { migrate } from '../../ledger/migrate';
import { backends } from './backends';

const migrationsDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ledger', 'migrations');
const allMigrations = readdirSync(migrationsDir)
  .filter((f) => f.endsWith('.sql'))
  .map((f) => f.replace(/\.sql$/, ''))
  .sort();

/** Tables, columns and the migrations recorded: what a second migrate() must leave as it is. */
async function schema(db: Db) {
  const columns = await db.query<{ t: string; c: string; ty: string }>(
    "SELECT table_name AS t, column_name AS c, data_type AS ty FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
  );
  const applied = await db.query<{ name: string }>('SELECT name FROM govloop_migrations ORDER BY name');
  return { columns: columns.rows, applied: applied.rows.map((r) => r.name) };
}

describe.each(backends)('migrations on $name', (backend) => {
  it('migrate() applies every migration to a fresh ledger once; a second call is a no-op', async () => {
    const ledger = await backend.scratch();
    try {
      expect(await migrate(ledger.db)).toEqual(allMigrations);
      const after = await schema(ledger.db);
      expect(after.applied).toEqual(allMigrations);
      expect(after.columns.map((c) => c.t)).toEqual(
        expect.arrayContaining(['attributions', 'budgets', 'budget_windows', 'tasks', 'reservations', 'usage_events', 'audit_log', 'approvals']),
      );

      expect(await migrate(ledger.db)).toEqual([]);
      expect(await schema(ledger.db)).toEqual(after);
    } finally {
      await ledger.close();
    }
  });

  it('migrate() on a ledger already migrated (on PostgreSQL, the one the tests share) is a no-op', async () => {
    const ledger = await backend.open();
    try {
      const before = await schema(ledger.db);
      expect(before.applied).toEqual(allMigrations);
      expect(await migrate(ledger.db)).toEqual([]);
      expect(await schema(ledger.db)).toEqual(before);
    } finally {
      await ledger.close();
    }
  });

  // The embedded ledger (ledger/embedded.ts) serves ONE PGlite session to every connection, where
  // migrate()'s session-level pg_advisory_lock is granted to both migrators at once (advisory locks
  // are re-entrant within a session). Both once read an empty govloop_migrations and both ran 0001,
  // the second failing with `relation "attributions" already exists`: two processes starting on a
  // fresh embedded ledger at once (`govloop dev` and a `govloop worker` pointed at it) hit it.
  // PostgreSQL serialises them by the lock; PGlite by each migration's own look in its transaction.
  it('two concurrent migrate() calls on a fresh ledger both succeed, and apply each migration once', async () => {
    const ledger = await backend.scratch();
    try {
      const [a, b] = [ledger.pool(2), ledger.pool(2)];
      const results = await Promise.allSettled([migrate(a), migrate(b)]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
      const applied = results.flatMap((r) => (r.status === 'fulfilled' ? r.value : []));
      expect(applied.sort()).toEqual(allMigrations);
      expect((await schema(ledger.db)).applied).toEqual(allMigrations);
    } finally {
      await ledger.close();
    }
  });
  it('0018 closes as dropped the preemptions left open by victims that had finished, and only those', async () => {
    const ledger = await backend.scratch();
    try {
      await migrate(ledger.db, { to: '0017_open_gpu_tasks' });
      const attr = await attributionId(ledger.db, { tenant: 't', team: 'b', project: 'p', model: 'm', useCase: 'u' });
      const finishedAt = '2026-12-01T10:00:00.000Z';
      for (const [id, finished] of [
        ['ended-first', finishedAt],
        ['still-running', null],
        ['suspended', null],
      ] as const) {
        await ledger.db.query(
          `INSERT INTO tasks (task_id, kind, name, attribution_id, requester, priority, state, intent, finished_at) VALUES ($1, 'training', $1, $2, 'x', 'low', $3, '{}', $4)`,
          [id, attr, finished ? 'Succeeded' : 'Running', finished],
        );
        await ledger.db.query(`INSERT INTO preemptions (victim_task_id, round, by, reason, suspended_at) VALUES ($1, 1, 'govloop', 'reclaim', $2)`, [
          id,
          id === 'suspended' ? finishedAt : null,
        ]);
      }
      expect(await migrate(ledger.db)).toEqual(allMigrations.filter((m) => m > '0017_open_gpu_tasks'));
      const rows = await ledger.db.query<{ victim_task_id: string; dropped_at: Date | null }>('SELECT victim_task_id, dropped_at FROM preemptions ORDER BY 1');
      expect(rows.rows.map((r) => [r.victim_task_id, r.dropped_at?.toISOString() ?? null])).toEqual([
        ['ended-first', finishedAt],
        ['still-running', null],
        ['suspended', null],
      ]);
    } finally {
      await ledger.close();
    }
  });
});
