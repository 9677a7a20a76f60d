import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from './errors';
import { settings, type Settings } from './settings';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { clusterTopology } from '../governance/cluster-topology';
import { fieldErrors } from '../governance/intent';
import { TopologyError } from '../governance/topology';
import { GateCheck, ProgramPlan } from '../governance/program';
import { parseGateParams } from '../governance/program-params';
import {
  ClusterFile,
  AuthFile,
  type AuthConfig,
  PoliciesFile,
  PriceBookFile,
  SimulationFile,
  TemplatesFile,
  ToolsFile,
  type ToolCatalog,
  type ClusterConfig,
  type Policies,
  type PriceBookVersion,
  type SimulationConfig,
  type Template,
} from './schema';

export const defaultConfigDir = dirname(fileURLToPath(import.meta.url));

import type { GovConfig } from './schema';

export type { GovConfig };
export { ConfigError };

function loadFile<T>(dir: string, file: string, schema: z.ZodType<T>, optional = false): T {
  const path = join(dir, file);
  let doc: unknown;
  try {
    doc = optional && !existsSync(path) ? {} : parseYaml(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(path, [{ path: '(document)', message: (err as Error).message }]);
  }
  const parsed = schema.safeParse(doc);
  if (!parsed.success) throw new ConfigError(path, fieldErrors(parsed.error));
  return parsed.data;
}

/**
 * Loads config from `dir` (default: $GOVLOOP_CONFIG_DIR, else the shipped config/).
 * `GOVLOOP_SIM_SPEEDUP` overrides the simulation speed-up so demos and tests finish in seconds.
 */
export function loadConfig(dir?: string): GovConfig {
  const env = settings();
  const root = resolve(dir ?? env.GOVLOOP_CONFIG_DIR ?? defaultConfigDir);
  const simulation = loadFile(root, 'simulation.yaml', SimulationFile);
  if (env.GOVLOOP_SIM_SPEEDUP !== undefined) simulation.speedup = env.GOVLOOP_SIM_SPEEDUP;
  const priceBook = loadFile(root, 'pricebook.yaml', PriceBookFile).versions.sort((a, b) => Date.parse(a.effectiveFrom) - Date.parse(b.effectiveFrom));
  const policies = loadFile(root, 'policies.yaml', PoliciesFile);
  if (env.GOVLOOP_NOTIFY_URL) policies.notifyUrl = env.GOVLOOP_NOTIFY_URL;
  const cluster = loadFile(root, 'cluster.yaml', ClusterFile);
  try {
    // The nodes must form a valid placement topology too (NVLink domains in one rack, MIG on MIG types …).
    clusterTopology(cluster);
  } catch (err) {
    if (err instanceof TopologyError) throw new ConfigError(join(root, 'cluster.yaml'), err.errors);
    throw err;
  }
  return {
    policies,
    templates: loadFile(root, 'templates.yaml', TemplatesFile).templates,
    priceBook,
    cluster,
    simulation,
    tools: loadFile(root, 'tools.yaml', ToolsFile),
    auth: loadAuth(root, env),
  };
}

/** config/auth.yaml (optional: a config dir without it runs `mode: none`), then the GOVLOOP_* overrides. */
function loadAuth(root: string, env: Settings): AuthConfig {
  const doc = loadFile(root, 'auth.yaml', AuthFile.loose(), true) as Record<string, unknown>;
  const merged: Record<string, unknown> = { ...doc };
  if (env.GOVLOOP_AUTH_MODE) merged.mode = env.GOVLOOP_AUTH_MODE;
  if (env.GOVLOOP_OIDC_ISSUER || env.GOVLOOP_OIDC_AUDIENCE || env.GOVLOOP_OIDC_JWKS_URI) {
    const base = (doc.oidc ?? {}) as Record<string, unknown>;
    merged.oidc = {
      ...base,
      ...(env.GOVLOOP_OIDC_ISSUER ? { issuer: env.GOVLOOP_OIDC_ISSUER } : {}),
      ...(env.GOVLOOP_OIDC_AUDIENCE ? { audience: env.GOVLOOP_OIDC_AUDIENCE } : {}),
      ...(env.GOVLOOP_OIDC_JWKS_URI ? { jwksUri: env.GOVLOOP_OIDC_JWKS_URI } : {}),
    };
  }
  if (env.GOVLOOP_PLATFORM_ADMINS) {
    merged.platformAdmins = [...((doc.platformAdmins as string[] | undefined) ?? []), ...env.GOVLOOP_PLATFORM_ADMINS];
  }
  const parsed = AuthFile.safeParse(merged);
  if (!parsed.success)
    throw new ConfigError(`${join(root, 'auth.yaml')} (with GOVLOOP_AUTH_MODE / GOVLOOP_OIDC_* / GOVLOOP_PLATFORM_ADMINS)`, fieldErrors(parsed.error));
  if (parsed.data.mode === 'required' && parsed.data.platformAdmins.length === 0) {
    throw new ConfigError(join(root, 'auth.yaml'), [
      { path: 'platformAdmins', message: 'mode: required needs at least one platform admin to bootstrap roles' },
    ]);
  }
  return parsed.data;
}

/**
 * The migration program's plan (config/program.yaml, or `file`): the ProgramPlan schema, and each
 * gate's params against its check's schema (governance/program-params.ts). Every problem is
 * reported with its field path in one ConfigError, params included even when the rest fails.
 */
export function loadProgramPlan(file?: string): ProgramPlan {
  const path = resolve(file ?? join(settings().GOVLOOP_CONFIG_DIR ?? defaultConfigDir, 'program.yaml'));
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(path, [{ path: '(document)', message: (err as Error).message }]);
  }
  const parsed = ProgramPlan.safeParse(doc);
  const errors = parsed.success ? [] : fieldErrors(parsed.error);
  errors.push(...gateParamErrors(doc));
  if (errors.length > 0 || !parsed.success) throw new ConfigError(path, errors);
  return parsed.data;
}

/** Each gate's params checked against its check (where the check is a known one), with full paths. */
function gateParamErrors(doc: unknown): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  const phases = (doc as { phases?: unknown } | null)?.phases;
  if (!Array.isArray(phases)) return out;
  phases.forEach((ph: unknown, i) => {
    const gates = (ph as { gates?: unknown } | null)?.gates;
    if (!Array.isArray(gates)) return;
    gates.forEach((g: unknown, j) => {
      const check = GateCheck.safeParse((g as { check?: unknown } | null)?.check);
      if (!check.success) return;
      const r = parseGateParams(check.data, (g as { params?: unknown }).params);
      if (!r.success)
        for (const e of fieldErrors(r.error)) out.push({ path: `phases.${i}.gates.${j}.params${e.path === '(root)' ? '' : `.${e.path}`}`, message: e.message });
    });
  });
  return out;
}
