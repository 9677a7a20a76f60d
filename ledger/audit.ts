import { createHash } from 'node:crypto';
import { Db, type Queryable } from './db';

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
const GENESIS = '0'.repeat(64);

/** JSON with keys sorted at every level: jsonb does not keep key order, the hash must not care. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

function rowHash(prev: string, row: { id: number; at: Date; actor: string; taskId: string | null; action: string; decision: string; detail: unknown }): string {
  return createHash('sha256')
    .update(prev)
    .update(canonicalJson({ id: row.id, at: row.at.toISOString(), actor: row.actor, taskId: row.taskId, action: row.action, decision: row.decision, detail: row.detail }))
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
  if (entry.dedupeKey !== undefined) {
    const seen = await q.query('SELECT 1 FROM audit_log WHERE dedupe_key = $1', [entry.dedupeKey]);
    if (seen.rowCount) return;
  }
  const last = await q.query<{ hash: string }>('SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1');
  const prev = last.rows[0]?.hash ?? GENESIS;
  const { rows } = await q.query<{ id: number }>("SELECT nextval(pg_get_serial_sequence('audit_log', 'id')) AS id");
  const id = rows[0]!.id;
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

export type AuditVerdict =
  | { ok: true; rows: number }
  | { ok: false; rows: number; firstBadId: number; problem: 'altered' | 'removed-before' | 'inserted' };

/** Recomputes the chain from the first row and names the first row that does not fit. */
export async function verifyAudit(q: Queryable): Promise<AuditVerdict> {
  const { rows } = await q.query<{ id: number; at: Date; actor: string; task_id: string | null; action: string; decision: string; detail: unknown; prev_hash: string; hash: string }>(
    'SELECT id, at, actor, task_id, action, decision, detail, prev_hash, hash FROM audit_log ORDER BY id',
  );
  let prev = GENESIS;
  for (const r of rows) {
    const recomputed = rowHash(r.prev_hash, { id: r.id, at: r.at, actor: r.actor, taskId: r.task_id, action: r.action, decision: r.decision, detail: r.detail });
    if (recomputed !== r.hash) return { ok: false, rows: rows.length, firstBadId: r.id, problem: 'altered' };
    if (r.prev_hash !== prev) {
      // The row is self-consistent but does not follow its predecessor: either it was forged into
      // the chain, or the row it followed is gone.
      const known = rows.some((x) => x.hash === r.prev_hash);
      return { ok: false, rows: rows.length, firstBadId: r.id, problem: known ? 'inserted' : 'removed-before' };
    }
    prev = r.hash;
  }
  return { ok: true, rows: rows.length };
}
