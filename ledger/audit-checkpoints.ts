import { closeSync, createReadStream, existsSync, fstatSync, fsyncSync, mkdirSync, openSync, readSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { KeyObject } from 'node:crypto';
import { z } from 'zod';
import { type SigningKey, keyIdOf, signJson, verifyJson } from '../identity/signing';
import { type AuditCheckpointProblem, type CheckpointFinding, GENESIS, auditRows, recomputeHash } from './audit';
import { Db, type Queryable } from './db';

/**
 * Signed checkpoints of the audit chain, kept outside the database (decision 0019). Each line of
 * `<dir>/audit-checkpoints.jsonl` is one checkpoint: the chain's head (last id, its hash, the row
 * count) and the [id, hash] of every row since the previous checkpoint, signed with govloop's
 * Ed25519 key. Someone who can write the database but not this file or the key cannot rewrite
 * a checkpointed row, remove one or cut the tail without `verifyAudit` naming it.
 */
export const CHECKPOINT_FILE = 'audit-checkpoints.jsonl';
/** pg_advisory_xact_lock key: one checkpoint writer at a time (the chain's own lock is 0x60fa0d1). */
const CHECKPOINT_LOCK = 0x60fa0d2;

const Hash = z.string().regex(/^[0-9a-f]{64}$/, 'a SHA-256 hex digest');
const Id = z.number().int().nonnegative();
const CheckpointLine = z.strictObject({
  seq: z.number().int().positive(),
  at: z.iso.datetime(),
  /** The previous checkpoint's headId (0 for the first): this one vouches for ids prevHeadId+1 .. headId. */
  prevHeadId: Id,
  headId: Id,
  headHash: Hash,
  /** Rows in the table with id <= headId when the checkpoint was taken. */
  rows: z.number().int().nonnegative(),
  rowHashes: z.array(z.tuple([Id, Hash])),
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
  sig: z.string(),
});
export type AuditCheckpoint = z.infer<typeof CheckpointLine>;

export type { CheckpointFinding };

/** The checkpoints of a file whose signatures verified, in file order, and what was wrong with the rest. */
export interface AuditCheckpoints {
  file: string;
  checkpoints: AuditCheckpoint[];
  findings: CheckpointFinding[];
}

/** The checkpoint could not be written because the ledger no longer matches what was checkpointed. */
export class AuditCheckpointRefused extends Error {
  override name = 'AuditCheckpointRefused';
}

/** One line of the file, checked: the checkpoint, or why it is not one signed by `publicKey`. */
function checkLine(text: string, publicKey: KeyObject, keyId: string): { checkpoint: AuditCheckpoint } | { seq: number | null; message: string } {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return { seq: null, message: 'not JSON (a torn write, or edited)' };
  }
  const parsed = CheckpointLine.safeParse(doc);
  if (!parsed.success) {
    const seq = (doc as { seq?: unknown } | null)?.seq;
    return {
      seq: typeof seq === 'number' ? seq : null,
      message: `not a checkpoint (${parsed.error.issues.map((i) => `${i.path.join('.') || '(line)'}: ${i.message}`).join('; ')})`,
    };
  }
  const { sig, ...signed } = parsed.data;
  if (!verifyJson(publicKey, signed, sig)) {
    return {
      seq: signed.seq,
      message:
        signed.keyId === keyId
          ? `seq ${signed.seq}: the signature does not verify`
          : `seq ${signed.seq}: signed by key ${signed.keyId}, not by ${keyId}, or forged`,
    };
  }
  return { checkpoint: parsed.data };
}

/**
 * Reads `<dir>/audit-checkpoints.jsonl` line by line and checks every line's signature with
 * `publicKey`. A line that is not a checkpoint, or whose signature does not verify, is a finding
 * (`bad-checkpoint-signature`) and is not trusted; so is a checkpoint that does not follow the one
 * before it (`checkpoint-gap`: lines removed from the file). No file: no checkpoints, no findings.
 */
export async function readAuditCheckpoints(dir: string, publicKey: KeyObject): Promise<AuditCheckpoints> {
  const file = join(dir, CHECKPOINT_FILE);
  const out: AuditCheckpoints = { file, checkpoints: [], findings: [] };
  if (!existsSync(file)) return out;
  const keyId = keyIdOf(publicKey);
  const lines = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
  let line = 0;
  /** The checkpoint on the line before, when it verified (the next must follow it); undefined before the first line. */
  let before: AuditCheckpoint | null | undefined;
  for await (const text of lines) {
    line++;
    if (text.trim() === '') continue;
    const checked = checkLine(text, publicKey, keyId);
    if (!('checkpoint' in checked)) {
      out.findings.push({ line, seq: checked.seq, problem: 'bad-checkpoint-signature', message: `checkpoint line ${line}: ${checked.message}` });
      before = null;
      continue;
    }
    const c = checked.checkpoint;
    const follows = before === undefined ? c.seq === 1 && c.prevHeadId === 0 : before === null || (c.seq === before.seq + 1 && c.prevHeadId === before.headId);
    if (!follows) {
      const what = before ? `follows seq ${before.seq} (head ${before.headId})` : 'is the first line';
      out.findings.push({
        line,
        seq: c.seq,
        problem: 'checkpoint-gap',
        message: `checkpoint line ${line}: seq ${c.seq} (from row ${c.prevHeadId + 1}) ${what}: checkpoints between are missing from the file`,
      });
    }
    out.checkpoints.push(c);
    before = c;
  }
  return out;
}

/** The file's last line (without reading the rest of it), or null for no file or an empty one. */
function lastLine(file: string): string | null {
  if (!existsSync(file)) return null;
  const fd = openSync(file, 'r');
  try {
    let end = fstatSync(fd).size;
    const chunks: Buffer[] = [];
    let seenText = false;
    while (end > 0) {
      const size = Math.min(65_536, end);
      const buf = Buffer.alloc(size);
      readSync(fd, buf, 0, size, end - size);
      end -= size;
      // The newline that ends the last line does not count; the one before the line does.
      let i = buf.length - 1;
      for (; i >= 0; i--) {
        if (buf[i] === 0x0a && seenText) break;
        if (buf[i] !== 0x0a && buf[i] !== 0x0d && buf[i] !== 0x20) seenText = true;
      }
      if (i >= 0) {
        chunks.unshift(buf.subarray(i + 1));
        break;
      }
      chunks.unshift(buf);
    }
    const text = Buffer.concat(chunks).toString('utf8').trim();
    return text === '' ? null : text;
  } finally {
    closeSync(fd);
  }
}

/**
 * The file's newest checkpoint, checked with the writer's key: what the next checkpoint follows.
 * Only the last line is read (the file grows with the log; `verify` reads all of it).
 */
function lastCheckpoint(dir: string, key: SigningKey): AuditCheckpoint | null {
  const file = join(dir, CHECKPOINT_FILE);
  const text = lastLine(file);
  if (text === null) return null;
  const checked = checkLine(text, key.publicKey, key.keyId);
  if (!('checkpoint' in checked)) {
    throw new AuditCheckpointRefused(
      `${file}: the last line: ${checked.message}; no checkpoint is added after a line that does not verify (runbooks/audit-verify-failed.md)`,
    );
  }
  return checked.checkpoint;
}

export interface CheckpointResult {
  file: string;
  /** False when the head had not moved since the newest checkpoint (or the log is empty). */
  written: boolean;
  checkpoint: AuditCheckpoint | null;
}

/**
 * Appends a signed checkpoint of the chain's head to `<dir>/audit-checkpoints.jsonl` (created,
 * with `dir`, when missing). Idempotent: when no row was appended since the newest checkpoint,
 * nothing is written. Before signing it checks what it vouches for: the newest checkpoint's head
 * row still has its hash, and every row since recomputes and follows the one before. When not,
 * it refuses (AuditCheckpointRefused) rather than sign a rewritten chain.
 * Given the pool, it runs in a transaction of its own; given a client, in the caller's.
 */
export async function writeAuditCheckpoint(q: Queryable, opts: { dir: string; key: SigningKey; batchSize?: number; now?: Date }): Promise<CheckpointResult> {
  if (q instanceof Db) return q.tx((c) => writeAuditCheckpoint(c, opts));
  await q.query('SELECT pg_advisory_xact_lock($1)', [CHECKPOINT_LOCK]);
  const file = join(opts.dir, CHECKPOINT_FILE);
  const prev = lastCheckpoint(opts.dir, opts.key);
  let prevHash = GENESIS;
  if (prev) {
    const { rows } = await q.query<{ hash: string }>('SELECT hash FROM audit_log WHERE id = $1', [prev.headId]);
    if (rows[0]?.hash !== prev.headHash) {
      throw new AuditCheckpointRefused(
        `row ${prev.headId}, the head of checkpoint ${prev.seq}, is ${rows[0] ? 'not the row checkpointed' : 'gone'}: run govloop audit verify`,
      );
    }
    prevHash = prev.headHash;
  }
  const rowHashes: [number, string][] = [];
  for await (const r of auditRows(q, { afterId: prev?.headId ?? 0, ...(opts.batchSize !== undefined ? { batchSize: opts.batchSize } : {}) })) {
    if (recomputeHash(r) !== r.hash || r.prev_hash !== prevHash) {
      throw new AuditCheckpointRefused(
        `row ${r.id} does not fit the chain (${recomputeHash(r) !== r.hash ? 'altered' : 'does not follow its predecessor'}): run govloop audit verify`,
      );
    }
    rowHashes.push([r.id, r.hash]);
    prevHash = r.hash;
  }
  const head = rowHashes[rowHashes.length - 1];
  if (!head) return { file, written: false, checkpoint: prev };
  const { rows } = await q.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log WHERE id <= $1', [head[0]]);
  const signed = {
    seq: (prev?.seq ?? 0) + 1,
    at: (opts.now ?? new Date()).toISOString(),
    prevHeadId: prev?.headId ?? 0,
    headId: head[0],
    headHash: head[1],
    rows: rows[0]!.n,
    rowHashes,
    keyId: opts.key.keyId,
  };
  const checkpoint: AuditCheckpoint = { ...signed, sig: signJson(opts.key, signed) };
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  // One write of the whole line, then fsync: a crash leaves at worst a torn last line, which
  // readAuditCheckpoints reports and the next writer refuses to follow.
  const fd = openSync(file, 'a', 0o600);
  try {
    writeFileSync(fd, `${JSON.stringify(checkpoint)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { file, written: true, checkpoint };
}

/**
 * Where checkpoints and the signing key live: policies.audit, where null means under the data dir
 * (`audit-checkpoints/`, `govloop-signing-key.pem`); a relative path is taken from the data dir too.
 */
export function auditPaths(
  audit: { checkpointDir: string | null; signingKeyFile: string | null },
  dataDir: string,
): { checkpointDir: string; signingKeyFile: string } {
  return {
    checkpointDir: resolve(dataDir, audit.checkpointDir ?? 'audit-checkpoints'),
    signingKeyFile: resolve(dataDir, audit.signingKeyFile ?? 'govloop-signing-key.pem'),
  };
}
