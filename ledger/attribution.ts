import type { Attribution } from '../governance/intent';
import type { Queryable } from './db';

/**
 * The id of an attribution tuple, created on first use. When another transaction inserts the same
 * tuple at the same moment, this statement's INSERT waits for it and then does nothing, and its
 * SELECT (same snapshot) cannot see the other row yet: the statement finds no row. A second
 * statement has a fresh snapshot (READ COMMITTED) and sees the committed row.
 */
export async function attributionId(q: Queryable, a: Attribution): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    const id = await tryAttributionId(q, a);
    if (id !== undefined) return id;
    if (attempt >= 5) throw new Error(`attribution ${a.tenant}/${a.team}/${a.project}/${a.model}/${a.useCase}: no row after ${attempt} tries`);
  }
}

async function tryAttributionId(q: Queryable, a: Attribution): Promise<number | undefined> {
  const { rows } = await q.query<{ id: number }>(
    `WITH ins AS (
       INSERT INTO attributions (tenant, team, project, model, use_case) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (tenant, team, project, model, use_case) DO NOTHING RETURNING id)
     SELECT id FROM ins UNION ALL
     SELECT id FROM attributions WHERE tenant = $1 AND team = $2 AND project = $3 AND model = $4 AND use_case = $5
     LIMIT 1`,
    [a.tenant, a.team, a.project, a.model, a.useCase],
  );
  return rows[0]?.id;
}
