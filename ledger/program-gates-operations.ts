/** Gate checks on operations: golden paths, the ladder, SLO linkage, pilot migration, team contracts, runbooks, onboarding (ledger/program-gates.ts). */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type LadderStep, LadderSteps, stepRank } from '../governance/ladder';
import { own } from '../governance/own';
import { pickTemplate } from '../governance/plan';
import { GovState } from '../workflows/messages';
import { type Check, usd, share, inScope, teamsWithUsage } from './program-gates-context';

export const goldenPaths: Check<'goldenPaths'> = async (c, p) => {
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

export const ladderExecuted: Check<'ladderExecuted'> = async (c, p) => {
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

export const sloLinkage: Check<'sloLinkage'> = async (c, p) => {
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

export const pilotMigration: Check<'pilotMigration'> = async (c, p) => {
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

export const teamContract: Check<'teamContract'> = async (c, p) => {
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

export const runbookV1: Check<'runbookV1'> = async (c, p) => {
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

export const onboarding: Check<'onboarding'> = async (c, p) => {
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
