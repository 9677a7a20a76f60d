/**
 * `govloop audit checkpoint` and `govloop audit verify` as separate processes, on a PostgreSQL
 * database of their own (tampered with for real, with the triggers switched off as the owner may).
 */
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type AuditRow, appendAudit, recomputeHash } from '../../ledger/audit';
import { Db } from '../../ledger/db';
import { migrate } from '../../ledger/migrate';
import { createDatabase } from '../../ledger/scratch';
import { govloop } from '../support/cli';

let database: { url: string; drop: () => Promise<void> };
let db: Db;
let dir: string;
let env: Record<string, string>;

beforeAll(async () => {
  database = await createDatabase(inject('databaseUrl'), `govloop_auditcli_${process.pid}_${Date.now()}`);
  db = new Db(database.url, 2);
  await migrate(db);
  for (let n = 0; n < 6; n++) await appendAudit(db, { actor: 'ops', taskId: null, action: 'budget.set', decision: 'recorded', detail: { n } });
  dir = mkdtempSync(join(tmpdir(), 'govloop-audit-cli-'));
  env = { DATABASE_URL: database.url, GOVLOOP_DATA_DIR: dir };
});

afterAll(async () => {
  await db?.close();
  await database?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('govloop audit checkpoint / verify', () => {
  it('checkpoints with the configured key, verifies against the checkpoints, and names a consistent rewrite', async () => {
    const first = await govloop(['audit', 'checkpoint', '--json'], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.json()).toMatchObject({ written: true, seq: 1, headId: 6, rows: 6, file: join(dir, 'audit-checkpoints', 'audit-checkpoints.jsonl') });
    expect(statSync(join(dir, 'govloop-signing-key.pem')).mode & 0o777).toBe(0o600);

    const intact = await govloop(['audit', 'verify', '--json'], env);
    expect(intact.code, intact.stderr).toBe(0);
    expect(intact.json()).toMatchObject({ ok: true, rows: 6, checkpoints: { verified: 1, newestSeq: 1, headId: 6 } });

    // The owner switches the triggers off and rewrites row 3 and every hash after it.
    await db.query('ALTER TABLE audit_log DISABLE TRIGGER USER');
    const { rows } = await db.query<AuditRow>(
      'SELECT id, at, actor, task_id, action, decision, detail, prev_hash, hash FROM audit_log WHERE id >= 3 ORDER BY id',
    );
    let prev = rows[0]!.prev_hash;
    for (const r of rows) {
      const row = { ...r, detail: r.id === 3 ? { n: 99 } : r.detail, prev_hash: prev };
      row.hash = recomputeHash(row);
      await db.query('UPDATE audit_log SET detail = $2, prev_hash = $3, hash = $4 WHERE id = $1', [
        row.id,
        JSON.stringify(row.detail),
        row.prev_hash,
        row.hash,
      ]);
      prev = row.hash;
    }
    await db.query('ALTER TABLE audit_log ENABLE TRIGGER USER');

    const broken = await govloop(['audit', 'verify'], env);
    expect(broken.code, broken.stderr).toBe(4);
    expect(broken.stdout).toMatch(/audit chain broken at row 3 \(rewritten\); 6 rows/);
    // Bad options exit 2, naming each.
    const elsewhere = join(dir, 'empty');
    const refused = await govloop(['audit', 'verify', '--checkpoints', elsewhere, '--public-key', join(dir, 'nope.pem'), '--json'], env);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--checkpoints: no such directory/);
    expect(refused.stderr).toMatch(/--public-key: no such file/);
    expect(refused.json()).toMatchObject({ errors: expect.arrayContaining([expect.objectContaining({ path: 'publicKey' })]) });

    const checkpoint = await govloop(['audit', 'checkpoint'], env);
    expect(checkpoint.code).toBe(4);
    expect(checkpoint.stderr).toMatch(/no checkpoint written: row 6, the head of checkpoint 1, is not the row checkpointed/);
    expect(existsSync(join(dir, 'audit-checkpoints', 'audit-checkpoints.jsonl'))).toBe(true);
  }, 300_000); // five CLI processes, each started by tsx: a minute or more on a loaded machine
});
