/**
 * The one reader of the environment. Every GOVLOOP_* (and TEMPORAL_*, DATABASE_URL …) variable
 * govloop reads is declared here with its type, so a bad value is refused with its name ("invalid
 * config environment: GOVLOOP_SIM_SPEEDUP: …", exit 2 from the CLI) instead of turning into NaN
 * somewhere later. An empty variable counts as unset. Read at each call, so a test or a long-lived
 * process sees the environment as it is now.
 */
import { z } from 'zod';
import { ConfigError } from './errors';

const text = z.string().min(1).optional();
const positive = z.coerce.number({ error: 'must be a number' }).positive('must be a positive number').optional();
const nonNegative = z.coerce.number({ error: 'must be a number' }).nonnegative('must be a number ≥ 0').optional();
const url = z.url('must be a URL').optional();

export const SettingsSchema = z.object({
  // Where things are.
  GOVLOOP_CONFIG_DIR: text,
  GOVLOOP_DATA_DIR: text,
  GOVLOOP_CACHE_DIR: text,
  XDG_CACHE_HOME: text,
  TEMPORAL_CLI: text,
  // The production-shaped Temporal of tests and benchmarks (runtime/temporal-server.ts).
  TEMPORAL_SERVER: text,
  TEMPORAL_SQL_TOOL: text,
  TEMPORAL_SCHEMA_DIR: text,
  TEST_DATABASE_URL: text,
  GOVLOOP_WORKFLOW_BUNDLE: text,
  // What to connect to (Temporal's own TLS and API-key variables are read by @temporalio/envconfig).
  TEMPORAL_ADDRESS: text,
  TEMPORAL_NAMESPACE: text,
  DATABASE_URL: text,
  GOVLOOP_TASK_QUEUE: text,
  GOVLOOP_PROGRAM_ID: text,
  GOVLOOP_TEMPORAL_UI: url,
  GOVLOOP_NOTIFY_URL: url,
  // Who is calling.
  GOVLOOP_TOKEN: text,
  GOVLOOP_API_KEY: text,
  GOVLOOP_APPROVER_TOKEN: text,
  GOVLOOP_METRICS_TOKEN: text,
  USER: text,
  // Identity config overrides (config/auth.yaml): validated with the rest of auth.yaml.
  GOVLOOP_AUTH_MODE: text,
  GOVLOOP_OIDC_ISSUER: text,
  GOVLOOP_OIDC_AUDIENCE: text,
  GOVLOOP_OIDC_JWKS_URI: text,
  GOVLOOP_PLATFORM_ADMINS: z
    .string()
    .optional()
    .transform((s) =>
      s === undefined
        ? undefined
        : s
            .split(',')
            .map((n) => n.trim())
            .filter(Boolean),
    ),
  // Behaviour.
  GOVLOOP_LOG_LEVEL: z
    .string()
    .toLowerCase()
    .pipe(z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .optional(),
  GOVLOOP_SIM_SPEEDUP: positive,
  GOVLOOP_INGEST_MAX_AGE_HOURS: positive,
  GOVLOOP_CLUSTER_BACKEND: z.enum(['simulated', 'kubernetes']).optional(),
  GOVLOOP_K8S_NAMESPACE: text,
  GOVLOOP_K8S_PLACEMENT: z.enum(['govloop', 'scheduler']).optional(),
  GOVLOOP_K8S_SERVICE_ACCOUNT: text,
  GOVLOOP_K8S_CHECKPOINT_GRACE_SECONDS: nonNegative,
  GOVLOOP_K8S_STOP_MARGIN_SECONDS: nonNegative,
});

export type Settings = z.output<typeof SettingsSchema>;

/** The environment, typed. Throws ConfigError naming every bad variable. */
export function settings(env: NodeJS.ProcessEnv = process.env): Settings {
  const present: Record<string, string> = {};
  for (const key of Object.keys(SettingsSchema.shape)) {
    const value = env[key];
    if (value !== undefined && value !== '') present[key] = value;
  }
  const parsed = SettingsSchema.safeParse(present);
  if (!parsed.success) {
    throw new ConfigError(
      'environment',
      parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: `${i.message} (got "${present[String(i.path[0])]}")` })),
    );
  }
  return parsed.data;
}
