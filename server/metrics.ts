import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LadderSteps } from '../governance/ladder';
import { Periods, windowKey } from '../governance/periods';
import type { Queryable } from '../ledger/db';
import { type IngestResult, RejectCodes } from '../ledger/ingest';

/**
 * The API's Prometheus metrics, in a registry of its own (not prom-client's global one), so two
 * servers in one process — tests, the benchmark — never share counters.
 *
 * Two kinds: counters of what this process did (ingestion, HTTP requests), and gauges read from
 * the ledger at scrape time (admission decisions, budget use), so they are the same whichever
 * replica is scraped and include what the workers decided. The budget gauges name tenants, so
 * /metrics is an operator endpoint (its own token), never readable with a tenant's API key.
 *
 * The gauges: admission decisions, budget use and the ladder step per budget window, the ladder's
 * enforcement actions (ladder_events: each step fired, budget preemptions), and budget leases by
 * state with the USD they hold.
 */
export interface ApiMetrics {
  registry: Registry;
  usageEvents: Counter<'outcome'>;
  usageRejected: Counter<'reason'>;
  usageRequests: Counter<'status'>;
  requestSeconds: Histogram<'method' | 'route' | 'status'>;
  /** Counts one answered POST /v1/usage. */
  recordIngest(r: IngestResult): void;
}

export function createMetrics(db: Queryable, clock: () => Date = () => new Date()): ApiMetrics {
  const registry = new Registry();
  const usageEvents = new Counter({
    name: 'govloop_usage_events_total',
    help: 'Usage events received by POST /v1/usage, by outcome: accepted (new in the ledger), duplicate (already counted), rejected',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const usageRejected = new Counter({
    name: 'govloop_usage_events_rejected_total',
    help: 'Usage events of well-formed requests rejected by POST /v1/usage, by reason code',
    labelNames: ['reason'],
    registers: [registry],
  });
  const usageRequests = new Counter({
    name: 'govloop_usage_requests_total',
    help: 'POST /v1/usage requests by HTTP status (400: malformed, nothing written; 401/403: refused)',
    labelNames: ['status'],
    registers: [registry],
  });
  for (const outcome of ['accepted', 'duplicate', 'rejected']) usageEvents.inc({ outcome }, 0);
  for (const reason of RejectCodes) usageRejected.inc({ reason }, 0);
  const requestSeconds = new Histogram({
    name: 'govloop_http_request_duration_seconds',
    help: 'HTTP request latency of the govloop API, by method, route and status',
    labelNames: ['method', 'route', 'status'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });

  new Gauge({
    name: 'govloop_admission_decisions',
    help: 'Tasks in the ledger by admission decision (admitted, rejected, queued); read from the ledger at scrape time',
    labelNames: ['decision'],
    registers: [registry],
    async collect() {
      const { rows } = await db.query<{ decision: string; n: number }>(
        'SELECT decision, count(*)::bigint AS n FROM tasks WHERE decision IS NOT NULL GROUP BY decision',
      );
      this.reset();
      for (const r of rows) this.set({ decision: r.decision }, Number(r.n));
    },
  });

  // One query for the four budget gauges of a scrape: prom-client collects them concurrently,
  // so they share the query in flight.
  type BudgetRow = {
    tenant: string;
    team: string;
    project: string;
    period: string;
    limit_micros: number;
    reserved_micros: number;
    spent_micros: number;
    ladder_step: string;
  };
  let inFlight: Promise<BudgetRow[]> | undefined;
  const budgetRows = (): Promise<BudgetRow[]> => {
    if (inFlight) return inFlight;
    const at = clock();
    const keys = Object.fromEntries(Periods.map((p) => [p, windowKey(p, at)]));
    inFlight = db
      .query<BudgetRow>(
        `SELECT b.tenant, b.team, b.project, b.period, b.limit_micros,
                COALESCE(w.reserved_micros, 0) AS reserved_micros, COALESCE(w.spent_micros, 0) AS spent_micros,
                COALESCE(w.ladder_step, 'ok') AS ladder_step
         FROM budgets b LEFT JOIN budget_windows w ON w.budget_id = b.id
           AND w.window_key = CASE b.period WHEN 'day' THEN $1 WHEN 'week' THEN $2 WHEN 'month' THEN $3 ELSE 'total' END`,
        [keys.day, keys.week, keys.month],
      )
      .then((r) => r.rows)
      .finally(() => {
        inFlight = undefined;
      });
    return inFlight;
  };
  const budgetGauge = (name: string, help: string, value: (r: BudgetRow) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['tenant', 'team', 'project', 'period'],
      registers: [registry],
      async collect() {
        const rows = await budgetRows();
        this.reset();
        for (const r of rows) this.set({ tenant: r.tenant, team: r.team, project: r.project, period: r.period }, value(r));
      },
    });
  budgetGauge('govloop_budget_limit_usd', 'Budget limit per scope (team/project "*" = the whole tenant/team) and period', (r) => r.limit_micros / 1e6);
  budgetGauge('govloop_budget_spent_usd', 'Spent in the current window of each budget', (r) => r.spent_micros / 1e6);
  budgetGauge('govloop_budget_reserved_usd', 'Held by reservations of running tasks in the current window of each budget', (r) => r.reserved_micros / 1e6);
  budgetGauge('govloop_budget_utilization_ratio', '(spent + reserved) / limit in the current window of each budget; 1 for a zero limit with any use', (r) => {
    const used = r.spent_micros + r.reserved_micros;
    return r.limit_micros > 0 ? used / r.limit_micros : used > 0 ? 1 : 0;
  });

  budgetGauge(
    'govloop_budget_ladder_step',
    'The enforcement ladder step in force per budget (its controller sets it): 0 ok, 1 notify, 2 throttle, 3 queue, 4 preempt',
    (r) => Math.max(0, LadderSteps.indexOf(r.ladder_step as (typeof LadderSteps)[number])),
  );

  new Gauge({
    name: 'govloop_enforcement_actions',
    help: 'Enforcement actions recorded in the ledger, by action: ladder steps fired (notify, throttle, queue, preempt), preemptions, step denials and degrades, budget and admission rejections, held tool calls, compensations',
    labelNames: ['action'],
    registers: [registry],
    async collect() {
      const { rows } = await db.query<{ action: string; n: number }>(
        `SELECT 'ladder_' || step AS action, count(*)::bigint AS n FROM ladder_events WHERE action = step GROUP BY step
         UNION ALL SELECT 'budget_preemption', count(*)::bigint FROM ladder_events WHERE action LIKE 'preempt:%'
         UNION ALL SELECT CASE WHEN action = 'step' THEN 'step_' || replace(decision, '-', '_') WHEN action = 'reserve' THEN 'budget_rejected' WHEN action = 'admission' THEN 'admission_' || decision ELSE action || '_' || decision END, count(*)::bigint
           FROM audit_log WHERE (action = 'step' AND decision IN ('deny', 'degrade', 'await-approval')) OR (action = 'reserve' AND decision = 'rejected')
              OR (action = 'admission' AND decision IN ('rejected', 'queued')) OR action IN ('compensation', 'preempt')
           GROUP BY 1`,
      );
      this.reset();
      for (const r of rows) this.set({ action: r.action }, Number(r.n));
    },
  });

  new Gauge({
    name: 'govloop_leases',
    help: 'Budget leases granted, by state (held, returned, expired), and the USD they hold or held',
    labelNames: ['state', 'measure'],
    registers: [registry],
    async collect() {
      const { rows } = await db.query<{ state: string; n: number; usd: number; spent: number }>(
        'SELECT state, count(*)::bigint AS n, COALESCE(SUM(amount_micros), 0)::float8 AS usd, COALESCE(SUM(spent_micros), 0)::float8 AS spent FROM leases GROUP BY state',
      );
      this.reset();
      for (const st of ['held', 'returned', 'expired']) {
        const r = rows.find((x) => x.state === st);
        this.set({ state: st, measure: 'count' }, Number(r?.n ?? 0));
        this.set({ state: st, measure: 'granted_usd' }, Number(r?.usd ?? 0) / 1e6);
        this.set({ state: st, measure: 'spent_usd' }, Number(r?.spent ?? 0) / 1e6);
      }
    },
  });

  return {
    registry,
    usageEvents,
    usageRejected,
    usageRequests,
    requestSeconds,
    recordIngest(r) {
      usageEvents.inc({ outcome: 'accepted' }, r.accepted);
      usageEvents.inc({ outcome: 'duplicate' }, r.duplicates);
      usageEvents.inc({ outcome: 'rejected' }, r.rejected.length);
      for (const x of r.rejected) usageRejected.inc({ reason: x.code });
    },
  };
}
