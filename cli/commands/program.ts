import { type Client, type WorkflowHandle, WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, WorkflowUpdateFailedError } from '@temporalio/client';
import type { Command } from 'commander';
import { z } from 'zod';
import { loadProgramPlan } from '../../config/load';
import { TASK_QUEUE_CONTROL } from '../../workflows/messages';
import {
  ExtendSchema,
  PROGRAM_WORKFLOW_ID,
  PauseSchema,
  type ProgramAnswer,
  ProgramErrors,
  type ProgramStatus,
  migrationProgram,
  programExtendUpdate,
  programNudgeSignal,
  programPauseUpdate,
  programReplanUpdate,
  programResumeUpdate,
  programSignoffUpdate,
  programStatusQuery,
  ReplanSchema,
  SignoffSchema,
} from '../../workflows/migration-program';
import { issuesText } from '../../workflows/schemas';
import { withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table } from '../util';
import { settings } from '../../config/settings';

const Name = z.string().min(1).max(200);
const queue = () => settings().GOVLOOP_TASK_QUEUE ?? TASK_QUEUE_CONTROL;
/** The program's workflow id: $GOVLOOP_PROGRAM_ID (a rehearsal next to the real one, tests) or the one program's. */
const programId = (): string => settings().GOVLOOP_PROGRAM_ID ?? PROGRAM_WORKFLOW_ID;

const StartOptions = z.strictObject({
  plan: z.string().min(1).optional(),
  daySeconds: z.coerce
    .number({ error: 'must be a number of seconds' })
    .min(0.05, 'must be at least 0.05')
    .max(86_400 * 7, 'must be at most 604800')
    .default(86_400),
  as: Name.optional(),
  json: z.boolean().default(false),
});
const StatusOptions = z.strictObject({ json: z.boolean().default(false), refresh: z.boolean().default(false) });
const SignoffOptions = z.strictObject({ as: Name.optional(), reason: z.string().min(1, 'required').max(1000), json: z.boolean().default(false) });
const ExtendOptions = SignoffOptions.extend({
  days: z.coerce
    .number({ error: 'must be a whole number of days' })
    .int('must be a whole number of days')
    .min(1, 'must be at least 1')
    .max(90, 'must be at most 90'),
});
const ReplanOptions = SignoffOptions.extend({ plan: z.string().min(1) });
const ReportOptions = z.strictObject({ format: z.enum(['md', 'json']).default('md') });

/** An update's refusal (accepted: false) exits 3 with its code; a request the workflow's validator refused exits 2. */
function answered(a: ProgramAnswer, json: boolean): void {
  if (!a.accepted) throw new CliExit(Exit.Rejected, `refused (${a.code}): ${a.message}`, { code: a.code });
  if (json) printJson(a);
  else process.stdout.write(`${a.message}\n`);
}

async function update<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError)
      throw new CliExit(Exit.Rejected, 'no migration program is running (govloop program start)', { code: 'NOT_RUNNING' });
    if (err instanceof WorkflowUpdateFailedError) {
      const cause = err.cause as { type?: string; message?: string } | undefined;
      if (cause?.type === ProgramErrors.InvalidRequest) throw new CliExit(Exit.BadInput, cause.message ?? 'invalid request', { code: cause.type });
      throw new CliExit(Exit.Rejected, cause?.message ?? err.message, { code: cause?.type ?? 'REFUSED' });
    }
    throw err;
  }
}

/**
 * An update's payload, checked with the update's own schema (the workflow's validator checks it the
 * same way): refused here, exit 2, with the text and code the workflow would have answered.
 */
function request<T>(schema: z.ZodType<T>, payload: unknown): T {
  const r = schema.safeParse(payload);
  if (!r.success) throw new CliExit(Exit.BadInput, `invalid request: ${issuesText(r.error)}`, { code: ProgramErrors.InvalidRequest });
  return r.data;
}

const pct = (v: number | null) => (v === null ? 'no data' : `${(v * 100).toFixed(1)} %`);

export function describeStatus(s: ProgramStatus): string {
  const lines = [
    `${s.plan.name} (plan v${s.plan.version}): day ${s.day}${s.paused ? ' (paused)' : ''}, ${s.done ? 'done' : `phase ${s.current ?? '-'}${s.blocked ? ' BLOCKED' : ''}`}`,
  ];
  lines.push(
    table(
      ['phase', 'state', 'days', 'started', 'closed', 'platform sign-off', 'workload sign-off'],
      s.phases.map((p) => [
        p.id,
        p.state,
        `${p.plannedStartDay}-${p.plannedEndDay + p.extensions.reduce((n, e) => n + e.days, 0)}`,
        p.startedDay ?? '-',
        p.closedDay ?? '-',
        p.signoffs.platform?.by ?? '-',
        p.signoffs.workload?.by ?? '-',
      ]),
    ),
  );
  const a = s.phases.find((p) => p.id === s.current);
  if (a) {
    lines.push(`gates of ${a.id} (measured on day ${a.evaluatedDay ?? '-'}):`);
    lines.push(
      table(
        ['gate', 'check', 'measured', 'threshold', 'pass', 'failing'],
        a.gates.map((g) => [
          g.id,
          g.check,
          pct(g.value),
          pct(g.threshold),
          g.pass ? 'yes' : 'NO',
          g.failing.slice(0, 5).join(', ') + (g.failing.length > 5 ? ` (+${g.failing.length - 5})` : ''),
        ]),
      ),
    );
    if (s.awaitingSignoff.length > 0)
      lines.push(
        `still to sign ${a.id} off: ${s.awaitingSignoff.map((x) => `a ${x} owner (${x === 'platform' ? s.plan.signoff.platformRole : s.plan.signoff.workloadRole})`).join(' and ')}`,
      );
  }
  const delivered = s.phases.flatMap((p) => p.deliverables.map((d) => [p.id, d.id, d.kind, d.version, d.sha256.slice(0, 16)]));
  if (delivered.length > 0) lines.push(table(['phase', 'deliverable', 'kind', 'version', 'sha256'], delivered));
  return lines.join('\n');
}

/** The one page (seed 001, checklist question 10): the program's state and its gates, as measured now. */
export function programReport(s: ProgramStatus): string {
  const out = [`# ${s.plan.name}: day ${s.day} of ${Math.max(...s.plan.phases.map((p) => p.endDay))}`, ''];
  out.push(
    `Plan version ${s.plan.version}, started by ${s.startedBy}; ${s.done ? 'all phases closed' : `active phase: ${s.current ?? '-'}${s.blocked ? ' (blocked)' : ''}`}${s.paused ? '; paused' : ''}.`,
    '',
  );
  for (const p of s.phases) {
    const plan = s.plan.phases.find((x) => x.id === p.id);
    out.push(`## ${p.name} (${p.id}): ${p.state}`, '');
    if (plan) out.push(...plan.work.map((w) => `- ${w}`), '');
    if (p.gates.length > 0) {
      out.push('| gate | measured | threshold | pass |', '|---|---|---|---|');
      for (const g of p.gates) out.push(`| ${g.id} | ${pct(g.value)} | ${pct(g.threshold)} | ${g.pass ? 'yes' : `no: ${g.failing.slice(0, 5).join(', ')}`} |`);
      out.push('');
    }
    for (const d of p.deliverables) out.push(`- deliverable ${d.id} (${d.kind}) ${d.version}, sha256 ${d.sha256}`);
    if (p.signoffs.platform || p.signoffs.workload)
      out.push(`- signed off by ${[p.signoffs.platform?.by, p.signoffs.workload?.by].filter(Boolean).join(' and ')}`);
    out.push('');
  }
  if (s.weeklyReports.length > 0) out.push('## Weekly', '', ...s.weeklyReports.map((w) => `- week ${w.week} (day ${w.day}): ${w.summary}`), '');
  return out.join('\n');
}

export function register(program: Command): void {
  const p = program.command('program').description('the 90-day migration program: phases, measured gates, sign-offs (config/program.yaml)');

  p.command('start')
    .description('start the migration program (one at a time)')
    .option('--plan <file>', 'the plan (default: config/program.yaml)')
    .option('--day-seconds <n>', 'seconds in a program day (86400; a few seconds for a demo)')
    .option('--as <user>', 'who starts it (auth: none only; audited)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(StartOptions, raw);
      const plan = loadProgramPlan(o.plan);
      await withContext(program.opts().dataDir, async (ctx) => {
        const who = await ctx.principal(o.as, 'program.start');
        if (!who.platformAdmin)
          throw new CliExit(Exit.Rejected, `refused (FORBIDDEN): starting the program needs ${plan.signoff.platformRole}`, { code: 'FORBIDDEN' });
        const client = await ctx.client();
        try {
          await client.workflow.start(migrationProgram, {
            workflowId: programId(),
            taskQueue: queue(),
            args: [{ plan, daySeconds: o.daySeconds, startedBy: who.verified ? who.subject : `${who.subject} (unverified)` }],
          });
        } catch (err) {
          if (err instanceof WorkflowExecutionAlreadyStartedError)
            throw new CliExit(Exit.Rejected, 'refused (ALREADY_RUNNING): a migration program is already running', { code: 'ALREADY_RUNNING' });
          throw err;
        }
        const out = { programId: programId(), plan: plan.name, version: plan.version, daySeconds: o.daySeconds, phases: plan.phases.map((x) => x.id) };
        if (o.json) printJson(out);
        else
          process.stdout.write(`started ${plan.name} (v${plan.version}) as ${programId()}, a day every ${o.daySeconds} s; phases ${out.phases.join(', ')}\n`);
      });
    });

  p.command('status')
    .description('the phase, the day, each gate measured beside its threshold, deliverables, sign-offs')
    .option('--refresh', 'measure the gates now first')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(StatusOptions, raw);
      await withContext(program.opts().dataDir, async (ctx) => {
        const h = await programHandle(ctx);
        const s = await update(async () => {
          if (o.refresh) await h.signal(programNudgeSignal);
          return h.query(programStatusQuery);
        });
        if (o.json) printJson(s);
        else process.stdout.write(`${describeStatus(s)}\n`);
      });
    });

  const caller = (o: { as?: string | undefined }, credential: string | undefined) => ({ ...(o.as ? { as: o.as } : {}), ...(credential ? { credential } : {}) });
  type CallOptions = z.infer<typeof SignoffOptions> & { days?: number };
  const call = (
    name: string,
    description: string,
    schema: z.ZodType<CallOptions>,
    send: (h: WorkflowHandle, phase: string | undefined, o: CallOptions, credential: string | undefined) => Promise<ProgramAnswer>,
    withPhase = true,
  ) => {
    const c = p.command(withPhase ? `${name} <phase>` : name).description(description);
    if (name === 'extend') c.requiredOption('--days <n>', 'days to add to the phase');
    c.option('--as <user>', 'who (auth: none only; audited)')
      .option('--reason <text>', 'why (audited; required)')
      .option('--json', 'print JSON')
      .action(async (...args: unknown[]) => {
        const phase = withPhase ? (args[0] as string) : undefined;
        const raw = (withPhase ? args[1] : args[0]) as Record<string, unknown>;
        const o = parseOptions(schema, { reason: '', ...raw });
        await withContext(program.opts().dataDir, async (ctx) => {
          const h = await programHandle(ctx);
          answered(await update(() => send(h, phase, o, ctx.credential)), o.json);
        });
      });
  };
  call('signoff', 'sign the active phase off as its platform or workload owner (four-eyes: two different people)', SignoffOptions, (h, phase, o, cr) =>
    h.executeUpdate(programSignoffUpdate, { args: [request(SignoffSchema, { phase, reason: o.reason, ...caller(o, cr) })] }),
  );
  call('extend', 'add days to a phase, with a reason (audited)', ExtendOptions, (h, phase, o, cr) =>
    h.executeUpdate(programExtendUpdate, { args: [request(ExtendSchema, { phase, days: o.days, reason: o.reason, ...caller(o, cr) })] }),
  );
  call(
    'pause',
    'pause the program: days stop counting',
    SignoffOptions,
    (h, _p, o, cr) => h.executeUpdate(programPauseUpdate, { args: [request(PauseSchema, { reason: o.reason, ...caller(o, cr) })] }),
    false,
  );
  call(
    'resume',
    'resume a paused program',
    SignoffOptions,
    (h, _p, o, cr) => h.executeUpdate(programResumeUpdate, { args: [request(PauseSchema, { reason: o.reason, ...caller(o, cr) })] }),
    false,
  );

  p.command('replan')
    .description('a new plan version (config format) for the phases that have not started; started phases keep theirs')
    .requiredOption('--plan <file>', 'the new plan (its version must be higher)')
    .option('--as <user>', 'who (auth: none only; audited)')
    .option('--reason <text>', 'why (audited; required)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(ReplanOptions, { reason: '', ...raw });
      const plan = loadProgramPlan(o.plan);
      await withContext(program.opts().dataDir, async (ctx) => {
        const h = await programHandle(ctx);
        const payload = request(ReplanSchema, { plan, reason: o.reason, ...caller(o, ctx.credential) });
        answered(await update(() => h.executeUpdate(programReplanUpdate, { args: [payload] })), o.json);
      });
    });

  p.command('report')
    .description('the one page: the program, its phases, gates as measured, deliverables, the weekly notes')
    .option('--format <f>', 'md | json', 'md')
    .action(async (raw) => {
      const o = parseOptions(ReportOptions, raw);
      await withContext(program.opts().dataDir, async (ctx) => {
        const h = await programHandle(ctx);
        const s = await update(() => h.query(programStatusQuery));
        if (o.format === 'json') printJson(s);
        else process.stdout.write(`${programReport(s)}\n`);
      });
    });
}

const programHandle = async (ctx: { client(): Promise<Client> }): Promise<WorkflowHandle> => (await ctx.client()).workflow.getHandle(programId());
