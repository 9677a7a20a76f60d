import { createHash, randomBytes } from 'node:crypto';
import { appendAudit } from './audit';
import { Db, type Queryable } from './db';

/**
 * API keys of the usage ingestion API. A key is `glk_` + 32 random bytes in base64url; the
 * ledger keeps only its SHA-256, so the plaintext exists once, in what `createKey` returns.
 * A key belongs to one tenant: `authenticate` answers that tenant, or null.
 */
export const KEY_PREFIX = 'glk_';
const KEY_PATTERN = /^glk_[A-Za-z0-9_-]{43}$/;
/** Characters of a key shown in lists and logs: `glk_` and 8 more (48 random bits). */
const DISPLAY_CHARS = 12;

export interface CreatedKey {
  id: number;
  /** The plaintext key: shown once, never stored. */
  key: string;
  tenant: string;
  /** The user the key authenticates as (null: a tenant key of the usage ingestion API only). */
  subject: string | null;
  prefix: string;
}

export interface KeyInfo {
  id: number;
  tenant: string;
  subject: string | null;
  prefix: string;
  createdBy: string;
  createdAt: Date;
  revokedAt: Date | null;
}

export const hashKey = (key: string): string => createHash('sha256').update(key).digest('hex');

/**
 * Creates a key for `tenant`, issued to `subject` (null: a tenant key for usage ingestion only),
 * audited as `apikey.create` by `by`, inside the caller's transaction (where its authorization
 * was checked) or a new one.
 */
export async function createKey(q: Db | Queryable, tenant: string, by: string, subject: string | null = null): Promise<CreatedKey> {
  const key = `${KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
  const prefix = key.slice(0, DISPLAY_CHARS);
  const run = async (c: Queryable): Promise<CreatedKey> => {
    const { rows } = await c.query<{ id: number }>(
      'INSERT INTO api_keys (tenant, key_hash, prefix, created_by, subject) VALUES ($1, $2, $3, $4, $5) RETURNING id',
      [tenant, hashKey(key), prefix, by, subject],
    );
    const id = rows[0]!.id;
    await appendAudit(c, { actor: by, taskId: null, action: 'apikey.create', decision: 'recorded', detail: { tenant, subject, prefix, keyId: id } });
    return { id, key, tenant, subject, prefix };
  };
  return q instanceof Db ? q.tx(run) : run(q);
}

/** The user and tenant of a live key issued to a user; null for a malformed, unknown, revoked or tenant-only key. */
export async function principalOfKey(q: Queryable, key: string): Promise<{ subject: string; tenant: string } | null> {
  if (!KEY_PATTERN.test(key)) return null;
  const { rows } = await q.query<{ tenant: string; subject: string | null }>(
    'SELECT tenant, subject FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL',
    [hashKey(key)],
  );
  const r = rows[0];
  return r && r.subject !== null ? { subject: r.subject, tenant: r.tenant } : null;
}

/** The tenant of a live key, or null for a malformed, unknown or revoked one. */
export async function authenticate(q: Queryable, key: string): Promise<string | null> {
  if (!KEY_PATTERN.test(key)) return null;
  const { rows } = await q.query<{ tenant: string }>('SELECT tenant FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL', [hashKey(key)]);
  return rows[0]?.tenant ?? null;
}

export type RevokeResult = { revoked: true; key: KeyInfo } | { revoked: false; reason: 'not-found' | 'ambiguous' | 'already-revoked' };

/** Revokes the one key of `tenant` whose display prefix is `prefix`; audited as `apikey.revoke`. */
export async function revokeKey(q: Db | Queryable, tenant: string, prefix: string, by: string): Promise<RevokeResult> {
  const run = async (c: Queryable): Promise<RevokeResult> => {
    const { rows } = await c.query<{ id: number; revoked_at: Date | null }>(
      'SELECT id, revoked_at FROM api_keys WHERE tenant = $1 AND prefix = $2 FOR UPDATE',
      [tenant, prefix],
    );
    if (rows.length === 0) return { revoked: false, reason: 'not-found' };
    const live = rows.filter((r) => r.revoked_at === null);
    if (live.length === 0) return { revoked: false, reason: 'already-revoked' };
    if (live.length > 1) return { revoked: false, reason: 'ambiguous' };
    const id = live[0]!.id;
    await c.query('UPDATE api_keys SET revoked_at = now() WHERE id = $1', [id]);
    await appendAudit(c, { actor: by, taskId: null, action: 'apikey.revoke', decision: 'recorded', detail: { tenant, prefix, keyId: id } });
    return { revoked: true, key: (await listKeys(c, tenant)).find((k) => k.id === id)! };
  };
  return q instanceof Db ? q.tx(run) : run(q);
}

/** A tenant's keys, newest first: prefixes and dates, never hashes. */
export async function listKeys(q: Queryable, tenant: string): Promise<KeyInfo[]> {
  const { rows } = await q.query<{
    id: number;
    tenant: string;
    subject: string | null;
    prefix: string;
    created_by: string;
    created_at: Date;
    revoked_at: Date | null;
  }>('SELECT id, tenant, subject, prefix, created_by, created_at, revoked_at FROM api_keys WHERE tenant = $1 ORDER BY id DESC', [tenant]);
  return rows.map((r) => ({
    id: r.id,
    tenant: r.tenant,
    subject: r.subject,
    prefix: r.prefix,
    createdBy: r.created_by,
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
  }));
}
