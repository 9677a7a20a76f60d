import { canonicalJson } from '../governance/canonical-json';
import { createHash } from 'node:crypto';
import { Db, type Queryable } from './db';

/** A problem of the checkpoint file (ledger/audit-checkpoints.ts): `line` is 1-based. */
export interface CheckpointFinding {
  line: number;
  seq: number | null;
  problem: AuditCheckpointProblem;
  message: string;
}

/**
 * What verifyAudit reads of verified checkpoints: the shape readAuditCheckpoints
 * (ledger/audit-checkpoints.ts) returns, declared here so the chain does not import its checkpoints.
 */
export interface VerifiedCheckpoints {
  file: string;
  checkpoints: readonly { seq: number; prevHeadId: number; headId: number; rowHashes: readonly (readonly [number, string])[] }[];
  findings: CheckpointFinding[];
}

/**
 * The audit log is a hash chain: each row's hash covers its own content and the previous row's
 * hash, so an edited, removed or inserted row breaks the chain at a row `verifyAudit` can name.
 */
export interface AuditEntry {
  actor: string;
  taskId: string | null;
  action: string;
  decision: string;
  detail?: Record<string, unknown>;
  /** Makes the append idempotent: an entry with a key already in the log is not written again. */
  dedupeKey?: string;
  at?: Date;
}

const AUDIT_LOCK = 0x60fa0d1;
/** The prev_hash of the first row. */
export const GENESIS = '0'.repeat(64);

function rowHash(prev: string, row: { id: number; at: Date; actor: string; taskId: string | null; action: string; decision: string; detail: unknown }): string {
  return createHash('sha256')
    .update(prev)
    .update(
      canonicalJson({
        id: row.id,
        at: row.at.toISOString(),
        actor: row.actor,
        taskId: row.taskId,
        action: row.action,
        decision: row.decision,
        detail: row.detail,
      }),
    )
    .digest('hex');
}

/**
 * Appends one entry. Call inside the transaction that makes the decision it records. Given the
 * pool itself (no transaction), it opens one: the chain's advisory lock is transaction-scoped, and
 * appends in autocommit statements could both link to the same tip.
 */
export async function appendAudit(q: Queryable, entry: AuditEntry): Promise<void> {
  if (q instanceof Db) return q.tx((c) => appendAudit(c, entry));
  await q.query('SELECT pg_advisory_xact_lock($1)', [AUDIT_LOCK]);
  // One statement after the lock (a fresh snapshot, so it sees every append committed before the
  // lock was ours): is the entry in already, the chain's tip, and the new row's id. The id is
  // drawn only for a new entry (CASE evaluates nextval only in its branch).
  const { rows } = await q.query<{ seen: boolean; prev: string | null; id: number | null }>(
    `SELECT d.seen, (SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1) AS prev,
            CASE WHEN d.seen THEN NULL ELSE nextval(pg_get_serial_sequence('audit_log', 'id')) END AS id
       FROM (SELECT $1::text IS NOT NULL AND EXISTS (SELECT 1 FROM audit_log WHERE dedupe_key = $1::text) AS seen) d`,
    [entry.dedupeKey ?? null],
  );
  const head = rows[0]!;
  if (head.seen) return;
  const prev = head.prev ?? GENESIS;
  const id = Number(head.id);
  // Millisecond precision, so the time read back hashes to the same string.
  const at = new Date(Math.floor((entry.at ?? new Date()).getTime()));
  const detail = JSON.parse(JSON.stringify(entry.detail ?? {}));
  const hash = rowHash(prev, { id, at, actor: entry.actor, taskId: entry.taskId, action: entry.action, decision: entry.decision, detail });
  await q.query(
    `INSERT INTO audit_log (id, at, actor, task_id, action, decision, detail, dedupe_key, prev_hash, hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
    [id, at, entry.actor, entry.taskId, entry.action, entry.decision, detail, entry.dedupeKey ?? null, prev, hash],
  );
}

/** One audit_log row as stored. */
export interface AuditRow {
  id: number;
  at: Date;
  actor: string;
  task_id: string | null;
  action: string;
  decision: string;
  detail: unknown;
  prev_hash: string;
  hash: string;
}

/** The hash a row's content and prev_hash give; equal to `hash` for a row nobody edited. */
export const recomputeHash = (r: AuditRow): string =>
  rowHash(r.prev_hash, { id: r.id, at: r.at, actor: r.actor, taskId: r.task_id, action: r.action, decision: r.decision, detail: r.detail });

/**
 * The rows after `afterId`, in id order, read in batches of `batchSize` by keyset pagination:
 * memory stays one batch however long the log is. Rows appended meanwhile are read too (ids
 * are taken under the chain's lock, so they become visible in id order).
 */
export async function* auditRows(q: Queryable, opts: { afterId?: number; batchSize?: number } = {}): AsyncGenerator<AuditRow> {
  const size = opts.batchSize ?? 1000;
  let after = opts.afterId ?? 0;
  for (;;) {
    const { rows } = await q.query<AuditRow>(
      'SELECT id, at, actor, task_id, action, decision, detail, prev_hash, hash FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2',
      [after, size],
    );
    yield* rows;
    if (rows.length < size) return;
    after = rows[rows.length - 1]!.id;
  }
}

/** Problems of a row: found by the chain itself (first three) or by comparing with signed checkpoints (decision 0019). */
export type AuditRowProblem = 'altered' | 'removed-before' | 'inserted' | 'rewritten' | 'removed' | 'cut-tail';
/** Problems of the checkpoint file itself: a line whose signature does not verify, or checkpoints missing between two. */
export type AuditCheckpointProblem = 'bad-checkpoint-signature' | 'checkpoint-gap';
export type AuditProblem = AuditRowProblem | AuditCheckpointProblem;

/** What the checkpoints given to verifyAudit held. */
export interface AuditCheckpointSummary {
  file: string;
  /** Checkpoints whose signature verified: only these are compared with the table. */
  verified: number;
  newestSeq: number | null;
  /** The newest verified checkpoint's head: rows after it are checked by the chain alone. */
  headId: number | null;
}

interface VerdictExtras {
  checkpoints?: AuditCheckpointSummary;
  /** Every problem of the checkpoint file (a row problem, if any, is still the verdict's `problem`). */
  checkpointFindings?: CheckpointFinding[];
}

export type AuditVerdict =
  | ({ ok: true; rows: number } & VerdictExtras)
  | ({ ok: false; rows: number; firstBadId: number; problem: AuditRowProblem; message: string } & VerdictExtras)
  | ({ ok: false; rows: number; firstBadId: null; problem: AuditCheckpointProblem; message: string; checkpointLine: number } & VerdictExtras);

/**
 * Recomputes the chain from the first row, streaming (keyset pages of `batchSize`), and names the
 * first row that does not fit:
 *  - `altered`: the row's content no longer gives its hash;
 *  - `inserted` / `removed-before`: the row does not follow its predecessor (it follows a hash
 *    that exists elsewhere / that is gone); with checkpoints also a row the checkpoint covering
 *    its id did not have;
 * and, given verified checkpoints (readAuditCheckpoints), what a consistent rewrite leaves:
 *  - `rewritten`: the chain holds by itself, but the row's hash is not the one checkpointed;
 *  - `removed` / `cut-tail`: a checkpointed row is gone (firstBadId is its id); `cut-tail` when
 *    every checkpointed row from it on is gone.
 * With no row problem, a bad checkpoint line is the verdict (`bad-checkpoint-signature`,
 * `checkpoint-gap`; firstBadId null, checkpointLine its line).
 */
export async function verifyAudit(q: Queryable, opts: { checkpoints?: VerifiedCheckpoints; batchSize?: number } = {}): Promise<AuditVerdict> {
  const cps = opts.checkpoints;
  const valid = cps?.checkpoints ?? [];
  const findings = cps?.findings ?? [];
  const extras: VerdictExtras = {};
  if (cps && (valid.length > 0 || findings.length > 0)) {
    const newest = valid[valid.length - 1];
    extras.checkpoints = { file: cps.file, verified: valid.length, newestSeq: newest?.seq ?? null, headId: newest?.headId ?? null };
    if (findings.length > 0) extras.checkpointFindings = findings;
  }
  // Every checkpointed [id, hash, seq], in id order, and the id ranges the checkpoints vouch for.
  const expected: [number, string, number][] = [];
  for (const c of valid) for (const [id, hash] of c.rowHashes) expected.push([id, hash, c.seq]);
  expected.sort((a, b) => a[0] - b[0]);
  const ranges = valid.map((c) => ({ from: c.prevHeadId, to: c.headId, seq: c.seq })).sort((a, b) => a.to - b.to);
  const newestHead = ranges.reduce((m, r) => Math.max(m, r.to), 0);

  const fail = async (firstBadId: number, problem: AuditRowProblem, message: string): Promise<AuditVerdict> => {
    const { rows } = await q.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log');
    return { ok: false, rows: rows[0]!.n, firstBadId, problem, message, ...extras };
  };
  let prev = GENESIS;
  let n = 0;
  let j = 0;
  let k = 0;
  for await (const r of auditRows(q, opts.batchSize !== undefined ? { batchSize: opts.batchSize } : {})) {
    n++;
    const next = expected[j];
    if (next && next[0] < r.id) {
      // A checkpointed row that should come before this one is not in the table. When this row is
      // past the newest checkpoint, everything checkpointed from the missing row on is gone.
      const cut = r.id > newestHead;
      return fail(
        next[0],
        cut ? 'cut-tail' : 'removed',
        `row ${next[0]} is in checkpoint ${next[2]} but not in the table${cut ? ', nor is any checkpointed row after it' : ''}`,
      );
    }
    if (recomputeHash(r) !== r.hash) return fail(r.id, 'altered', `row ${r.id}'s content does not give its hash`);
    if (r.prev_hash !== prev) {
      // The row is self-consistent but does not follow its predecessor: either it was forged into
      // the chain, or the row it followed is gone.
      const known = (await q.query('SELECT 1 FROM audit_log WHERE hash = $1 LIMIT 1', [r.prev_hash])).rowCount;
      return known
        ? fail(r.id, 'inserted', `row ${r.id} follows a row other than its predecessor`)
        : fail(r.id, 'removed-before', `the row that row ${r.id} followed is gone`);
    }
    if (next && next[0] === r.id) {
      if (next[1] !== r.hash)
        return fail(
          r.id,
          'rewritten',
          `row ${r.id} fits the chain, but its hash is not the one checkpoint ${next[2]} signed: the chain was rewritten from here`,
        );
      j++;
    } else {
      while (k < ranges.length && ranges[k]!.to < r.id) k++;
      const range = ranges[k];
      if (range && range.from < r.id)
        return fail(r.id, 'inserted', `row ${r.id} is not in checkpoint ${range.seq}, which covers ids ${range.from + 1}..${range.to}`);
    }
    prev = r.hash;
  }
  const missing = expected[j];
  if (missing)
    return {
      ok: false,
      rows: n,
      firstBadId: missing[0],
      problem: 'cut-tail',
      message: `the table ends before row ${missing[0]} of checkpoint ${missing[2]} (checkpointed head: row ${newestHead})`,
      ...extras,
    };
  const bad = findings[0];
  if (bad) return { ok: false, rows: n, firstBadId: null, problem: bad.problem, message: bad.message, checkpointLine: bad.line, ...extras };
  return { ok: true, rows: n, ...extras };
}

export { canonicalJson };
