import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attributionId } from '../../ledger/attribution';
import { type Ledger, attributionOf, backends, lockWaiters, newTenant } from './backends';

describe.each(backends)('attribution tuples on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('gives a tuple one id, created on first use', async () => {
    const { db } = ledger;
    const a = attributionOf(newTenant());
    const id = await attributionId(db, a);
    expect(await attributionId(db, a)).toBe(id);
    expect(await attributionId(db, { ...a, model: 'llama-3-70b' })).not.toBe(id);
  });

  // BUG (PostgreSQL only): attributionId (ledger/attribution.ts) inserts with ON CONFLICT DO
  // NOTHING and falls back to a SELECT in the same statement. When another transaction inserts the
  // same new tuple first, the INSERT waits for it and then does nothing, and the SELECT runs on the
  // snapshot taken before that transaction committed: the statement returns no row and `rows[0]!.id`
  // throws "TypeError: Cannot read properties of undefined (reading 'id')". Any two first uses of
  // a new tenant/team/project/model/use-case at the same moment hit it: upsertTask of two tasks,
  // or recordUsage of two usage batches. PGlite runs one transaction at a time, so it cannot race.
  (backend.name === 'postgresql' ? it.fails : it)('gives the same id to a tuple first used by two transactions at once', async () => {
    const { db } = ledger;
    const a = attributionOf(newTenant());
    const first = await db.pool.connect();
    try {
      await first.query('BEGIN');
      const { rows } = await first.query<{ id: number }>(
        'INSERT INTO attributions (tenant, team, project, model, use_case) VALUES ($1, $2, $3, $4, $5) RETURNING id',
        [a.tenant, a.team, a.project, a.model, a.useCase],
      );
      const second = attributionId(db, a).then(
        (id) => ({ id }),
        (err: unknown) => ({ error: String(err) }),
      );
      await lockWaiters(backend, db, 'INSERT INTO attributions', 1);
      await first.query('COMMIT');
      expect(await second).toEqual({ id: rows[0]!.id });
    } finally {
      await first.query('ROLLBACK').catch(() => undefined);
      first.release();
    }
  });
});
