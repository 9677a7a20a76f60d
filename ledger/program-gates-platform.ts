/** Gate checks on the platform: attribution, budget and quota coverage, admission policy, isolation, topology (ledger/program-gates.ts). */
import { own } from '../governance/own';
import { type Ctx, type Check, pct, usd, share, inScope, shown, unset, teamsWithUsage } from './program-gates-context';

export const attributionCoverage: Check<'attributionCoverage'> = async (c, p) => {
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

export const budgetCoverage: Check<'budgetCoverage'> = async (c) => {
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

export const quotaCoverage: Check<'quotaCoverage'> = async (c) => {
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

export const admissionPolicyV0: Check<'admissionPolicyV0'> = async (c, p) => {
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

export const isolationPolicy: Check<'isolationPolicy'> = async (c, p) => {
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

export const topologyAcceptance: Check<'topologyAcceptance'> = async (c, p) => {
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
