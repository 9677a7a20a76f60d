import { type Principal, actorName } from '../../governance/authz';
import { checkAccess } from '../../ledger/authz';
import { NameText } from '../../workflows/schemas';
import type { Command } from 'commander';
import { z } from 'zod';
import { loadConfig } from '../../config/load';
import { type CreatedKey, createKey, listKeys, revokeKey } from '../../ledger/keys';
import { connectTemporal, dataDir as resolveDataDir, openLedger, readDevState } from '../../runtime/environment';
import { nudgeCrossed } from '../../runtime/schedules';
import { apiConfigDefaults, buildApi } from '../../server/app';
import { type CommandContext, refused, withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table } from '../util';
import { settings } from '../../config/settings';

const tenant = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/, 'lowercase letters, digits, ".", "_" and "-", starting and ending alphanumeric');
const positive = z.coerce.number({ error: 'must be a number' }).positive();

const ServeOptions = z.strictObject({
  port: z.coerce.number({ error: 'must be a port number' }).int().min(0).max(65535).default(8080),
  host: z.string().min(1).default('127.0.0.1'),
  maxAgeHours: positive.max(24 * 366).default(apiConfigDefaults.maxAgeHours),
  futureSkewSeconds: z.coerce.number({ error: 'must be a number' }).nonnegative().max(86_400).default(apiConfigDefaults.futureSkewSeconds),
  temporalUi: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL, e.g. http://localhost:8233' }).optional(),
});
const KeysCreate = z.strictObject({ tenant, user: NameText.optional(), as: NameText.optional(), json: z.boolean().default(false) });
const KeysList = z.strictObject({ tenant, as: NameText.optional(), json: z.boolean().default(false) });
const KeysRevoke = z.strictObject({
  tenant,
  prefix: z.string().regex(/^glk_[A-Za-z0-9_-]{8}$/, 'the 12-character prefix shown by keys list, e.g. glk_AbC123xY'),
  as: NameText.optional(),
  json: z.boolean().default(false),
});

/** Resolves on the first SIGINT/SIGTERM. */
const untilSignal = () =>
  new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });

/**
 * `keys create`: checks `p` may `keys.manage` in the tenant and creates the key in the same
 * transaction (audited by its prefix, never the key); a refusal is audited and exits 3.
 */
export async function issueKey(ctx: CommandContext, p: Principal, tenant: string, user: string | null): Promise<CreatedKey> {
  const r = await (
    await ctx.db()
  ).tx(async (c) => {
    const d = await checkAccess(c, p, 'keys.manage', tenant, { detail: { user } });
    return d.allowed ? { allowed: true as const, key: await createKey(c, tenant, actorName(p), user) } : d;
  });
  if (!r.allowed) throw refused(r, p);
  return r.key;
}

export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;

  program
    .command('serve')
    .description(
      'run the HTTP API: POST /v1/usage, GET /v1/usage, GET /v1/budgets (tenant API keys), the /dashboard page, /metrics (GOVLOOP_METRICS_TOKEN), /healthz',
    )
    .option('--port <n>', 'port to listen on (0: any free port)', '8080')
    .option('--host <host>', 'address to bind', '127.0.0.1')
    .option(
      '--max-age-hours <n>',
      `usage events older than this are rejected as stale (default $GOVLOOP_INGEST_MAX_AGE_HOURS or ${apiConfigDefaults.maxAgeHours})`,
    )
    .option('--future-skew-seconds <n>', `how far ahead of this clock an event may be (default ${apiConfigDefaults.futureSkewSeconds})`)
    .option('--temporal-ui <url>', "Temporal UI that the dashboard's task ids link to (default $GOVLOOP_TEMPORAL_UI, or the UI of a running govloop dev)")
    .action(async (raw) => {
      const env = settings();
      const o = parseOptions(ServeOptions, {
        ...(env.GOVLOOP_INGEST_MAX_AGE_HOURS !== undefined ? { maxAgeHours: env.GOVLOOP_INGEST_MAX_AGE_HOURS } : {}),
        ...(env.GOVLOOP_TEMPORAL_UI ? { temporalUi: env.GOVLOOP_TEMPORAL_UI } : {}),
        ...raw,
      });
      const dev = readDevState(resolveDataDir(dataDir()));
      const temporalUiUrl = o.temporalUi ?? dev?.uiUrl ?? undefined;
      const temporalNamespace = env.TEMPORAL_NAMESPACE ?? dev?.namespace ?? 'default';
      const config = loadConfig();
      const metricsToken = env.GOVLOOP_METRICS_TOKEN;
      const ledger = await openLedger(dataDir());
      // With a Temporal server configured, usage that crosses a budget threshold nudges its controller now.
      const temporal = env.TEMPORAL_ADDRESS || dev ? await connectTemporal(dataDir()).catch(() => undefined) : undefined;
      try {
        const { app } = await buildApi({
          ...(temporal
            ? {
                onRecorded: async (scopes: { tenant: string; team: string; project: string }[]) =>
                  void (await Promise.all(scopes.map((sc) => nudgeCrossed(temporal.client, ledger.db, sc, config.policies.ladder)))),
              }
            : {}),
          db: ledger.db,
          config: {
            priceBook: config.priceBook,
            usageLimits: config.policies.usageLimits,
            maxAgeHours: o.maxAgeHours,
            futureSkewSeconds: o.futureSkewSeconds,
            ...(metricsToken ? { metricsToken } : {}),
            dashboard: { ...(temporalUiUrl ? { temporalUiUrl } : {}), temporalNamespace, ladder: config.policies.ladder },
          },
          logger: { level: env.GOVLOOP_LOG_LEVEL ?? 'warn' },
        });
        const address = await app.listen({ port: o.port, host: o.host });
        // Tests and scripts read this line for the port when --port 0.
        console.log(
          `govloop API listening on ${address} (ledger ${ledger.source}; stale after ${o.maxAgeHours} h; /metrics ${metricsToken ? 'on' : 'off: set GOVLOOP_METRICS_TOKEN'})`,
        );
        console.log(
          `dashboard: ${address}/dashboard (asks for a tenant API key; Temporal UI links ${temporalUiUrl ? `to ${temporalUiUrl}` : 'off: --temporal-ui URL'})`,
        );
        const why = await untilSignal();
        console.error(`${why}: stopping ...`);
        await app.close();
      } finally {
        await temporal?.connection.close();
        await ledger.close();
      }
    });

  const keys = program.command('keys').description('API keys of the HTTP API: one tenant each, stored hashed');

  keys
    .command('create')
    .description('create an API key for a tenant; the key is printed once and cannot be shown again')
    .requiredOption('--tenant <tenant>')
    .option('--user <user>', 'the user the key authenticates as (its roles in the tenant); without it, a tenant key for usage ingestion only')
    .option('--as <user>', 'who creates it (auth: none only; audited)')
    .option('--json', 'print {key, prefix, tenant, user, id}')
    .action(async (raw) => {
      const o = parseOptions(KeysCreate, raw);
      await withContext(dataDir(), async (ctx) => {
        const p = await ctx.principal(o.as, 'keys.create');
        const k = await issueKey(ctx, p, o.tenant, o.user ?? null);
        if (o.json) return printJson({ key: k.key, prefix: k.prefix, tenant: k.tenant, user: k.subject, id: k.id });
        console.log(k.key);
        console.error(
          `API key ${k.prefix}… for tenant ${k.tenant}: shown once, keep it now (revoke: govloop keys revoke --tenant ${k.tenant} --prefix ${k.prefix})`,
        );
      });
    });

  keys
    .command('list')
    .description("a tenant's keys: prefixes and dates, never the keys")
    .requiredOption('--tenant <tenant>')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(KeysList, raw);
      await withContext(dataDir(), async (ctx) => {
        await ctx.allow(await ctx.principal(o.as, 'keys.list'), 'keys.manage', o.tenant);
        const list = await listKeys(await ctx.db(), o.tenant);
        if (o.json) return printJson(list);
        if (list.length === 0) return console.log(`no API keys for ${o.tenant}`);
        console.log(
          table(
            ['prefix', 'user', 'created', 'by', 'revoked'],
            list.map((k) => [k.prefix, k.subject ?? '(tenant key)', k.createdAt.toISOString(), k.createdBy, k.revokedAt?.toISOString() ?? '—']),
          ),
        );
      });
    });

  keys
    .command('revoke')
    .description('revoke a key by its prefix (from keys list); requests with it are refused at once')
    .requiredOption('--tenant <tenant>')
    .requiredOption('--prefix <prefix>')
    .option('--as <user>', 'who revokes it (auth: none only; audited)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(KeysRevoke, raw);
      await withContext(dataDir(), async (ctx) => {
        const p = await ctx.principal(o.as, 'keys.revoke');
        const out = await (
          await ctx.db()
        ).tx(async (c) => {
          const d = await checkAccess(c, p, 'keys.manage', o.tenant, { detail: { prefix: o.prefix } });
          return d.allowed ? { allowed: true as const, r: await revokeKey(c, o.tenant, o.prefix, actorName(p)) } : d;
        });
        if (!out.allowed) throw refused(out, p);
        const r = out.r;
        if (r.revoked) {
          if (o.json) return printJson(r);
          return console.log(`revoked ${o.prefix}… of ${o.tenant}`);
        }
        if (r.reason === 'already-revoked') {
          if (o.json) return printJson(r);
          return console.log(`${o.prefix}… of ${o.tenant} was already revoked`);
        }
        throw new CliExit(
          Exit.Failure,
          r.reason === 'not-found'
            ? `no API key ${o.prefix}… for tenant ${o.tenant}`
            : `more than one live key of ${o.tenant} starts with ${o.prefix}: revoke them in the ledger`,
          r,
        );
      });
    });
}
