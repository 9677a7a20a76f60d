import { createHash, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { PriceBookVersion } from '../config/schema';
import type { UsageLimits } from '../governance/limits';
import { type FieldError, fieldErrors } from '../governance/intent';
import { scopeName } from '../governance/budget-scope';
import { Periods } from '../governance/periods';
import { showBudgets } from '../ledger/budgets';
import { type Db, isConnectionError } from '../ledger/db';
import { DEFAULT_FUTURE_SKEW_SECONDS, DEFAULT_MAX_AGE_HOURS, ingestUsage } from '../ledger/ingest';
import { authenticate } from '../ledger/keys';
import { type ApiMetrics, createMetrics } from './metrics';
import { type DashboardConfig, registerDashboard } from './dashboard';
import { ReportDims, usageReport } from './usage-report';

/**
 * The govloop HTTP API: usage ingestion and the caller tenant's reads, next to the workers.
 *
 * Every /v1 route authenticates the caller with a tenant API key (`Authorization: Bearer glk_…`)
 * and serves that tenant only: a body or query that names another tenant is answered 403 and
 * changes nothing. /metrics spans all tenants, so it takes the operator's metrics token instead
 * and refuses tenant keys. /healthz says only that the process and the ledger answer. /dashboard
 * is the cost and usage page; its data comes from /v1/dashboard with a tenant key (./dashboard.ts).
 *
 * Errors are JSON: `{error, errors?: [{path, message}]}`. 400: the input is malformed (every
 * field named, nothing written; an event over its meter's cap in usageLimits is malformed too);
 * 401: no or a bad key; 403: another tenant; 404; 413: body too big; 422: usage whose charge would
 * carry a budget window or task cost past the ledger's ceiling (nothing written); 503: the ledger
 * (PostgreSQL) cannot be reached, with Retry-After (runbooks/postgres-restart.md).
 */
export interface ApiConfig {
  priceBook: PriceBookVersion[];
  /** Per-event usage caps (policies.yaml usageLimits; default: governance/limits.ts). */
  usageLimits?: UsageLimits;
  /** Usage events older than this are rejected as stale. */
  maxAgeHours: number;
  /** Usage events further than this ahead of the server's clock are rejected. */
  futureSkewSeconds: number;
  /** Bearer token of GET /metrics; without one, /metrics is off (404). */
  metricsToken?: string;
  /** Largest request body in bytes (default 8 MiB: 5,000 events fit). */
  bodyLimitBytes?: number;
  /** Temporal UI links of the dashboard's tasks (server/dashboard.ts). */
  dashboard?: DashboardConfig;
}

export interface ApiDeps {
  db: Db;
  config: ApiConfig;
  /** The server's clock: ingestion windows and budget windows are judged against it. */
  clock?: () => Date;
  /** Fastify's logger option (pino); off by default. */
  logger?: boolean | { level: string };
  /**
   * Called after usage was recorded, with the tenant and the team/project pairs it touched: `govloop
   * serve` nudges the budget controllers whose thresholds it crossed (runtime/schedules.ts).
   */
  onRecorded?: (scopes: { tenant: string; team: string; project: string }[]) => Promise<void>;
}

export interface Api {
  app: FastifyInstance;
  metrics: ApiMetrics;
}

export const apiConfigDefaults = { maxAgeHours: DEFAULT_MAX_AGE_HOURS, futureSkewSeconds: DEFAULT_FUTURE_SKEW_SECONDS } as const;

/** An answer other than 200, thrown by a handler and written by the error handler. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly errors?: FieldError[],
  ) {
    super(message);
  }
}

const badInput = (errors: FieldError[]) => new ApiError(400, 'invalid input', errors);

function parse<T>(schema: z.ZodType<T>, input: unknown): T {
  const r = schema.safeParse(input);
  if (!r.success) throw badInput(fieldErrors(r.error));
  return r.data;
}

const instant = z.union([z.iso.datetime({ offset: true }), z.iso.date()], { error: 'must be an ISO 8601 date (2026-11-01) or date-time with a time zone' });
const UsageQuery = z
  .strictObject({
    tenant: scopeName.optional(),
    from: instant.optional(),
    to: instant.optional(),
    by: z
      .string()
      .default('team')
      .transform((s) =>
        s
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean),
      )
      .pipe(z.array(z.enum(ReportDims, { error: `each dimension must be one of ${ReportDims.join(', ')}` }))),
  })
  .refine((q) => q.from === undefined || q.to === undefined || Date.parse(q.from) < Date.parse(q.to), { message: 'must be after from', path: ['to'] });
const BudgetQuery = z.strictObject({
  tenant: scopeName.optional(),
  team: scopeName.optional(),
  project: scopeName.optional(),
  period: z.enum(Periods).optional(),
});

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  const m = h === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(h);
  return m?.[1];
}

const sameSecret = (a: string, b: string) => timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());

export async function buildApi(deps: ApiDeps): Promise<Api> {
  const { db, config } = deps;
  const clock = deps.clock ?? (() => new Date());
  const metrics = createMetrics(db, clock);
  const app = Fastify({ logger: deps.logger ?? false, bodyLimit: config.bodyLimitBytes ?? 8 * 1024 * 1024 });

  /** The caller's tenant, from its API key: checked first, before the input is looked at. */
  async function callerTenant(req: FastifyRequest): Promise<string> {
    const key = bearer(req);
    if (key === undefined) throw new ApiError(401, 'missing API key: send Authorization: Bearer <key> (govloop keys create --tenant T)');
    const tenant = await authenticate(db, key);
    if (tenant === null) throw new ApiError(401, 'unknown or revoked API key');
    return tenant;
  }
  /** A tenant named in a query must be the caller's. */
  const ownTenant = (tenant: string, named: string | undefined) => {
    if (named !== undefined && named !== tenant)
      throw new ApiError(403, `this API key is for tenant ${tenant} only`, [{ path: 'tenant', message: `${named} is not the tenant of this API key` }]);
  };

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    if (err instanceof ApiError) {
      if (err.status === 401) void reply.header('www-authenticate', 'Bearer');
      return reply.code(err.status).send({ error: err.message, ...(err.errors ? { errors: err.errors } : {}) });
    }
    if (isConnectionError(err)) {
      // PostgreSQL is down or restarting: say so and when to come back, and stay up. A usage
      // batch whose commit was cut off may or may not be in; re-sending it is safe (events are
      // counted once by id).
      req.log.warn({ err }, 'ledger unavailable');
      return reply
        .code(503)
        .header('retry-after', '5')
        .send({ error: 'the ledger (PostgreSQL) is unavailable: retry in a few seconds; re-sending the same usage events is safe, each is counted once' });
    }
    const status = err.statusCode ?? 500;
    if (status >= 400 && status < 500) {
      // Fastify's own refusals: malformed JSON, unsupported content type, body too large.
      return reply.code(status).send({ error: err.message, errors: [{ path: '(body)', message: err.message }] });
    }
    req.log.error({ err }, 'request failed');
    return reply.code(500).send({ error: 'internal error' });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: `no route ${req.method} ${req.url.split('?')[0]}` }));

  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    metrics.requestSeconds.observe({ method: req.method, route, status: String(reply.statusCode) }, reply.elapsedTime / 1000);
    if (route === '/v1/usage' && req.method === 'POST') metrics.usageRequests.inc({ status: String(reply.statusCode) });
  });

  app.get('/healthz', async () => {
    await db.query('SELECT 1');
    return { ok: true };
  });

  app.post('/v1/usage', async (req: FastifyRequest, reply: FastifyReply) => {
    const tenant = await callerTenant(req);
    const r = await ingestUsage(db, tenant, req.body, {
      now: clock(),
      maxAgeHours: config.maxAgeHours,
      futureSkewSeconds: config.futureSkewSeconds,
      priceBook: config.priceBook,
      ...(config.usageLimits ? { limits: config.usageLimits } : {}),
    });
    if (r.outcome === 'invalid') throw badInput(r.errors);
    if (r.outcome === 'refused') throw new ApiError(422, 'usage refused: recording it would pass a ledger limit; nothing was written', r.errors);
    if (r.outcome === 'forbidden') throw new ApiError(403, `this API key is for tenant ${tenant} only`, r.errors);
    metrics.recordIngest(r);
    if (r.accepted > 0 && deps.onRecorded) {
      await deps.onRecorded(r.scopes).catch((err: unknown) => req.log.warn({ err }, 'budget controller nudge failed'));
    }
    return reply.send({ accepted: r.accepted, duplicates: r.duplicates, rejected: r.rejected, unattributed: r.unattributed });
  });

  app.get('/v1/usage', async (req) => {
    const tenant = await callerTenant(req);
    const q = parse(UsageQuery, req.query);
    ownTenant(tenant, q.tenant);
    const now = clock();
    const from = q.from ? new Date(q.from) : new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
    const to = q.to ? new Date(q.to) : new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
    return { tenant, from: from.toISOString(), to: to.toISOString(), by: q.by, rows: await usageReport(db, tenant, q.by, from, to) };
  });

  app.get('/v1/budgets', async (req) => {
    const tenant = await callerTenant(req);
    const q = parse(BudgetQuery, req.query);
    ownTenant(tenant, q.tenant);
    const budgets = await showBudgets(
      db,
      { tenant, ...(q.team ? { team: q.team } : {}), ...(q.project ? { project: q.project } : {}), ...(q.period ? { period: q.period } : {}) },
      clock(),
    );
    return { tenant, budgets };
  });

  app.get('/metrics', async (req, reply) => {
    if (config.metricsToken === undefined) throw new ApiError(404, 'metrics are off: start govloop serve with GOVLOOP_METRICS_TOKEN set');
    const token = bearer(req);
    if (token === undefined) throw new ApiError(401, 'missing metrics token: send Authorization: Bearer <GOVLOOP_METRICS_TOKEN>');
    if (!sameSecret(token, config.metricsToken)) {
      // A tenant key is a valid credential for the wrong thing: metrics span every tenant.
      if ((await authenticate(db, token)) !== null) throw new ApiError(403, 'metrics span all tenants: a tenant API key cannot read them');
      throw new ApiError(401, 'bad metrics token');
    }
    return reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  registerDashboard(app, { db, clock, config: config.dashboard ?? {}, callerTenant, parse });

  await app.ready();
  return { app, metrics };
}
