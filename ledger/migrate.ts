import { readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { Umzug, type UmzugStorage } from 'umzug';
import type { Db } from './db';

const migrationsDir = join(dirname(fileURLToPath(import.meta.url)), 'migrations');
const LOCK_KEY = 0x60f100b; // pg_advisory_lock key: one migrator at a time

/** Umzug storage in the ledger itself, so the schema version travels with the data. */
function ledgerStorage(client: pg.PoolClient): UmzugStorage {
  return {
    async executed() {
      await client.query('CREATE TABLE IF NOT EXISTS govloop_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
      const { rows } = await client.query<{ name: string }>('SELECT name FROM govloop_migrations ORDER BY name');
      return rows.map((r) => r.name);
    },
    async logMigration() {
      // recorded by the migration itself, in its transaction
    },
    async unlogMigration({ name }) {
      await client.query('DELETE FROM govloop_migrations WHERE name = $1', [name]);
    },
  };
}

/**
 * Brings the ledger schema up to date with the versioned SQL files in ledger/migrations.
 * Safe to call from many processes at once: an advisory lock lets one migrate while the others
 * wait. The embedded ledger is one PGlite session shared by every connection, where that lock is
 * granted to all at once (advisory locks are re-entrant within a session); there each migration
 * looks again, inside its own transaction, whether another migrator applied it meanwhile. The
 * embedded server gives an open transaction the whole session, so that look and the migration
 * are one unit. Returns the migrations this call applied. `to` stops after that migration (tests of
 * a migration's data step start from the schema before it).
 */
export async function migrate(db: Db, opts: { to?: string } = {}): Promise<string[]> {
  return db.withClient(async (client) => {
    const applied: string[] = [];
    try {
      // Waiting for another migrator, or building an index on a large table, may take longer than
      // the ledger's statement timeout allows an ordinary statement; RESET below restores it.
      await client.query('SET statement_timeout = 0');
      await client.query('SELECT pg_advisory_lock($1)', [LOCK_KEY]);
      const files = readdirSync(migrationsDir)
        .filter((f) => f.endsWith('.sql'))
        .sort();
      const umzug = new Umzug({
        migrations: files.map((file) => ({
          name: basename(file, '.sql'),
          up: async () => {
            const name = basename(file, '.sql');
            await client.query('BEGIN');
            try {
              const done = await client.query('SELECT 1 FROM govloop_migrations WHERE name = $1', [name]);
              if (done.rowCount !== 0) {
                await client.query('COMMIT');
                return;
              }
              await client.query(readFileSync(join(migrationsDir, file), 'utf8'));
              // Logged inside the migration's own transaction: applied and recorded, or neither.
              await client.query('INSERT INTO govloop_migrations (name) VALUES ($1)', [name]);
              await client.query('COMMIT');
              applied.push(name);
            } catch (err) {
              await client.query('ROLLBACK');
              throw err;
            }
          },
        })),
        storage: ledgerStorage(client),
        logger: undefined,
      });
      await umzug.up(opts.to ? { to: opts.to } : {});
      return applied;
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [LOCK_KEY]).catch(() => undefined);
      await client.query('RESET statement_timeout').catch(() => undefined);
    }
  });
}
