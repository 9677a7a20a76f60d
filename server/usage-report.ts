import type { Queryable } from '../ledger/db';

/** Dimensions `GET /v1/usage?by=` groups by; rows are always per meter as well. */
export const ReportDims = ['team', 'project', 'model', 'useCase', 'tool', 'taskId'] as const;
export type ReportDim = (typeof ReportDims)[number];
const column: Record<ReportDim, string> = {
  team: 'a.team',
  project: 'a.project',
  model: 'a.model',
  useCase: 'a.use_case',
  tool: "COALESCE(u.tool, '')",
  taskId: "COALESCE(u.task_id, '')",
};

export interface ReportRow {
  [dim: string]: string | number;
  meter: string;
  quantity: number;
  /** Exact, in micro-dollars; `costUsd` is the same in dollars. */
  costMicros: number;
  costUsd: number;
  events: number;
}

/**
 * One tenant's usage over [from, to), by the given dimensions and meter: quantity (the sum of
 * the meter's unit), cost and event count. The tenant is the caller's: there is no way to ask
 * for all tenants or another one through here.
 */
export async function usageReport(q: Queryable, tenant: string, dims: readonly ReportDim[], from: Date, to: Date): Promise<ReportRow[]> {
  const cols = [...dims.map((d) => `${column[d]} AS "${d}"`), 'u.meter AS meter'];
  const { rows } = await q.query(
    `SELECT ${cols.join(', ')}, SUM(u.quantity) AS quantity, SUM(u.cost_micros)::float8 AS cost, COUNT(*)::bigint AS events
     FROM attributions a JOIN usage_events u ON u.attribution_id = a.id
     WHERE a.tenant = $1 AND u.occurred_at >= $2 AND u.occurred_at < $3
     GROUP BY ${cols.map((_, i) => i + 1).join(', ')}
     ORDER BY ${cols.map((_, i) => i + 1).join(', ')}`,
    [tenant, from, to],
  );
  return rows.map((r) => {
    const out: ReportRow = {
      meter: r.meter,
      quantity: Number(r.quantity),
      costMicros: Number(r.cost),
      costUsd: Number(r.cost) / 1e6,
      events: Number(r.events),
    };
    for (const d of dims) out[d] = r[d];
    return out;
  });
}
