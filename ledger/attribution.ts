import type { Attribution } from '../governance/intent';
import type { Queryable } from './db';

/** The id of an attribution tuple, created on first use. */
export async function attributionId(q: Queryable, a: Attribution): Promise<number> {
  const { rows } = await q.query<{ id: number }>(
    `WITH ins AS (
       INSERT INTO attributions (tenant, team, project, model, use_case) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (tenant, team, project, model, use_case) DO NOTHING RETURNING id)
     SELECT id FROM ins UNION ALL
     SELECT id FROM attributions WHERE tenant = $1 AND team = $2 AND project = $3 AND model = $4 AND use_case = $5
     LIMIT 1`,
    [a.tenant, a.team, a.project, a.model, a.useCase],
  );
  return rows[0]!.id;
}
