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

  // On PostgreSQL the second INSERT waits for the first transaction, then does nothing, and its
  // SELECT (same snapshot) cannot see the committed row: attributionId must look again.
  it('gives the same id to a tuple first used by two transactions at once', async () => {
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
