/**
 * The audit log against someone with database access (decision 0019): the table refuses UPDATE,
 * DELETE and TRUNCATE; an owner who switches that off and rewrites the chain consistently, removes
 * rows or cuts the tail is caught by the signed checkpoints kept outside the database; a forged
 * checkpoint line is reported; verification streams. Each backend gets a ledger of its own (the
 * tests break it on purpose); tampering happens in transactions that are rolled back, so every
 * test starts from the same intact chain and checkpoints.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AuditRow, appendAudit, recomputeHash, verifyAudit } from '../../ledger/audit';
import { AuditCheckpointRefused, CHECKPOINT_FILE, type AuditCheckpoints, readAuditCheckpoints, writeAuditCheckpoint } from '../../ledger/audit-checkpoints';
import type { Queryable } from '../../ledger/db';
import { migrate } from '../../ledger/migrate';
import { type SigningKey, loadOrCreateSigningKey, signJson } from '../../identity/signing';
import { type Ledger, backends } from '../ledger/backends';

const COLUMNS = 'id, at, actor, task_id, action, decision, detail, prev_hash, hash';

/** Appends `n` rows in one transaction; returns their ids. */
async function appendRows(ledger: Ledger, n: number, label: string): Promise<number[]> {
  await ledger.db.tx(async (c) => {
    for (let i = 0; i < n; i++)
      await appendAudit(c, { actor: 'govloop', taskId: `${label}-${i}`, action: 'budget.set', decision: 'recorded', detail: { label, i, usd: 100 + i } });
  });
  const { rows } = await ledger.db.query<{ id: number }>('SELECT id FROM audit_log WHERE task_id LIKE $1 ORDER BY id', [`${label}-%`]);
  return rows.map((r) => r.id);
}

/**
 * Appends `n` rows in one statement, chained exactly as appendAudit chains them (ids from the
 * table's sequence, the chain's advisory lock held): thousands of rows in a moment on PGlite too.
 */
async function appendBulk(ledger: Ledger, n: number, label: string): Promise<number[]> {
  return ledger.db.tx(async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [0x60fa0d1]);
    const tip = await c.query<{ hash: string }>('SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1');
    let prev = tip.rows[0]!.hash;
    const ids = (await c.query<{ id: number }>("SELECT nextval(pg_get_serial_sequence('audit_log', 'id')) AS id FROM generate_series(1, $1)", [n])).rows.map(
      (r) => r.id,
    );
    const at = new Date('2026-06-15T12:00:00.000Z');
    const rows = ids.map((id, i) => {
      const row: AuditRow = {
        id,
        at,
        actor: 'bulk',
        task_id: `${label}-${i}`,
        action: 'step',
        decision: 'allow',
        detail: { label, i },
        prev_hash: prev,
        hash: '',
      };
      row.hash = recomputeHash(row);
      prev = row.hash;
      return row;
    });
    await c.query(
      `INSERT INTO audit_log (id, at, actor, task_id, action, decision, detail, prev_hash, hash)
       SELECT u.id, u.at, u.actor, u.task_id, u.action, u.decision, u.detail::jsonb, u.prev_hash, u.hash
       FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
         AS u(id, at, actor, task_id, action, decision, detail, prev_hash, hash)`,
      [
        ids,
        rows.map((r) => r.at),
        rows.map((r) => r.actor),
        rows.map((r) => r.task_id),
        rows.map((r) => r.action),
        rows.map((r) => r.decision),
        rows.map((r) => JSON.stringify(r.detail)),
        rows.map((r) => r.prev_hash),
        rows.map((r) => r.hash),
      ],
    );
    return ids;
  });
}

/**
 * What an attacker who owns the table does, inside `tamper`, in a transaction that is rolled back:
 * switches the append-only triggers off (ALTER TABLE, as the owner may), changes rows, and
 * recomputes hashes. `inside` then sees the tampered table on the same connection.
 */
async function tampered<T>(ledger: Ledger, tamper: (c: pg.PoolClient) => Promise<unknown>, inside: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await ledger.db.pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('ALTER TABLE audit_log DISABLE TRIGGER USER');
    await tamper(c);
    return await inside(c);
  } finally {
    await c.query('ROLLBACK');
    c.release();
  }
}

/** Recomputes prev_hash and hash of every row from `fromId` on, the first following `prev`: the chain verifies again by itself. */
async function relink(c: pg.PoolClient, fromId: number, prev: string, edit: (r: AuditRow) => AuditRow = (r) => r): Promise<void> {
  const { rows } = await c.query<AuditRow>(`SELECT ${COLUMNS} FROM audit_log WHERE id >= $1 ORDER BY id`, [fromId]);
  for (const r of rows) {
    const row = { ...edit(r), prev_hash: prev };
    row.hash = recomputeHash(row);
    await c.query('UPDATE audit_log SET actor = $2, decision = $3, detail = $4, prev_hash = $5, hash = $6 WHERE id = $1', [
      row.id,
      row.actor,
      row.decision,
      JSON.stringify(row.detail),
      row.prev_hash,
      row.hash,
    ]);
    prev = row.hash;
  }
}

const hashOf = async (c: Queryable, id: number) => (await c.query<{ hash: string }>('SELECT hash FROM audit_log WHERE id = $1', [id])).rows[0]!.hash;

/** A Queryable that remembers the most rows any one audit_log page returned, and how many pages were read. */
function counting(q: Queryable): Queryable & { maxRows: number; pages: number } {
  const spy = {
    maxRows: 0,
    pages: 0,
    async query(sql: string, params?: unknown[]) {
      const r = await q.query(sql, params);
      if (/FROM audit_log WHERE id > \$1 ORDER BY id LIMIT/.test(sql)) {
        spy.pages++;
        spy.maxRows = Math.max(spy.maxRows, r.rows.length);
      }
      return r;
    },
  };
  return spy as Queryable & { maxRows: number; pages: number };
}

describe.each(backends)('the audit log against database access, on $name', (backend) => {
  let ledger: Ledger;
  let dir: string;
  let key: SigningKey;
  let ids: number[];
  let checkpoints: AuditCheckpoints;

  beforeAll(async () => {
    ledger = await backend.scratch();
    await migrate(ledger.db);
    dir = mkdtempSync(join(tmpdir(), 'govloop-audit-'));
    key = loadOrCreateSigningKey(join(dir, 'key', 'signing.pem'));
    // Two checkpoints: rows 1..12, then 13..17.
    ids = await appendRows(ledger, 12, 'first');
    expect(await writeAuditCheckpoint(ledger.db, { dir, key })).toMatchObject({
      written: true,
      checkpoint: { seq: 1, prevHeadId: 0, headId: ids[11], rows: 12 },
    });
    ids.push(...(await appendRows(ledger, 5, 'second')));
    expect(await writeAuditCheckpoint(ledger.db, { dir, key })).toMatchObject({
      written: true,
      checkpoint: { seq: 2, prevHeadId: ids[11], headId: ids[16], rows: 17 },
    });
    checkpoints = await readAuditCheckpoints(dir, key.publicKey);
    expect(checkpoints.findings).toEqual([]);
    expect(checkpoints.checkpoints.map((c) => c.rowHashes.length)).toEqual([12, 5]);
  });

  afterAll(async () => {
    await ledger?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('refuses UPDATE, DELETE and TRUNCATE of audit rows from the app connection', async () => {
    const { db } = ledger;
    await expect(db.query(`UPDATE audit_log SET detail = '{"usd": 1}' WHERE id = $1`, [ids[3]])).rejects.toThrow(/audit_log is append-only: UPDATE refused/);
    await expect(db.query('UPDATE audit_log SET hash = hash')).rejects.toThrow(/audit_log is append-only: UPDATE refused/);
    await expect(db.query('DELETE FROM audit_log WHERE id = $1', [ids[16]])).rejects.toThrow(/audit_log is append-only: DELETE refused/);
    await expect(db.query('TRUNCATE audit_log')).rejects.toThrow(/audit_log is append-only: TRUNCATE refused/);
    // Appending still works, and nothing was changed.
    expect(await verifyAudit(db, { checkpoints })).toMatchObject({ ok: true, rows: 17, checkpoints: { verified: 2, newestSeq: 2, headId: ids[16] } });
    // PUBLIC holds none of the three privileges (the REVOKE of 0010).
    const acl = await db.query<{ privilege_type: string }>(
      "SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a WHERE c.relname = 'audit_log' AND a.grantee = 0",
    );
    expect(acl.rows.map((r) => r.privilege_type).filter((p) => ['UPDATE', 'DELETE', 'TRUNCATE'].includes(p))).toEqual([]);
  });

  it('a consistent rewrite passes the chain check alone, and verify with checkpoints names the rewritten row', async () => {
    const target = ids[6]!;
    const { alone, withCheckpoints, writer } = await tampered(
      ledger,
      async (c) =>
        relink(c, target, (await c.query<{ prev_hash: string }>('SELECT prev_hash FROM audit_log WHERE id = $1', [target])).rows[0]!.prev_hash, (r) =>
          r.id === target ? { ...r, detail: { ...(r.detail as object), usd: 1 } } : r,
        ),
      async (c) => ({
        alone: await verifyAudit(c),
        withCheckpoints: await verifyAudit(c, { checkpoints }),
        writer: await writeAuditCheckpoint(c, { dir, key }).catch((err: unknown) => err),
      }),
    );
    expect(alone).toEqual({ ok: true, rows: 17 });
    expect(withCheckpoints).toMatchObject({ ok: false, firstBadId: target, problem: 'rewritten', rows: 17 });
    // The writer refuses to sign a chain that no longer matches what it signed before.
    expect(writer).toBeInstanceOf(AuditCheckpointRefused);
    expect(await verifyAudit(ledger.db, { checkpoints })).toMatchObject({ ok: true });
  });

  it('a rewrite of the newest checkpointed row alone, and of the row an edit left unhashed, are told apart', async () => {
    const last = ids[16]!;
    const rewritten = await tampered(
      ledger,
      async (c) =>
        relink(c, last, (await c.query<{ prev_hash: string }>('SELECT prev_hash FROM audit_log WHERE id = $1', [last])).rows[0]!.prev_hash, (r) => ({
          ...r,
          actor: 'mallory',
        })),
      (c) => verifyAudit(c, { checkpoints }),
    );
    expect(rewritten).toMatchObject({ ok: false, firstBadId: last, problem: 'rewritten' });
    const edited = await tampered(
      ledger,
      (c) => c.query("UPDATE audit_log SET decision = 'approved' WHERE id = $1", [ids[2]]),
      (c) => verifyAudit(c, { checkpoints }),
    );
    expect(edited).toMatchObject({ ok: false, firstBadId: ids[2], problem: 'altered' });
  });

  it('a cut tail verifies by itself; with checkpoints it is cut-tail, naming the first missing row', async () => {
    const firstCut = ids[14]!;
    const { alone, withCheckpoints } = await tampered(
      ledger,
      (c) => c.query('DELETE FROM audit_log WHERE id >= $1', [firstCut]),
      async (c) => ({ alone: await verifyAudit(c), withCheckpoints: await verifyAudit(c, { checkpoints }) }),
    );
    expect(alone).toEqual({ ok: true, rows: 14 });
    expect(withCheckpoints).toMatchObject({ ok: false, firstBadId: firstCut, problem: 'cut-tail', rows: 14 });
    // Cut, and then the app went on appending: the checkpointed rows are still missing.
    const appended = await tampered(
      ledger,
      async (c) => {
        await c.query('DELETE FROM audit_log WHERE id >= $1', [firstCut]);
        await appendAudit(c, { actor: 'govloop', taskId: null, action: 'budget.set', decision: 'recorded', detail: { after: 'cut' } });
      },
      (c) => verifyAudit(c, { checkpoints }),
    );
    expect(appended).toMatchObject({ ok: false, firstBadId: firstCut, problem: 'cut-tail' });
  });

  it('a row removed from the middle and the chain relinked: removed, naming the missing row', async () => {
    const gone = ids[4]!;
    const verdicts = await tampered(
      ledger,
      async (c) => {
        const before = await hashOf(c, ids[3]!);
        await c.query('DELETE FROM audit_log WHERE id = $1', [gone]);
        await relink(c, ids[5]!, before);
      },
      async (c) => ({ alone: await verifyAudit(c), withCheckpoints: await verifyAudit(c, { checkpoints }) }),
    );
    expect(verdicts.alone).toEqual({ ok: true, rows: 16 });
    expect(verdicts.withCheckpoints).toMatchObject({ ok: false, firstBadId: gone, problem: 'removed' });
  });

  it('reports a checkpoint line with a forged signature, and does not trust it', async () => {
    const forgedDir = mkdtempSync(join(tmpdir(), 'govloop-audit-forged-'));
    try {
      copyFileSync(join(dir, CHECKPOINT_FILE), join(forgedDir, CHECKPOINT_FILE));
      const genuine = checkpoints.checkpoints[1]!;
      // A third checkpoint, claiming two rows that do not exist, with the second one's signature.
      const { sig, ...claims } = {
        ...genuine,
        seq: 3,
        prevHeadId: genuine.headId,
        headId: genuine.headId + 2,
        rows: 19,
        rowHashes: [
          [genuine.headId + 1, 'a'.repeat(64)],
          [genuine.headId + 2, 'b'.repeat(64)],
        ] as [number, string][],
      };
      writeFileSync(join(forgedDir, CHECKPOINT_FILE), `${JSON.stringify({ ...claims, sig })}\n`, { flag: 'a' });
      const read = await readAuditCheckpoints(forgedDir, key.publicKey);
      expect(read.checkpoints.map((c) => c.seq)).toEqual([1, 2]);
      expect(read.findings).toEqual([
        { line: 3, seq: 3, problem: 'bad-checkpoint-signature', message: expect.stringMatching(/seq 3: the signature does not verify/) },
      ]);
      const v = await verifyAudit(ledger.db, { checkpoints: read });
      // The forged claim of a longer chain is not taken for a cut tail: the line itself is the finding.
      expect(v).toMatchObject({ ok: false, firstBadId: null, problem: 'bad-checkpoint-signature', checkpointLine: 3, rows: 17 });

      // A checkpoint signed with another key that vouches for a rewritten chain: the genuine
      // checkpoints still name the rewritten row, and the forged line is listed.
      const mallory = loadOrCreateSigningKey(join(forgedDir, 'mallory.pem'));
      const target = ids[8]!;
      const verdict = await tampered(
        ledger,
        async (c) =>
          relink(c, target, (await c.query<{ prev_hash: string }>('SELECT prev_hash FROM audit_log WHERE id = $1', [target])).rows[0]!.prev_hash, (r) =>
            r.id === target ? { ...r, decision: 'forgiven' } : r,
          ),
        async (c) => {
          const rowHashes = (await c.query<{ id: number; hash: string }>('SELECT id, hash FROM audit_log ORDER BY id')).rows.map(
            (r) => [r.id, r.hash] as [number, string],
          );
          const forged = {
            seq: 1,
            at: new Date().toISOString(),
            prevHeadId: 0,
            headId: ids[16]!,
            headHash: rowHashes[16]![1],
            rows: 17,
            rowHashes,
            keyId: mallory.keyId,
          };
          writeFileSync(join(forgedDir, CHECKPOINT_FILE), `${JSON.stringify({ ...forged, sig: signJson(mallory, forged) })}\n`, { flag: 'a' });
          return verifyAudit(c, { checkpoints: await readAuditCheckpoints(forgedDir, key.publicKey) });
        },
      );
      expect(verdict).toMatchObject({ ok: false, firstBadId: target, problem: 'rewritten' });
      expect(verdict.checkpointFindings?.map((f) => [f.line, f.problem])).toEqual([
        [3, 'bad-checkpoint-signature'],
        [4, 'bad-checkpoint-signature'],
      ]);
      expect(verdict.checkpointFindings?.[1]?.message).toMatch(new RegExp(`signed by key ${mallory.keyId}, not by ${key.keyId}`));

      // A line removed from the middle of the file: the next one does not follow: checkpoint-gap.
      const lines = readFileSync(join(dir, CHECKPOINT_FILE), 'utf8').trim().split('\n');
      writeFileSync(join(forgedDir, CHECKPOINT_FILE), `${lines[1]}\n`);
      const gap = await readAuditCheckpoints(forgedDir, key.publicKey);
      expect(gap.findings).toMatchObject([{ line: 1, seq: 2, problem: 'checkpoint-gap' }]);
      expect(await verifyAudit(ledger.db, { checkpoints: gap })).toMatchObject({ ok: false, firstBadId: null, problem: 'checkpoint-gap', checkpointLine: 1 });
      // A torn or edited line is reported, not skipped.
      writeFileSync(join(forgedDir, CHECKPOINT_FILE), `${lines[0]}\n${lines[1]!.slice(0, 200)}\n`);
      expect((await readAuditCheckpoints(forgedDir, key.publicKey)).findings).toMatchObject([
        { line: 2, problem: 'bad-checkpoint-signature', message: expect.stringMatching(/not JSON/) },
      ]);
      await expect(writeAuditCheckpoint(ledger.db, { dir: forgedDir, key })).rejects.toThrow(AuditCheckpointRefused);
    } finally {
      rmSync(forgedDir, { recursive: true, force: true });
    }
  });

  it('writes nothing when the head did not move', async () => {
    const before = readFileSync(join(dir, CHECKPOINT_FILE), 'utf8');
    expect(await writeAuditCheckpoint(ledger.db, { dir, key })).toMatchObject({ written: false, checkpoint: { seq: 2, headId: ids[16] } });
    expect(readFileSync(join(dir, CHECKPOINT_FILE), 'utf8')).toBe(before);
  });

  it('streams: a chain of 2,600 more rows verifies in pages of 1,000, and a rewrite past the first pages is named', async () => {
    const more = await appendBulk(ledger, 2600, 'bulk');
    const spy = counting(ledger.db);
    expect(await verifyAudit(spy)).toEqual({ ok: true, rows: 2617 });
    expect(spy.maxRows).toBe(1000);
    expect(spy.pages).toBe(3);
    // The writer streams too: the rows since checkpoint 2, read in pages of 500.
    const wrote = await writeAuditCheckpoint(ledger.db, { dir, key, batchSize: 500 });
    expect(wrote).toMatchObject({ written: true, checkpoint: { seq: 3, prevHeadId: ids[16], headId: more[2599], rows: 2617 } });
    expect(wrote.checkpoint!.rowHashes).toHaveLength(2600);
    // The next writer reads only the last line (here ~200 kB, read back in several chunks): nothing new, nothing written.
    expect(await writeAuditCheckpoint(ledger.db, { dir, key })).toMatchObject({ written: false, checkpoint: { seq: 3, headId: more[2599] } });
    const all = await readAuditCheckpoints(dir, key.publicKey);
    expect(await verifyAudit(ledger.db, { checkpoints: all })).toMatchObject({ ok: true, rows: 2617, checkpoints: { verified: 3, headId: more[2599] } });

    const target = more[2100]!;
    const verdict = await tampered(
      ledger,
      async (c) => relink(c, target, await hashOf(c, more[2099]!), (r) => (r.id === target ? { ...r, detail: { forged: true } } : r)),
      async (c) => {
        const pages = counting(c);
        return { alone: await verifyAudit(pages), withCheckpoints: await verifyAudit(pages, { checkpoints: all, batchSize: 700 }), pages };
      },
    );
    expect(verdict.alone).toEqual({ ok: true, rows: 2617 });
    expect(verdict.withCheckpoints).toMatchObject({ ok: false, firstBadId: target, problem: 'rewritten' });
    expect(verdict.pages.maxRows).toBe(1000);
  });
});
