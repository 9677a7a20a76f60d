import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod';
import type { GovConfig } from '../config/load';
import { fieldErrors } from '../governance/intent';
import { type LadderStep, LadderSteps, stepRank } from '../governance/ladder';
import { own } from '../governance/own';
import { pickTemplate } from '../governance/plan';
import type { GateCheck, GateResult, ProgramGate } from '../governance/program';
import { type GateParamsOf, parseGateParams } from '../governance/program-params';
import { GovState } from '../workflows/messages';
import type { Db, Queryable } from './db';

/**
 * The migration program's gate checks (issue 12, decision 0025): one SQL-backed measurement per
 * GateCheck over the ledger as it is, and the config govloop runs with. Each answers a share 0-1
 * (null when there is nothing to measure: the gate fails), the items that fail it by name, and one
 * line saying what was measured. Nothing here writes; nothing is ticked by hand.
 */

export const RUNBOOK_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'runbooks');
const MAX_FAILING = 50;

export interface GateOptions {
  /** Measure only these tenants' data (tests, a per-tenant view); the workflow passes none: the whole ledger. */
  tenants?: string[];
  /** Where Runbook v1 is read from (default: the shipped runbooks/). */
  runbookDir?: string;
}

/** What one check measured, before the threshold is applied. */
interface Measure {
  value: number | null;
  failing: string[];
  detail: string;
}

interface Ctx {
  q: Queryable;
  config: GovConfig;
  since: Date;
  now: Date;
  days: number;
  /** SQL parameter for the tenant scope: null for every tenant. */
  tenants: string[] | null;
  runbookDir: string;
}

/** Measures each gate now. Bad params make that gate fail with the field paths; a ledger error throws. */
export async function evaluateGates(db: Db, config: GovConfig, gates: ProgramGate[], now: Date, opts: GateOptions = {}): Promise<GateResult[]> {
  const out: GateResult[] = [];
  for (const gate of gates) {
    const ctx: Ctx = {
      q: db,
      config,
      since: new Date(now.getTime() - gate.windowDays * 86_400_000),
      now,
      days: gate.windowDays,
      tenants: opts.tenants ?? null,
      runbookDir: opts.runbookDir ?? RUNBOOK_DIR,
    };
    const parsed = parseGateParams(gate.check, gate.params);
    const m: Measure = parsed.success
      ? await checks[gate.check](ctx, parsed.data as never)
      : { value: null, failing: fieldErrors(parsed.error).map((e) => `params.${e.path}: ${e.message}`), detail: `invalid params for ${gate.check}` };
    const value = m.value === null ? null : Math.round(m.value * 1e6) / 1e6;
    out.push({
      id: gate.id,
      check: gate.check,
      threshold: gate.threshold,
      value,
      pass: value !== null && value >= gate.threshold,
      failing: m.failing.slice(0, MAX_FAILING),
      detail: m.detail,
      measuredAt: now.toISOString(),
    });
  }
  return out;
}

type Check<C extends GateCheck> = (ctx: Ctx, params: GateParamsOf<C>) => Promise<Measure>;

const pct = (x: number) => `${(Math.round(x * 1000) / 10).toString()}%`;
const usd = (micros: number) => `$${(micros / 1e6).toFixed(2)}`;
const share = (ok: number, all: number) => (all > 0 ? ok / all : null);
/** Tenant scope as SQL over a column: `$n` is the tenant array (null: all). */
const inScope = (col: string, n: number) => `($${n}::text[] IS NULL OR ${col} = ANY($${n}::text[]))`;
const shown = (s: string) => (s === '' ? '(unattributed)' : s);
const unset = (s: string | null) => s === null || s === '' || s.toLowerCase() === 'unknown';

/** Teams (tenant/team) and their projects with usage in the window. */
async function teamsWithUsage(c: Ctx, extra = ''): Promise<{ tenant: string; team: string; project: string; cost: number }[]> {
  const { rows } = await c.q.query<{ tenant: string; team: string; project: string; cost: number }>(
    `SELECT a.tenant, a.team, a.project, SUM(u.cost_micros)::float8 AS cost
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
      WHERE u.occurred_at >= $1 AND u.occurred_at <= $2 AND ${inScope('a.tenant', 3)} ${extra}
      GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
    [c.since, c.now, c.tenants],
  );
  return rows.map((r) => ({ ...r, cost: Number(r.cost) }));
}

const attributionCoverage: Check<'attributionCoverage'> = async (c, p) => {
  const { rows } = await c.q.query<{ tenant: string; team: string; project: string; model: string; use_case: string; cost: number; events: number }>(
    `SELECT a.tenant, a.team, a.project, a.model, a.use_case, SUM(u.cost_micros)::float8 AS cost, COUNT(*)::int AS events
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
      WHERE u.occurred_at >= $1 AND u.occurred_at <= $2 AND ${inScope('a.tenant', 3)}
      GROUP BY 1, 2, 3, 4, 5 ORDER BY 6 DESC, 1, 2, 3, 4, 5`,
    [c.since, c.now, c.tenants],
  );
  const col = { team: 'team', project: 'project', model: 'model', useCase: 'use_case' } as const;
  let total = 0;
  let covered = 0;
  let events = 0;
  let coveredEvents = 0;
  const failing: string[] = [];
  for (const r of rows) {
    const cost = Number(r.cost);
    const missing = p.dimensions.filter((d) => unset(r[col[d]]));
    total += cost;
    events += r.events;
    if (missing.length === 0) {
      covered += cost;
      coveredEvents += r.events;
    } else
      failing.push(
        `${r.tenant}/${shown(r.team)}/${shown(r.project)}/${shown(r.model)}/${shown(r.use_case)}: no ${missing.join(', ')} (${usd(cost)}, ${r.events} events)`,
      );
  }
  // Unpriced usage only (cost 0): the share of events instead, so usage is never invisible.
  const value = total > 0 ? covered / total : share(coveredEvents, events);
  const what = total > 0 ? `${usd(covered)} of ${usd(total)}` : `${coveredEvents} of ${events} events (no priced usage)`;
  return { value, failing, detail: `${what} of the last ${c.days} days' usage carries ${['tenant', ...p.dimensions].join(', ')}` };
};

const budgetCoverage: Check<'budgetCoverage'> = async (c) => {
  const used = await teamsWithUsage(c);
  const { rows: budgets } = await c.q.query<{ tenant: string; team: string; project: string }>(
    `SELECT DISTINCT tenant, team, project FROM budgets WHERE tenant = ANY($1::text[])`,
    [[...new Set(used.map((u) => u.tenant))]],
  );
  const teams = new Map<string, string[]>();
  for (const u of used) {
    const key = `${u.tenant}/${shown(u.team)}`;
    // The ledger's covering rule (ledger/budgets.ts coveringWindows): a project budget covers its own team's project only.
    const covered = budgets.some(
      (b) => b.tenant === u.tenant && (b.team === '*' || b.team === u.team) && (b.project === '*' || (b.team === u.team && b.project === u.project)),
    );
    const list = teams.get(key) ?? [];
    if (!covered) list.push(shown(u.project));
    teams.set(key, list);
  }
  const failing = [...teams]
    .filter(([, uncovered]) => uncovered.length > 0)
    .map(([team, uncovered]) => `${team}: no budget covers project ${uncovered.join(', ')}`);
  const l = c.config.policies.ladder;
  return {
    value: share(teams.size - failing.length, teams.size),
    failing,
    detail: `${teams.size - failing.length} of ${teams.size} teams with usage in the last ${c.days} days have a budget on every project they used; ladder notify ${l.notifyAt}% / throttle ${l.throttleAt}% / queue ${l.queueAt}% / preempt ${l.preemptAt}%`,
  };
};

const quotaCoverage: Check<'quotaCoverage'> = async (c) => {
  const { rows } = await c.q.query<{ tenant: string; team: string; gpu_type: string; gpu_seconds: number }>(
    `SELECT a.tenant, a.team, split_part(u.subject, ':', 1) AS gpu_type, SUM(u.quantity) AS gpu_seconds
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
      WHERE u.meter = 'gpu_seconds' AND u.occurred_at >= $1 AND u.occurred_at <= $2 AND ${inScope('a.tenant', 3)}
      GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
    [c.since, c.now, c.tenants],
  );
  const pol = c.config.policies;
  const failing = rows
    .filter(
      (r) =>
        !pol.gpuQuotas.some((g) => g.tenant === r.tenant && g.team === r.team && g.gpuType === r.gpu_type) &&
        !pol.cohorts.some((co) => co.gpuType === r.gpu_type && co.teams.some((t) => t.tenant === r.tenant && t.team === r.team)),
    )
    .map(
      (r) =>
        `${r.tenant}/${shown(r.team)} ${r.gpu_type}: no gpuQuotas entry or cohort (${(Number(r.gpu_seconds) / 3600).toFixed(2)} GPU-hours on the default ${pol.defaultGpuQuota})`,
    );
  return {
    value: share(rows.length - failing.length, rows.length),
    failing,
    detail: `${rows.length - failing.length} of ${rows.length} team/GPU-type pairs with GPU usage in the last ${c.days} days have an explicit GPU quota (policies.gpuQuotas or a cohort)`,
  };
};

const admissionPolicyV0: Check<'admissionPolicyV0'> = async (c, p) => {
  const ok = (x: number | undefined) => x !== undefined && Number.isFinite(x) && x > 0;
  const failing: string[] = [];
  for (const kind of p.kinds) {
    const k = own(c.config.policies.kinds, kind);
    if (!k) {
      failing.push(`${kind}: not in policies.kinds`);
      continue;
    }
    const missing = (['maxContextTokens', 'maxSteps', 'maxUsd'] as const).filter((f) => !ok(k[f]));
    if (missing.length) failing.push(`${kind}: no ${missing.join(', ')}`);
  }
  return {
    value: share(p.kinds.length - failing.length, p.kinds.length),
    failing,
    detail: `${p.kinds.length - failing.length} of ${p.kinds.length} workload kinds have maxContextTokens, maxSteps and maxUsd in policies.kinds (admission rejects intents above them)`,
  };
};

/** Tasks dispatched in the window (their dispatch audit row), with their GPU plan. */
async function dispatches(c: Ctx) {
  const { rows } = await c.q.query<{ task_id: string; tenant: string; gpu_type: string | null; sharing: string | null; count: number | null; nodes: unknown }>(
    `SELECT l.task_id, a.tenant, t.plan->'gpu'->>'type' AS gpu_type, t.plan->'gpu'->>'sharing' AS sharing,
            (t.plan->'gpu'->>'count')::float8 AS count, l.detail->'nodes' AS nodes
       FROM audit_log l JOIN tasks t ON t.task_id = l.task_id JOIN attributions a ON a.id = t.attribution_id
      WHERE l.action = 'dispatch' AND l.at >= $1 AND l.at <= $2 AND ${inScope('a.tenant', 3)}
      ORDER BY l.id`,
    [c.since, c.now, c.tenants],
  );
  return rows
    .filter((r) => r.gpu_type !== null && Number(r.count ?? 0) > 0)
    .map((r) => ({
      ...r,
      gpu_type: r.gpu_type!,
      sharing: r.sharing ?? 'exclusive',
      count: Number(r.count),
      nodes: Array.isArray(r.nodes) ? (r.nodes as string[]) : [],
    }));
}

/** Is `sharing` (exclusive, mps, timeslice, mig:<profile>) in a whitelist of modes ("mig" = any profile)? */
export const sharingAllowed = (modes: readonly string[], sharing: string): boolean =>
  modes.includes(sharing) || (sharing.startsWith('mig:') && modes.includes('mig'));

const isolationPolicy: Check<'isolationPolicy'> = async (c, p) => {
  const ds = await dispatches(c);
  const failing: string[] = [];
  for (const d of ds) {
    const modes = own(own(p.tenants, d.tenant) ?? {}, d.gpu_type) ?? own(p.allowed, d.gpu_type);
    if (!modes) failing.push(`${d.task_id} (${d.tenant}): ${d.gpu_type} is not in the whitelist`);
    else if (!sharingAllowed(modes, d.sharing))
      failing.push(`${d.task_id} (${d.tenant}): ${d.gpu_type} ${d.sharing} not allowed (allowed: ${modes.join(', ')})`);
  }
  return {
    value: share(ds.length - failing.length, ds.length),
    failing,
    detail: `${ds.length - failing.length} of ${ds.length} GPU dispatches in the last ${c.days} days used a whitelisted sharing mode for their GPU type and tenant`,
  };
};

const topologyAcceptance: Check<'topologyAcceptance'> = async (c, p) => {
  const nodes = c.config.cluster.nodes;
  const domainOf = (node: string) => nodes.find((n) => n.name === node)?.nvlinkDomain ?? node;
  // The largest NVLink domain of each GPU type, in GPUs: a gang that fits must sit in one.
  const domainGpus = new Map<string, number>();
  for (const n of nodes)
    domainGpus.set(`${n.gpuType}\u0000${n.nvlinkDomain ?? n.name}`, (domainGpus.get(`${n.gpuType}\u0000${n.nvlinkDomain ?? n.name}`) ?? 0) + n.gpus);
  const largest = (type: string) => Math.max(0, ...[...domainGpus].filter(([k]) => k.startsWith(`${type}\u0000`)).map(([, g]) => g));
  const gangs = (await dispatches(c)).filter((d) => d.count > 1 && d.sharing === 'exclusive');
  const failing: string[] = [];
  let ok = 0;
  for (const g of gangs) {
    const domains = new Set(g.nodes.map(domainOf));
    const size = largest(g.gpu_type);
    const fewest = size > 0 ? Math.ceil(g.count / size) : 1;
    if (domains.size > 0 && domains.size <= fewest) ok++;
    else
      failing.push(
        `${g.task_id}: ${g.count} ${g.gpu_type} over ${domains.size} NVLink domains (${[...domains].join(', ') || 'no nodes recorded'}), ${fewest} would do`,
      );
  }
  const types = Object.entries(p.capacity);
  let usedByType = new Map<string, number>();
  if (types.length > 0) {
    const { rows } = await c.q.query<{ gpu_type: string; gpu_seconds: number }>(
      `SELECT split_part(u.subject, ':', 1) AS gpu_type, SUM(u.quantity) AS gpu_seconds
         FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
        WHERE u.meter = 'gpu_seconds' AND u.occurred_at >= $1 AND u.occurred_at <= $2 AND ${inScope('a.tenant', 3)} GROUP BY 1`,
      [c.since, c.now, c.tenants],
    );
    usedByType = new Map(rows.map((r) => [r.gpu_type, Number(r.gpu_seconds)]));
  }
  const seconds = (c.now.getTime() - c.since.getTime()) / 1000;
  for (const [type, expected] of types) {
    const have = nodes.filter((n) => n.gpuType === type).reduce((s, n) => s + n.gpus, 0);
    const avg = (usedByType.get(type) ?? 0) / seconds;
    const problems: string[] = [];
    if (have < expected) problems.push(`cluster ${c.config.cluster.name} has ${have} GPUs, the plan assumes ${expected}`);
    if (avg > have * (1 - p.headroom)) problems.push(`${avg.toFixed(1)} GPUs busy on average, above ${pct(1 - p.headroom)} of ${have}`);
    if (problems.length) failing.push(`capacity ${type}: ${problems.join('; ')}`);
    else ok++;
  }
  // Capacity alone cannot pass the gate: with no gang in the window there is no placement to judge.
  if (gangs.length === 0) failing.unshift(`no multi-GPU gang dispatched in the last ${c.days} days`);
  return {
    value: gangs.length === 0 ? null : share(ok, gangs.length + types.length),
    failing,
    detail: `${gangs.length} multi-GPU gangs dispatched in the last ${c.days} days, each in the fewest NVLink domains it fits; ${types.length} GPU types' capacity (${types.map(([t, n]) => `${t} ${n}`).join(', ') || 'none assumed'}, headroom ${pct(p.headroom)}) against the configured cluster`,
  };
};

const goldenPaths: Check<'goldenPaths'> = async (c, p) => {
  const failing: string[] = [];
  let names = p.templates;
  if (!names) {
    names = [];
    for (const kind of ['inference', 'training'] as const) {
      const t = pickTemplate(c.config.templates, kind);
      if (t) names.push(t.name);
      else failing.push(`${kind}: no template serves it`);
    }
  }
  names = [...new Set(names)];
  const { rows } = await c.q.query<{ template: string; n: number }>(
    `SELECT t.plan->>'template' AS template, COUNT(*)::int AS n
       FROM tasks t JOIN attributions a ON a.id = t.attribution_id
      WHERE t.state = 'Succeeded' AND t.finished_at >= $1 AND t.finished_at <= $2 AND t.plan->>'template' = ANY($3::text[]) AND ${inScope('a.tenant', 4)}
      GROUP BY 1`,
    [c.since, c.now, names, c.tenants],
  );
  let ok = 0;
  for (const name of names) {
    if (!c.config.templates.some((t) => t.name === name)) failing.push(`${name}: not in config/templates.yaml`);
    else if (!rows.some((r) => r.template === name)) failing.push(`${name}: no task of the template Succeeded in the last ${c.days} days`);
    else ok++;
  }
  const all = names.length + (p.templates ? 0 : 2 - names.length);
  return {
    value: share(ok, all),
    failing,
    detail: `${ok} of ${all} golden-path templates (${names.join(', ')}) ran a task to Succeeded in the last ${c.days} days`,
  };
};

const ladderExecuted: Check<'ladderExecuted'> = async (c, p) => {
  const { rows } = await c.q.query<{ step: string; n: number }>(
    `SELECT e.step, COUNT(*)::int AS n FROM ladder_events e JOIN budgets b ON b.id = e.budget_id
      WHERE e.at >= $1 AND e.at <= $2 AND ${inScope('b.tenant', 3)} GROUP BY 1`,
    [c.since, c.now, c.tenants],
  );
  const counts = new Map(rows.map((r) => [r.step, r.n]));
  if (p.steps.includes('degrade')) {
    const d = await c.q.query<{ n: number }>(
      `SELECT COUNT(*)::int AS n FROM audit_log l JOIN tasks t ON t.task_id = l.task_id JOIN attributions a ON a.id = t.attribution_id
        WHERE l.action = 'step' AND l.decision = 'degrade' AND l.at >= $1 AND l.at <= $2 AND ${inScope('a.tenant', 3)}`,
      [c.since, c.now, c.tenants],
    );
    counts.set('degrade', (counts.get('degrade') ?? 0) + d.rows[0]!.n);
  }
  const failing = p.steps.filter((s) => !counts.get(s)).map((s) => `${s}: no evidence in the last ${c.days} days`);
  return {
    value: share(p.steps.length - failing.length, p.steps.length),
    failing,
    detail: `${p.steps.length - failing.length} of ${p.steps.length} ladder steps fired in the last ${c.days} days (${p.steps.map((s) => `${s} ${counts.get(s) ?? 0}`).join(', ')}; ladder_events, and degraded steps in the audit log)`,
  };
};

const sloLinkage: Check<'sloLinkage'> = async (c, p) => {
  const slos = c.config.policies.slos;
  const pilots = p.pilots.filter((x) => c.tenants === null || c.tenants.includes(x.split('/')[0]!));
  // Steps of the pilots that the budget ladder degraded, with the ladder's step then (gateStep's audit row).
  const { rows: degraded } = await c.q.query<{ pilot: string; step: string; n: number; tasks: string[] }>(
    `SELECT a.tenant || '/' || a.team || '/' || a.use_case AS pilot, l.detail->>'ladderStep' AS step, COUNT(*)::int AS n,
            (array_agg(DISTINCT l.task_id))[1:3] AS tasks
       FROM audit_log l JOIN tasks t ON t.task_id = l.task_id JOIN attributions a ON a.id = t.attribution_id
      WHERE l.action = 'step' AND l.decision = 'degrade' AND l.detail ? 'ladderStep' AND l.at >= $1 AND l.at <= $2
        AND a.tenant || '/' || a.team || '/' || a.use_case = ANY($3::text[])
      GROUP BY 1, 2`,
    [c.since, c.now, pilots],
  );
  let forbidding = 0;
  const failing: string[] = [];
  for (const x of pilots) {
    const [tenant, team, useCase] = x.split('/');
    // The SLO that applies to the use case: its own, else its team's, else its tenant's (as `govloop slo` scopes them).
    const slo = slos.find(
      (s) =>
        s.scope.tenant === tenant && (s.scope.team === undefined || s.scope.team === team) && (s.scope.useCase === undefined || s.scope.useCase === useCase),
    );
    if (!slo) {
      failing.push(`${x}: no SLO in policies.slos`);
      continue;
    }
    if (!slo.forbidsFallback) continue;
    forbidding++;
    // The ladder respects an SLO that forbids the fallback: no degrade before the queue step (decision 0026).
    const early = degraded.filter((d) => d.pilot === x && LadderSteps.includes(d.step as LadderStep) && stepRank(d.step as LadderStep) < stepRank('queue'));
    if (early.length > 0)
      failing.push(
        `${x}: its SLO forbids the fallback model, yet the budget ladder degraded ${early.reduce((n, d) => n + d.n, 0)} steps before the queue step (${early.map((d) => `${d.n} at ${d.step}`).join(', ')}; tasks ${[...new Set(early.flatMap((d) => d.tasks))].join(', ')})`,
      );
  }
  return {
    value: share(pilots.length - failing.length, pilots.length),
    failing,
    detail: `${pilots.length - failing.length} of ${pilots.length} pilot use cases have an SLO in policies.slos that the budget ladder respected in the last ${c.days} days; ${forbidding} forbid the fallback model, which the ladder then degrades no earlier than its queue step (decision 0026)`,
  };
};

const pilotMigration: Check<'pilotMigration'> = async (c, p) => {
  const pilots = p.pilots.filter((x) => c.tenants === null || c.tenants.includes(x.split('/')[0]!));
  const { rows } = await c.q.query<{ pilot: string; governed: number; total: number; gov_events: number; events: number }>(
    `SELECT a.tenant || '/' || a.team || '/' || a.use_case AS pilot,
            COALESCE(SUM(u.cost_micros) FILTER (WHERE t.task_id IS NOT NULL), 0)::float8 AS governed, SUM(u.cost_micros)::float8 AS total,
            (COUNT(*) FILTER (WHERE t.task_id IS NOT NULL))::int AS gov_events, COUNT(*)::int AS events
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id LEFT JOIN tasks t ON t.task_id = u.task_id
      WHERE u.occurred_at >= $1 AND u.occurred_at <= $2 AND a.tenant || '/' || a.team || '/' || a.use_case = ANY($3::text[])
      GROUP BY 1`,
    [c.since, c.now, pilots],
  );
  let governed = 0;
  let total = 0;
  let govEvents = 0;
  let events = 0;
  const failing: string[] = [];
  for (const pilot of pilots) {
    const r = rows.find((x) => x.pilot === pilot);
    if (!r) {
      failing.push(`${pilot}: no usage in the last ${c.days} days`);
      continue;
    }
    governed += Number(r.governed);
    total += Number(r.total);
    govEvents += r.gov_events;
    events += r.events;
    if (r.gov_events < r.events)
      failing.push(`${pilot}: ${usd(Number(r.total) - Number(r.governed))} (${r.events - r.gov_events} events) outside governed tasks`);
  }
  const value = total > 0 ? governed / total : share(govEvents, events);
  return {
    value,
    failing,
    detail: `${total > 0 ? `${usd(governed)} of ${usd(total)}` : `${govEvents} of ${events} events`} of the pilots' usage in the last ${c.days} days came through governed tasks (the rest through the usage API)`,
  };
};

const teamContract: Check<'teamContract'> = async (c, p) => {
  const teams = [...new Set((await teamsWithUsage(c, "AND a.team <> ''")).map((u) => `${u.tenant}/${u.team}`))];
  const { rows: grants } = await c.q.query<{ tenant: string; user_name: string; role: string }>(
    'SELECT tenant, user_name, role FROM access_grants WHERE tenant = ANY($1::text[])',
    [[...new Set(teams.map((t) => t.split('/')[0]!))]],
  );
  const admins = new Set(c.config.auth.platformAdmins);
  const failing: string[] = [];
  for (const team of teams) {
    const tenant = team.split('/')[0]!;
    const owners = own(p.owners, team);
    if (!owners) {
      failing.push(`${team}: no owners named for budget, SLO and on-call`);
      continue;
    }
    const problems = (['budget', 'slo', 'oncall'] as const)
      .filter((duty) => !admins.has(owners[duty]) && !grants.some((g) => g.tenant === tenant && g.user_name === owners[duty] && g.role === p.roles[duty]))
      .map((duty) => `${duty} owner ${owners[duty]} does not hold ${p.roles[duty]} in ${tenant}`);
    if (problems.length) failing.push(`${team}: ${problems.join('; ')}`);
  }
  return {
    value: share(teams.length - failing.length, teams.length),
    failing,
    detail: `${teams.length - failing.length} of ${teams.length} teams with usage in the last ${c.days} days have budget, SLO and on-call owners, each holding ${p.roles.budget} / ${p.roles.slo} / ${p.roles.oncall} in the tenant`,
  };
};

/** The runbook page of a GovState (the memo field `runbook` points there). */
export const runbookFile = (state: string) => `${state.toLowerCase()}.md`;
export const LADDER_RUNBOOK = 'budget-ladder.md';

const runbookV1: Check<'runbookV1'> = async (c, p) => {
  const dir = c.runbookDir;
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.md')) : [];
  const readme = files.includes('README.md') ? readFileSync(join(dir, 'README.md'), 'utf8') : '';
  const headings = files.flatMap((f) =>
    readFileSync(join(dir, f), 'utf8')
      .split('\n')
      .filter((l) => /^#{1,6}\s/.test(l))
      .map((l) => l.replace(/^#+\s*/, '').toLowerCase()),
  );
  const failing: string[] = [];
  const pages = [...Object.values(GovState).map((s) => ({ what: `GovState ${s}`, file: runbookFile(s) })), { what: 'the budget ladder', file: LADDER_RUNBOOK }];
  for (const pg of pages) {
    if (!files.includes(pg.file)) failing.push(`${pg.what}: runbooks/${pg.file} is missing`);
    else if (!readme.includes(`(${pg.file})`)) failing.push(`${pg.what}: runbooks/README.md does not link ${pg.file}`);
  }
  for (const s of p.sections)
    if (!headings.some((h) => h.includes(s.heading.toLowerCase()))) failing.push(`section ${s.name}: no heading with "${s.heading}" in runbooks/`);
  const all = pages.length + p.sections.length;
  return {
    value: share(all - failing.length, all),
    failing,
    detail: `${all - failing.length} of ${all} Runbook v1 parts present: a linked page for each of ${pages.length - 1} GovStates and the ladder, and the ${p.sections.map((s) => s.name).join(', ')} sections`,
  };
};

const onboarding: Check<'onboarding'> = async (c, p) => {
  const { rows } = await c.q.query<{ id: number; use_case: string | null; seconds: number | null; state: string | null }>(
    `SELECT l.id, l.detail->>'useCase' AS use_case, (l.detail->>'seconds')::float8 AS seconds, l.detail->>'state' AS state
       FROM audit_log l LEFT JOIN tasks t ON t.task_id = COALESCE(l.task_id, l.detail->>'taskId') LEFT JOIN attributions a ON a.id = t.attribution_id
      WHERE l.action = 'program.onboard' AND l.at >= $1 AND l.at <= $2
        AND ${inScope(`COALESCE(a.tenant, split_part(l.detail->>'useCase', '/', 1))`, 3)}
      ORDER BY l.id`,
    [c.since, c.now, c.tenants],
  );
  const limit = p.maxMinutes * 60;
  const failing: string[] = [];
  for (const r of rows) {
    const name = r.use_case ?? `audit row ${r.id}`;
    if (r.state !== 'Succeeded') failing.push(`${name}: ended ${r.state ?? 'without a state'}`);
    else if (r.seconds === null || !Number.isFinite(Number(r.seconds))) failing.push(`${name}: no time recorded`);
    else if (Number(r.seconds) > limit) failing.push(`${name}: ${Math.round(Number(r.seconds))} s, over ${limit} s`);
  }
  const times = rows.filter((r) => r.state === 'Succeeded' && r.seconds !== null).map((r) => Number(r.seconds));
  return {
    value: share(rows.length - failing.length, rows.length),
    failing,
    detail: `${rows.length - failing.length} of ${rows.length} onboardings in the last ${c.days} days reached Succeeded within ${p.maxMinutes} minutes${times.length ? ` (slowest ${Math.round(Math.max(...times))} s)` : ''}`,
  };
};

const checks: { [C in GateCheck]: Check<C> } = {
  attributionCoverage,
  budgetCoverage,
  quotaCoverage,
  admissionPolicyV0,
  isolationPolicy,
  topologyAcceptance,
  goldenPaths,
  ladderExecuted,
  sloLinkage,
  pilotMigration,
  teamContract,
  runbookV1,
  onboarding,
};
