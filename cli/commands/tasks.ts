import type { Command } from 'commander';
import { z } from 'zod';
import { outcomeOf } from '../../sdk';
import { readableTenants } from '../../ledger/authz';
import { NameText, ReasonText } from '../../workflows/schemas';
import { withContext } from '../context';
import { Exit, parseOptions, printJson, table, usd } from '../util';
import { printOutcome } from './submit';

const int = (name: string) =>
  z.coerce
    .number({ error: `${name} must be a number` })
    .int()
    .nonnegative();

const StatusOptions = z.strictObject({ as: NameText.optional(), json: z.boolean().default(false) });
const ListOptions = z.strictObject({
  state: z.string().optional(),
  tenant: z.string().optional(),
  team: z.string().optional(),
  kind: z.string().optional(),
  limit: z.coerce.number().int().positive().default(50),
  as: NameText.optional(),
  json: z.boolean().default(false),
});
const CancelOptions = z.strictObject({ as: NameText.optional(), reason: ReasonText.default('cancelled from the CLI') });
const StepOptions = z.strictObject({
  tokensIn: int('tokens-in'),
  tokensOut: int('tokens-out'),
  context: int('context'),
  model: z.string().min(1).optional(),
  tool: z.string().min(1).optional(),
  as: NameText.optional(),
  toolArgs: z
    .string()
    .transform((t, ctx) => {
      try {
        return JSON.parse(t) as unknown;
      } catch {
        ctx.addIssue({ code: 'custom', message: 'must be JSON, e.g. \'{"amountUsd": 40}\'' });
        return z.NEVER;
      }
    })
    .optional(),
  latencyMs: int('latency-ms').optional(),
  finish: z.boolean().default(false),
  json: z.boolean().default(false),
});

export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;

  program
    .command('status')
    .description("a task's governance state, usage and cost")
    .argument('<taskId>')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (taskId: string, raw) => {
      const opts = parseOptions(StatusOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const p = await ctx.principal(opts.as, 'status');
        const s = await (await ctx.gov()).status(taskId);
        await ctx.allow(p, 'read', s.attribution.tenant, { taskId });
        if (opts.json) return printJson(s);
        printOutcome(outcomeOf(s), false);
        if (s.requester) console.log(`  requested by ${s.requester}`);
        console.log(`  kind ${s.kind}, ${s.attribution.tenant}/${s.attribution.team}/${s.attribution.project}, model ${s.attribution.model}`);
        if (s.plan)
          console.log(
            `  plan ${s.plan.template}: ${s.plan.gpu.count} x ${s.plan.gpu.type ?? 'hosted'} (${s.plan.gpu.sharing}), worst case ${usd(s.plan.worstCaseMicros / 1e6)}`,
          );
        if (s.nodes.length) console.log(`  nodes ${s.nodes.join(', ')}`);
        console.log(
          `  usage: ${s.usage.gpuHours.toFixed(3)} GPU-h, ${s.usage.tokensIn + s.usage.tokensOut + s.usage.tokensProcessed} tokens, ${s.usage.steps} steps${s.progress !== null ? `, ${(s.progress * 100).toFixed(0)}% done` : ''}`,
        );
        const a = s.approval;
        if (a)
          console.log(
            `  approval ${a.approvalId}: ${a.tool} ${a.state}${a.decidedBy ? ` by ${a.decidedBy}` : ''}, tier ${a.tier}, requested by ${a.requester}, expires ${a.expiresAt}, args ${a.argsDigest}`,
          );
        for (const c of s.compensations ?? []) console.log(`  compensation of step ${c.step} (${c.tool}): ${c.state}${c.error ? `: ${c.error}` : ''}`);
        if (s.state === 'NeedsOperator')
          console.log(`  runbook: runbooks/needsoperator.md — undo by hand, then: govloop resolve ${s.taskId} --as YOU --reason "..."`);
      });
    });

  program
    .command('list')
    .description('tasks by governance state and attribution (a Temporal visibility query)')
    .option('--state <state>', 'GovState, e.g. Running, Queued, Rejected')
    .option('--tenant <tenant>')
    .option('--team <team>')
    .option('--kind <kind>')
    .option('--limit <n>', 'at most this many', '50')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const opts = parseOptions(ListOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const p = await ctx.principal(opts.as, 'list');
        if (opts.tenant) await ctx.allow(p, 'read', opts.tenant);
        // Without --tenant: every tenant the caller may read (all of them for a platform admin).
        const tenants = opts.tenant ? [opts.tenant] : await readableTenants(await ctx.db(), p);
        const gov = await ctx.gov();
        const filter = { state: opts.state, team: opts.team, kind: opts.kind, limit: opts.limit };
        const rows =
          tenants === null
            ? await gov.list(filter)
            : (await Promise.all(tenants.map((tenant) => gov.list({ ...filter, tenant }))))
                .flat()
                .sort((a, b) => b.startTime.getTime() - a.startTime.getTime())
                .slice(0, opts.limit);
        if (opts.json) return printJson(rows);
        console.log(
          table(
            ['task', 'state', 'tenant', 'team', 'kind', 'started'],
            rows.map((r) => [r.taskId, r.state, r.tenant, r.team, r.kind, r.startTime.toISOString()]),
          ),
        );
      });
    });

  program
    .command('cancel')
    .description('cancel a task: its job is deleted, what it used is charged, the rest of its reservation released')
    .argument('<taskId>')
    .option('--as <user>', 'who cancels (auth: none only)')
    .option('--reason <text>', 'why')
    .action(async (taskId: string, raw) => {
      const opts = parseOptions(CancelOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const r = await (await ctx.gov()).cancel(taskId, opts.as, opts.reason);
        console.log(`cancel of ${taskId} accepted from ${r.by}`);
      });
    });

  program
    .command('step')
    .description('an agent step through the gate: answers allow, degrade (use the fallback model), deny (with the reason) or await-approval')
    .argument('<taskId>')
    .requiredOption('--tokens-in <n>')
    .requiredOption('--tokens-out <n>')
    .requiredOption('--context <n>', 'context tokens of the call')
    .option('--model <model>')
    .option('--tool <name>')
    .option('--tool-args <json>', "the tool call's arguments (digested for approval, replayed to its compensation)")
    .option('--latency-ms <n>')
    .option('--as <user>', 'who reports the step (auth: none only)')
    .option('--finish', "the task's last step: if the gate lets it run, the task finishes too (as govloop finish)")
    .option('--json', 'print JSON')
    .action(async (taskId: string, raw) => {
      const opts = parseOptions(StepOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const a = await (
          await ctx.gov()
        ).step(
          taskId,
          {
            tokensIn: opts.tokensIn,
            tokensOut: opts.tokensOut,
            contextTokens: opts.context,
            ...(opts.model ? { model: opts.model } : {}),
            ...(opts.tool ? { tool: opts.tool } : {}),
            ...(opts.toolArgs !== undefined ? { toolArgs: opts.toolArgs } : {}),
            ...(opts.latencyMs !== undefined ? { latencyMs: opts.latencyMs } : {}),
          },
          { ...(opts.as !== undefined ? { as: opts.as } : {}), ...(opts.finish ? { finish: true } : {}) },
        );
        if (opts.json) printJson(a);
        else {
          const extra = a.answer === 'degrade' ? ` on ${a.fallbackModel}` : a.answer === 'await-approval' ? ` ${a.approvalId}` : '';
          const done =
            a.finished === true ? '; the task finishes' : a.finished ? `; finish refused: ${a.finished.refused.code} ${a.finished.refused.message}` : '';
          console.log(`${a.answer}${extra}${a.reason ? `: ${a.reason.code} ${a.reason.message}` : ''} (step ${a.step}, cost so far ${usd(a.costUsd)})${done}`);
        }
        if (a.answer === 'deny') process.exitCode = Exit.Rejected;
      });
    });

  program
    .command('finish')
    .description('mark a hosted agent/inference task done; it settles and releases its reservation')
    .argument('<taskId>')
    .option('--as <user>', 'who finishes (auth: none only)')
    .action(async (taskId: string, raw) => {
      const opts = parseOptions(CancelOptions.pick({ as: true }), raw);
      await withContext(dataDir(), async (ctx) => {
        const r = await (await ctx.gov()).finish(taskId, opts.as);
        console.log(`finish of ${taskId} accepted from ${r.by}`);
      });
    });
}
