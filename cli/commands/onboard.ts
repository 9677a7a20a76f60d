import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { z } from 'zod';
import type { GovConfig } from '../../config/load';
import { scopeLabel, scopeOf } from '../../governance/budget-scope';
import { gpuQuotaFor } from '../../governance/flat-quota';
import { type Principal, actorName } from '../../governance/authz';
import { Attribution, type IntentInput, parseIntentText } from '../../governance/intent';
import { pickTemplate } from '../../governance/plan';
import { memberOf } from '../../governance/quota';
import { appendAudit } from '../../ledger/audit';
import { requestBudgetChange, showBudgets } from '../../ledger/budgets';
import { listKeys } from '../../ledger/keys';
import { cohortOf } from '../../ledger/quota';
import { dataDir as dataDirOf } from '../../runtime/environment';
import { type TaskOutcome, outcomeOf } from '../../sdk';
import { NameText } from '../../workflows/schemas';
import { type CommandContext, refused, withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table, usd } from '../util';
import { changeAccess } from './agents';
import { nudgeController } from './ledger';
import { issueKey } from './serve';
import { settings } from '../../config/settings';

/**
 * `govloop onboard` (issue 12): a new use case from nothing to its first Succeeded task through the
 * real loop — roles, a team budget, the GPU quota it will run under, an API key, a starter intent
 * from the golden-path template, the first task — timed per step and recorded as a
 * `program.onboard` audit row, which the program's `onboarding` gate reads (decision 0025).
 */

const required = <T extends z.ZodType<string, string>>(schema: T) => z.string({ error: 'required' }).pipe(schema);
const Options = z.strictObject({
  tenant: required(Attribution.shape.tenant),
  team: required(Attribution.shape.team),
  useCase: required(Attribution.shape.useCase),
  project: Attribution.shape.project.optional(),
  kind: z.enum(['inference', 'training'], { error: 'inference | training' }),
  budgetUsd: z
    .string({ error: 'required' })
    .regex(/^\d+(\.\d+)?$/, 'must be a number of US dollars, e.g. 500')
    .transform(Number)
    .pipe(z.number().positive('must be more than 0').max(1e12)),
  owner: NameText.optional(),
  out: z.string().min(1).max(4096).optional(),
  as: NameText.optional(),
  timeoutSeconds: z.coerce.number({ error: 'must be a number' }).int().positive().max(86_400).default(1800),
  json: z.boolean().default(false),
});
type Options = z.infer<typeof Options>;
/** The checked options of one onboarding. */
export type OnboardOptions = Options;

/** What the starter intent of each kind asks for: small caps and a short simulated run, on the cluster's first GPU type. */
export const STARTERS = {
  inference: { gpus: 1, model: 'llama-3-8b', caps: { maxUsd: 5, maxGpuHours: 1 }, simulation: { durationSeconds: 300, tokensPerSecond: 50 } },
  training: { gpus: 2, model: 'llama-3-8b', caps: { maxUsd: 20, maxGpuHours: 4 }, simulation: { durationSeconds: 600, tokensPerSecond: 500 } },
} as const;

/** The starter intent of a use case: the golden path's kind, its attribution, small caps and a short simulation. */
export function starterIntent(config: GovConfig, o: Pick<Options, 'tenant' | 'team' | 'useCase' | 'project' | 'kind'>): IntentInput {
  const s = STARTERS[o.kind];
  const gpuType = Object.keys(config.cluster.gpuTypes)[0];
  if (gpuType === undefined) throw new CliExit(Exit.Failure, 'template: the configured cluster has no GPU types (config/cluster.yaml gpuTypes)');
  return {
    kind: o.kind,
    name: o.useCase,
    attribution: { tenant: o.tenant, team: o.team, project: o.project ?? o.useCase, model: s.model, useCase: o.useCase },
    caps: { ...s.caps },
    priority: 'normal',
    riskClass: 'low',
    resources: { gpus: s.gpus, gpuType, sharing: 'exclusive' },
    simulation: { ...s.simulation },
  };
}

interface StepResult {
  name: string;
  seconds: number;
  note: string;
  ok: boolean;
}

const STEPS = ['roles', 'budget', 'quota', 'keys', 'template', 'first task', 'record'] as const;
const secs = (ms: number) => Math.round(ms) / 1000;

/** What one onboarding did: the first task's outcome, the time it took, each step. */
export interface OnboardResult {
  useCase: string;
  owner: string;
  kind: Options['kind'];
  outcome: TaskOutcome;
  seconds: number;
  timedOut: boolean;
  budget: { limitUsd: number; created: boolean };
  quota: { gpuType: string; gpus: number | null; source: string };
  key: { key: string; prefix: string };
  intentFile: string;
  template: string;
  steps: StepResult[];
}

/**
 * Onboards one use case (the steps of `govloop onboard`), saying each step's line to `say`, and
 * records the `program.onboard` audit row. The demo calls it for its two landing paths.
 */
export async function runOnboard(ctx: CommandContext, o: OnboardOptions, say: (line: string) => void): Promise<OnboardResult> {
  const started = performance.now();
  const steps: StepResult[] = [];
  const step = async <T>(name: (typeof STEPS)[number], fn: () => Promise<{ value: T; note: string }>): Promise<T> => {
    const t0 = performance.now();
    const n = STEPS.indexOf(name) + 1;
    try {
      const { value, note } = await fn();
      const seconds = secs(performance.now() - t0);
      steps.push({ name, seconds, note, ok: true });
      say(`[${n}/${STEPS.length}] ${name}: ${note} (${seconds.toFixed(2)} s)`);
      return value;
    } catch (err) {
      const seconds = secs(performance.now() - t0);
      const message = (err as Error).message;
      steps.push({ name, seconds, note: message, ok: false });
      say(`[${n}/${STEPS.length}] ${name}: FAILED (${seconds.toFixed(2)} s)`);
      const code = err instanceof CliExit ? err.code : Exit.Failure;
      const json = err instanceof CliExit && typeof err.json === 'object' ? (err.json as object) : {};
      throw new CliExit(code, `onboard failed at step ${n} (${name}), see runbooks/onboarding.md: ${message}`, {
        ...json,
        step: name,
        steps: steps.map(({ name: s, seconds: t, ok }) => ({ name: s, seconds: t, ok })),
      });
    }
  };

  const config = ctx.config();
  const db = await ctx.db();
  const p: Principal = await ctx.principal(o.as ?? (ctx.credential ? undefined : settings().USER), 'onboard');
  const owner = o.owner ?? p.subject;
  const by = actorName(p);
  const useCase = `${o.tenant}/${o.team}/${o.useCase}`;
  const starter = starterIntent(config, o);
  say(`onboarding ${useCase} (${o.kind}) for ${owner}, by ${by}`);

  await step('roles', async () => {
    const granted: string[] = [];
    const held: string[] = [];
    for (const role of ['requester', 'budget-owner']) {
      if (await changeAccess(ctx, p, 'grant', { tenant: o.tenant, user: owner, role, by })) granted.push(role);
      else held.push(role);
    }
    const parts = [granted.length ? `granted ${granted.join(', ')} to ${owner} in ${o.tenant}` : '', held.length ? `${held.join(', ')} held already` : ''];
    return { value: undefined, note: parts.filter(Boolean).join('; ') };
  });

  const budget = await step('budget', async () => {
    const scope = scopeOf({ tenant: o.tenant, team: o.team });
    const label = `${scopeLabel(scope)} month`;
    const existing = (await showBudgets(db, { ...scope, period: 'month' }, new Date()))[0];
    if (existing)
      return {
        value: { limitUsd: existing.limitUsd, created: false },
        note: `team budget ${label} exists already: ${usd(existing.limitUsd)} (left as is; change it with govloop budget set)`,
      };
    const r = await requestBudgetChange(
      db,
      scope,
      'month',
      o.budgetUsd,
      { principal: p, lowerSecondPersonAbove: config.auth.budgetLowerSecondPersonAbove },
      `onboard ${useCase}`,
    );
    if (!r.applied && 'refused' in r) throw refused(r.refused, p);
    if (!r.applied)
      return {
        value: { limitUsd: r.fromUsd, created: false },
        note: `team budget ${label} appeared meanwhile at ${usd(r.fromUsd)}; the change to ${usd(r.toUsd)} waits as raise ${r.raiseId}`,
      };
    await nudgeController(ctx, { ...scope, period: 'month' });
    return { value: { limitUsd: o.budgetUsd, created: true }, note: `team budget ${label}: ${usd(o.budgetUsd)} set` };
  });

  const quota = await step('quota', async () => {
    const gpuType = starter.resources!.gpuType!;
    const asked = starter.resources!.gpus;
    const cohort = cohortOf(config.policies, o, gpuType);
    const member = memberOf(cohort, o);
    let gpus: number;
    let source: string;
    if (cohort && member) {
      gpus = member.borrowingLimit === null ? Number.POSITIVE_INFINITY : member.nominal + member.borrowingLimit;
      source = `cohort ${cohort.name}: nominal ${member.nominal}, borrowing ${member.borrowingLimit ?? 'unlimited'}`;
    } else {
      const q = gpuQuotaFor(config.policies, o, gpuType);
      gpus = q.quota;
      source = q.policy;
    }
    if (gpus < asked)
      throw new CliExit(
        Exit.Rejected,
        `team ${o.tenant}/${o.team} may hold ${gpus} ${gpuType} GPUs (${source}); the ${o.kind} starter needs ${asked}: add a gpuQuotas row for it in config/policies.yaml`,
        { code: 'NO_GPU_QUOTA', gpuType, quota: gpus, asked },
      );
    const shown = Number.isFinite(gpus) ? String(gpus) : 'unlimited';
    return { value: { gpuType, gpus: Number.isFinite(gpus) ? gpus : null, source }, note: `${shown} ${gpuType} GPUs for ${o.tenant}/${o.team} (${source})` };
  });

  const key = await step('keys', async () => {
    const k = await issueKey(ctx, p, o.tenant, owner);
    const live = (await listKeys(db, o.tenant)).filter((x) => x.subject === owner && x.revokedAt === null).length;
    const older = live > 1 ? `; ${live} live keys for ${owner} now, revoke old ones with govloop keys revoke --tenant ${o.tenant} --prefix PREFIX` : '';
    return { value: k, note: `API key ${k.prefix}… issued to ${owner} for ${o.tenant}, shown once${older}` };
  });
  if (!o.json) say(`      API key (shown once, keep it now): ${key.key}`);

  const intentFile = await step('template', async () => {
    const template = pickTemplate(config.templates, o.kind);
    if (!template) throw new CliExit(Exit.Rejected, `no golden-path template runs ${o.kind} (config/templates.yaml)`, { code: 'NO_TEMPLATE' });
    const file = join(resolve(o.out ?? dataDirOf(ctx.dataDir)), o.tenant, o.team, `${o.useCase}.yaml`);
    if (existsSync(file)) {
      const parsed = parseIntentText(readFileSync(file, 'utf8'));
      if (!parsed.ok)
        throw new CliExit(Exit.BadInput, `${file} exists and is not a valid intent:\n${parsed.errors.map((e) => `  ${e.path}: ${e.message}`).join('\n')}`, {
          errors: parsed.errors,
        });
      const a = parsed.value.attribution;
      if (parsed.value.kind !== o.kind || a.tenant !== o.tenant || a.team !== o.team || a.useCase !== o.useCase)
        throw new CliExit(
          Exit.BadInput,
          `${file} exists for ${parsed.value.kind} ${a.tenant}/${a.team}/${a.useCase}, not ${o.kind} ${useCase}: move it away or pass another --out`,
        );
      return {
        value: { file, intent: parsed.value as IntentInput, template: template.name },
        note: `${file} exists already, kept (template ${template.name})`,
      };
    }
    const header = [
      `# The starting point of ${useCase}: a ${o.kind} task on the golden path "${template.name}" (${template.runtime.image}).`,
      `# Written by govloop onboard. Edit the caps, resources and model; drop "simulation" on a real cluster.`,
      `# Run it: govloop submit ${file} --wait`,
    ];
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${header.join('\n')}\n${stringify(starter)}`);
    return { value: { file, intent: starter, template: template.name }, note: `${file} written (template ${template.name})` };
  });

  let timedOut = false;
  const outcome = await step('first task', async () => {
    const gov = (await ctx.gov()).withCredential(key.key);
    const admission = await gov.submit(intentFile.intent);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), o.timeoutSeconds * 1000)));
    const ended = await Promise.race([gov.result(admission.taskId), timeout]).finally(() => clearTimeout(timer));
    let out: TaskOutcome;
    if (ended === 'timeout') {
      timedOut = true;
      out = outcomeOf(await gov.status(admission.taskId));
    } else out = outcomeOf(ended);
    const note = `${out.taskId}: ${out.decision} → ${out.state}${out.costUsd !== null ? `, cost ${usd(out.costUsd)}` : ''}${timedOut ? `, not ended after ${o.timeoutSeconds} s` : ''}`;
    return { value: out, note };
  });
  const seconds = secs(performance.now() - started);

  await step('record', async () => {
    await appendAudit(db, {
      actor: by,
      taskId: outcome.taskId,
      action: 'program.onboard',
      decision: outcome.state,
      detail: {
        useCase,
        seconds,
        taskId: outcome.taskId,
        state: outcome.state,
        kind: o.kind,
        owner,
        template: intentFile.template,
        intentFile: intentFile.file,
        keyPrefix: key.prefix,
        ...(timedOut ? { timedOut: true } : {}),
        steps: steps.map((s) => ({ name: s.name, seconds: s.seconds })),
      },
    });
    return { value: undefined, note: `program.onboard: ${useCase} ${outcome.state} in ${seconds.toFixed(2)} s` };
  });

  return {
    useCase,
    owner,
    kind: o.kind,
    outcome,
    seconds,
    timedOut,
    budget,
    quota,
    key: { key: key.key, prefix: key.prefix },
    intentFile: intentFile.file,
    template: intentFile.template,
    steps,
  };
}

async function onboard(ctx: CommandContext, o: Options): Promise<void> {
  const say = (line: string) => (o.json ? console.error(line) : console.log(line));
  const r = await runOnboard(ctx, o, say);
  const { useCase, owner, outcome, seconds, timedOut, budget, quota, steps } = r;
  const ok = outcome.state === 'Succeeded';
  if (o.json) {
    printJson({
      useCase,
      owner,
      kind: o.kind,
      taskId: outcome.taskId,
      decision: outcome.decision,
      state: outcome.state,
      reasons: outcome.reasons,
      costUsd: outcome.costUsd,
      seconds,
      ...(timedOut ? { timedOut: true } : {}),
      budget,
      quota,
      apiKey: r.key.key,
      keyPrefix: r.key.prefix,
      intentFile: r.intentFile,
      template: r.template,
      steps: steps.map(({ name, seconds: s, note }) => ({ name, seconds: s, note })),
    });
  } else {
    console.log(table(['step', 'seconds'], [...steps.map((s) => [s.name, s.seconds.toFixed(2)]), ['total (1-6)', seconds.toFixed(2)]]));
    if (ok) console.log(`${useCase} is on its golden path: ${outcome.taskId} Succeeded in ${seconds.toFixed(2)} s. Next: edit ${r.intentFile}`);
    else {
      console.log(`${useCase}: the first task ended ${outcome.state}, not Succeeded (runbooks/onboarding.md)`);
      for (const r of outcome.reasons) console.log(`  ${r.code}: ${r.message} (limit ${r.limit}, requested ${r.requested}, policy ${r.policy})`);
    }
  }
  if (!ok) process.exitCode = Exit.Rejected;
}

export function register(program: Command): void {
  program
    .command('onboard')
    .description(
      'a new use case from nothing to its first Succeeded task: roles, team budget, GPU quota, API key, a starter intent, the first task; timed and recorded (program.onboard)',
    )
    .option('--tenant <tenant>')
    .option('--team <team>')
    .option('--use-case <useCase>')
    .option('--kind <kind>', 'inference | training: the golden path')
    .option('--budget-usd <usd>', "the team's monthly budget (left as is when it exists)")
    .option('--project <project>', 'the attribution project (default: the use case)')
    .option('--owner <user>', 'who gets requester and budget-owner, and the key (default: the caller)')
    .option('--out <dir>', 'where the starter intent goes: DIR/TENANT/TEAM/USECASE.yaml (default: the data dir)')
    .option('--as <user>', 'who onboards (auth: none only; audited)')
    .option('--timeout-seconds <n>', 'how long to wait for the first task (default 1800)')
    .option('--json', 'progress on stderr, one JSON object on stdout (with apiKey)')
    .action(async (raw) => {
      const o = parseOptions(Options, raw);
      await withContext(program.opts().dataDir as string | undefined, (ctx) => onboard(ctx, o));
    });
}
