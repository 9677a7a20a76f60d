import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type GovConfig, loadProgramPlan } from '../config/load';
import { own } from '../governance/own';
import { priceVersionAt } from '../governance/pricing';
import type { ProgramDeliverable, ProgramPlan } from '../governance/program';
import { parseGateParams } from '../governance/program-params';
import { GovState } from '../workflows/messages';
import type { Db } from './db';
import { LADDER_RUNBOOK, RUNBOOK_DIR, runbookFile, sharingAllowed } from './program-gates';
import { type Capacity, type ShowbackReport, rollUp, showback } from './rollups';

/**
 * The migration program's deliverables as artifacts (issue 12, decision 0025): each is produced
 * from live data and config, never written by hand. The same data gives the same bytes, so the
 * same sha256; the workflow hashes that into the audit chain. `sources` names what it was made of.
 */
export interface Deliverable {
  id: string;
  kind: ProgramDeliverable['kind'];
  /** `v` + the first 12 hex digits of sha256: a new version exactly when the content changes. */
  version: string;
  sha256: string;
  format: 'markdown' | 'json';
  content: string;
  /** The data behind it: config files, tables with their ranges, runbook files with their hashes. */
  sources: string[];
}

export interface DeliverableOptions {
  /** Only these tenants' data (tests, a per-tenant view); the workflow passes none. */
  tenants?: string[];
  /** The plan whose isolationPolicy gate holds the whitelist (default: loadProgramPlan()). */
  plan?: ProgramPlan;
  runbookDir?: string;
  /** Days of data a dashboard or a record covers (default 7). */
  windowDays?: number;
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;
const usd = (n: number) => `$${n.toFixed(2)}`;
const cell = (v: unknown) => String(v ?? '—').replace(/\|/g, '\\|');
const mdTable = (head: string[], rows: unknown[][]) =>
  [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`)].join('\n');

export async function produceDeliverable(db: Db, config: GovConfig, d: ProgramDeliverable, now: Date, opts: DeliverableOptions = {}): Promise<Deliverable> {
  const days = opts.windowDays ?? 7;
  const made = await producers[d.kind]({ db, config, d, now, opts, days });
  const sha256 = sha(made.content);
  return { id: d.id, kind: d.kind, version: `v${sha256.slice(0, 12)}`, sha256, ...made };
}

interface Ctx {
  db: Db;
  config: GovConfig;
  d: ProgramDeliverable;
  now: Date;
  opts: DeliverableOptions;
  days: number;
}
type Made = Pick<Deliverable, 'format' | 'content' | 'sources'>;

function capacityOf(config: GovConfig, now: Date): Capacity {
  const prices = priceVersionAt(config.priceBook, now.toISOString());
  const gpus = new Map<string, number>();
  for (const n of config.cluster.nodes) gpus.set(n.gpuType, (gpus.get(n.gpuType) ?? 0) + n.gpus);
  return { gpuTypes: [...gpus].map(([gpuType, n]) => ({ gpuType, gpus: n, usdPerGpuHour: own(prices.gpuHourUsd, gpuType)?.exclusive ?? 0 })) };
}

/** The weekly cost and usage dashboard: showback by tenant and team over the last `days` whole hours. */
async function dashboard(c: Ctx): Promise<Made> {
  // Bring the rollups up to date first, as `govloop report` does (idempotent; the schedule does the same).
  await rollUp(c.db, { lateArrivalSeconds: c.config.policies.metering.lateArrivalSeconds });
  const to = new Date(Math.floor(c.now.getTime() / 3_600_000) * 3_600_000 + 3_600_000);
  const from = new Date(to.getTime() - c.days * 86_400_000);
  const base = { by: ['tenant', 'team'] as ('tenant' | 'team')[], from, to, now: c.now, priceBook: c.config.priceBook };
  const reports: ShowbackReport[] = c.opts.tenants
    ? await Promise.all([...c.opts.tenants].sort().map((tenant) => showback(c.db, { ...base, tenant })))
    : [await showback(c.db, { ...base, capacity: capacityOf(c.config, c.now) })];
  const parts = [`# ${c.d.name}`, '', `Period ${from.toISOString()} – ${to.toISOString()} (${c.days} days, from the hourly usage rollups).`];
  for (const r of reports) {
    const u = r.unitCosts;
    parts.push(
      '',
      `## ${r.tenant === null ? 'All tenants' : `Tenant ${r.tenant}`}: ${usd(r.totalCostUsd)}`,
      '',
      mdTable(
        ['tenant', 'team', 'tasks', 'GPU-hours', 'tokens', 'events', 'cost'],
        r.rows.map((x) => [x.tenant, x.team, x.tasks ?? '—', x.gpuHours.toFixed(3), x.tokens, x.events, usd(x.costUsd)]),
      ),
      '',
      mdTable(
        ['per 1M tokens', 'per GPU-hour', 'per agent task', 'per training job', 'unattributed', 'idle GPU-hours', 'idle cost'],
        [
          [
            u.per1MTokensUsd === null ? '—' : usd(u.per1MTokensUsd),
            u.perGpuHourUsd === null ? '—' : usd(u.perGpuHourUsd),
            u.perAgentTaskUsd === null ? '—' : usd(u.perAgentTaskUsd),
            u.perTrainingJobUsd === null ? '—' : usd(u.perTrainingJobUsd),
            `${usd(r.unattributed.costUsd)} (${r.unattributed.events} events)`,
            r.idle ? r.idle.gpuHours.toFixed(1) : '—',
            r.idle ? usd(r.idle.costUsd) : '—',
          ],
        ],
      ),
    );
    if (r.overages.length)
      parts.push(
        '',
        'Overage (charged to no budget):',
        '',
        mdTable(
          ['tenant', 'team', 'project', 'tasks', 'cost'],
          r.overages.map((o) => [o.tenant, o.team, o.project, o.tasks, usd(o.costUsd)]),
        ),
      );
    if (r.preemptionLosses.length)
      parts.push(
        '',
        'Work lost to preemption (charged to the preemptor):',
        '',
        mdTable(
          ['tenant', 'team', 'preemptions', 'GPU-hours', 'cost'],
          r.preemptionLosses.map((l) => [l.tenant, l.team, l.preemptions, l.gpuHours.toFixed(3), usd(l.costUsd)]),
        ),
      );
  }
  const scope = c.opts.tenants ? ` tenants ${[...c.opts.tenants].sort().join(',')}` : '';
  return {
    format: 'markdown',
    content: `${parts.join('\n')}\n`,
    sources: [
      `usage_rollups hour ${from.toISOString()}..${to.toISOString()}${scope}`,
      'tasks',
      'preemptions',
      'overages',
      'config/cluster.yaml',
      'config/pricebook.yaml',
    ],
  };
}

/** Admission Policy v0: max context, max steps, max budget (and the other ceilings) per workload kind. */
async function admissionPolicy(c: Ctx): Promise<Made> {
  const p = c.config.policies;
  const kinds = Object.fromEntries(
    Object.keys(p.kinds)
      .sort()
      .map((k) => [k, own(p.kinds, k)]),
  );
  return {
    format: 'json',
    content: json({ name: 'Admission Policy v0', policy: p.name, requireBudget: p.requireBudget, kinds, priorities: p.priorities, usageLimits: p.usageLimits }),
    sources: ['config/policies.yaml#kinds', 'config/policies.yaml#requireBudget', 'config/policies.yaml#usageLimits'],
  };
}

/** The golden-path templates, with the tasks that ran each to Succeeded in the window (the evidence). */
async function templates(c: Ctx): Promise<Made> {
  const since = new Date(c.now.getTime() - c.days * 86_400_000);
  const { rows } = await c.db.query<{ template: string; n: number; last: string }>(
    `SELECT t.plan->>'template' AS template, COUNT(*)::int AS n, (array_agg(t.task_id ORDER BY t.finished_at DESC, t.task_id))[1] AS last
       FROM tasks t JOIN attributions a ON a.id = t.attribution_id
      WHERE t.state = 'Succeeded' AND t.finished_at >= $1 AND t.finished_at <= $2 AND ($3::text[] IS NULL OR a.tenant = ANY($3::text[]))
      GROUP BY 1`,
    [since, c.now, c.opts.tenants ?? null],
  );
  const list = c.config.templates.map((t) => {
    const r = rows.find((x) => x.template === t.name);
    return { ...t, succeeded: { since: since.toISOString(), tasks: r?.n ?? 0, lastTaskId: r?.last ?? null } };
  });
  return {
    format: 'json',
    content: json({ name: c.d.name, templates: list }),
    sources: ['config/templates.yaml', `tasks Succeeded ${since.toISOString()}..${c.now.toISOString()}`],
  };
}

/** The scheduling and isolation policy: the plan's whitelist, where the cluster offers each mode, and conformance. */
async function isolationPolicy(c: Ctx): Promise<Made> {
  const plan = c.opts.plan ?? loadProgramPlan();
  const gate = plan.phases.flatMap((p) => p.gates).find((g) => g.check === 'isolationPolicy');
  if (!gate) throw new Error(`plan ${plan.name} v${plan.version} has no isolationPolicy gate: no whitelist to export`);
  const params = parseGateParams('isolationPolicy', gate.params);
  if (!params.success) throw new Error(`the isolationPolicy gate ${gate.id} has invalid params: ${params.error.message}`);
  const { allowed, tenants } = params.data;
  const offered: Record<string, Record<string, string[]>> = {};
  for (const n of c.config.cluster.nodes) {
    const modes = ['exclusive', ...(['mig', 'mps', 'timeslice'] as const).filter((m) => n.sharing[m])];
    const t = (offered[n.gpuType] ??= {});
    for (const m of modes) (t[m] ??= []).push(n.name);
  }
  const since = new Date(c.now.getTime() - c.days * 86_400_000);
  const { rows } = await c.db.query<{ tenant: string; gpu_type: string; sharing: string; n: number }>(
    `SELECT a.tenant, t.plan->'gpu'->>'type' AS gpu_type, COALESCE(t.plan->'gpu'->>'sharing', 'exclusive') AS sharing, COUNT(*)::int AS n
       FROM audit_log l JOIN tasks t ON t.task_id = l.task_id JOIN attributions a ON a.id = t.attribution_id
      WHERE l.action = 'dispatch' AND l.at >= $1 AND l.at <= $2 AND t.plan->'gpu'->>'type' IS NOT NULL AND ($3::text[] IS NULL OR a.tenant = ANY($3::text[]))
      GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
    [since, c.now, c.opts.tenants ?? null],
  );
  const dispatches = rows.map((r) => {
    const modes = own(own(tenants, r.tenant) ?? {}, r.gpu_type) ?? own(allowed, r.gpu_type) ?? [];
    return { tenant: r.tenant, gpuType: r.gpu_type, sharing: r.sharing, dispatches: r.n, conforms: sharingAllowed(modes, r.sharing) };
  });
  const sortedOffered = Object.fromEntries(
    Object.keys(offered)
      .sort()
      .map((t) => [t, Object.fromEntries(Object.entries(offered[t]!).map(([m, ns]) => [m, ns.length]))]),
  );
  return {
    format: 'json',
    content: json({
      name: c.d.name,
      plan: { name: plan.name, version: plan.version, gate: gate.id },
      whitelist: { allowed, tenants },
      clusterOffers: { cluster: c.config.cluster.name, nodesPerMode: sortedOffered },
      dispatches: { since: since.toISOString(), until: c.now.toISOString(), byTenantTypeMode: dispatches },
    }),
    sources: [`config/program.yaml#${gate.id}.params`, 'config/cluster.yaml#nodes', `audit_log dispatch ${since.toISOString()}..${c.now.toISOString()}`],
  };
}

/** AI Platform Runbook v1: an index of GovStates and the ladder, then every runbooks/*.md page. */
async function runbook(c: Ctx): Promise<Made> {
  const dir = c.opts.runbookDir ?? RUNBOOK_DIR;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.md'))
    .sort((a, b) => (a === 'README.md' ? -1 : b === 'README.md' ? 1 : a.localeCompare(b)));
  const l = c.config.policies.ladder;
  const texts = files.map((f) => ({ f, text: readFileSync(join(dir, f), 'utf8') }));
  const parts = [
    '# AI Platform Runbook v1',
    '',
    'Generated from runbooks/ (on-call, changes, cost auditing). Every GovState and the budget ladder has its page.',
    '',
    '## Index: GovState → page',
    '',
    mdTable(
      ['GovState', 'page'],
      Object.values(GovState).map((s) => [s, files.includes(runbookFile(s)) ? `runbooks/${runbookFile(s)}` : 'MISSING']),
    ),
    '',
    '## The budget ladder',
    '',
    `notify at ${l.notifyAt}%, throttle (and degrade${l.degradeAt !== undefined ? ` at ${l.degradeAt}%` : ''}) at ${l.throttleAt}%, queue at ${l.queueAt}%, preempt at ${l.preemptAt}% of a budget: runbooks/${LADDER_RUNBOOK}.`,
    ...texts.flatMap(({ f, text }) => ['', '---', '', `<!-- runbooks/${f} sha256 ${sha(text)} -->`, '', text.trimEnd()]),
  ];
  return {
    format: 'markdown',
    content: `${parts.join('\n')}\n`,
    sources: [...texts.map(({ f, text }) => `runbooks/${f} sha256:${sha(text)}`), 'config/policies.yaml#ladder'],
  };
}

/** The onboarding record: every `govloop onboard` run in the window, from its audit row. */
async function onboardingRecord(c: Ctx): Promise<Made> {
  const since = new Date(c.now.getTime() - c.days * 86_400_000);
  const { rows } = await c.db.query<{ id: number; at: Date; actor: string; detail: Record<string, unknown>; hash: string }>(
    `SELECT l.id, l.at, l.actor, l.detail, l.hash
       FROM audit_log l LEFT JOIN tasks t ON t.task_id = COALESCE(l.task_id, l.detail->>'taskId') LEFT JOIN attributions a ON a.id = t.attribution_id
      WHERE l.action = 'program.onboard' AND l.at >= $1 AND l.at <= $2
        AND ($3::text[] IS NULL OR COALESCE(a.tenant, split_part(l.detail->>'useCase', '/', 1)) = ANY($3::text[]))
      ORDER BY l.id`,
    [since, c.now, c.opts.tenants ?? null],
  );
  const records = rows.map((r) => ({
    auditId: Number(r.id),
    at: r.at.toISOString(),
    by: r.actor,
    useCase: r.detail.useCase ?? null,
    seconds: r.detail.seconds ?? null,
    taskId: r.detail.taskId ?? null,
    state: r.detail.state ?? null,
    auditHash: r.hash,
  }));
  return {
    format: 'json',
    content: json({ name: c.d.name, since: since.toISOString(), until: c.now.toISOString(), onboardings: records }),
    sources: rows.length ? rows.map((r) => `audit_log#${r.id}`) : [`audit_log program.onboard ${since.toISOString()}..${c.now.toISOString()} (none)`],
  };
}

const producers: Record<ProgramDeliverable['kind'], (c: Ctx) => Promise<Made>> = {
  dashboard,
  'admission-policy': admissionPolicy,
  templates,
  'isolation-policy': isolationPolicy,
  runbook,
  'onboarding-record': onboardingRecord,
};
