/** What a gate check measures with and answers, and the helpers the checks share (ledger/program-gates.ts). */
import type { GovConfig } from '../config/load';
import type { GateCheck } from '../governance/program';
import type { GateParamsOf } from '../governance/program-params';
import type { Queryable } from './db';

/** What one check measured, before the threshold is applied. */
export interface Measure {
  value: number | null;
  failing: string[];
  detail: string;
}

export interface Ctx {
  q: Queryable;
  config: GovConfig;
  since: Date;
  now: Date;
  days: number;
  /** SQL parameter for the tenant scope: null for every tenant. */
  tenants: string[] | null;
  runbookDir: string;
}

export type Check<C extends GateCheck> = (ctx: Ctx, params: GateParamsOf<C>) => Promise<Measure>;

export const pct = (x: number) => `${(Math.round(x * 1000) / 10).toString()}%`;
export const usd = (micros: number) => `$${(micros / 1e6).toFixed(2)}`;
export const share = (ok: number, all: number) => (all > 0 ? ok / all : null);
/** Tenant scope as SQL over a column: `$n` is the tenant array (null: all). */
export const inScope = (col: string, n: number) => `($${n}::text[] IS NULL OR ${col} = ANY($${n}::text[]))`;
export const shown = (s: string) => (s === '' ? '(unattributed)' : s);
export const unset = (s: string | null) => s === null || s === '' || s.toLowerCase() === 'unknown';

/** Teams (tenant/team) and their projects with usage in the window. */
export async function teamsWithUsage(c: Ctx, extra = ''): Promise<{ tenant: string; team: string; project: string; cost: number }[]> {
  const { rows } = await c.q.query<{ tenant: string; team: string; project: string; cost: number }>(
    `SELECT a.tenant, a.team, a.project, SUM(u.cost_micros)::float8 AS cost
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
      WHERE u.occurred_at >= $1 AND u.occurred_at <= $2 AND ${inScope('a.tenant', 3)} ${extra}
      GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
    [c.since, c.now, c.tenants],
  );
  return rows.map((r) => ({ ...r, cost: Number(r.cost) }));
}
