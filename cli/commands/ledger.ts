import type { Command } from 'commander';
import { z } from 'zod';
import { Periods } from '../../governance/periods';
import { showBudgets, setBudget } from '../../ledger/budgets';
import { verifyAudit } from '../../ledger/audit';
import { UsageDims, type UsageDim, usageBy } from '../../ledger/usage';
import { withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table, usd } from '../util';

const scopeName = z.string().min(1).max(63);
const BudgetSet = z.strictObject({
  tenant: scopeName,
  team: scopeName.optional(),
  project: scopeName.optional(),
  usd: z.coerce.number({ error: 'must be a number' }).nonnegative().max(1e12),
  period: z.enum(Periods).default('month'),
  as: z.string().min(1).default(process.env.USER ?? 'cli'),
}).refine((o) => o.project === undefined || o.team !== undefined, { message: 'a project budget needs --team', path: ['project'] });
const BudgetShow = z.strictObject({ tenant: scopeName, team: scopeName.optional(), project: scopeName.optional(), period: z.enum(Periods).optional(), json: z.boolean().default(false) });

/** `--period` of usage: today | week | month | all | YYYY-MM | YYYY-MM-DD, as a [from, to) range in UTC. */
export function periodRange(p: string, now = new Date()): { from: Date; to: Date } | undefined {
  const day = (y: number, m: number, d: number) => new Date(Date.UTC(y, m, d));
  const y = now.getUTCFullYear(), m = now.getUTCMonth(), d = now.getUTCDate();
  if (p === 'today') return { from: day(y, m, d), to: day(y, m, d + 1) };
  if (p === 'week') return { from: day(y, m, d - ((now.getUTCDay() + 6) % 7)), to: day(y, m, d - ((now.getUTCDay() + 6) % 7) + 7) };
  if (p === 'month') return { from: day(y, m, 1), to: day(y, m + 1, 1) };
  if (p === 'all') return { from: new Date(0), to: new Date(8.64e15) };
  let r = /^(\d{4})-(\d{2})$/.exec(p);
  if (r) return { from: day(+r[1]!, +r[2]! - 1, 1), to: day(+r[1]!, +r[2]!, 1) };
  r = /^(\d{4})-(\d{2})-(\d{2})$/.exec(p);
  if (r) return { from: day(+r[1]!, +r[2]! - 1, +r[3]!), to: day(+r[1]!, +r[2]! - 1, +r[3]! + 1) };
  return undefined;
}

const UsageOptions = z.strictObject({
  by: z
    .string()
    .default('team')
    .transform((s) => s.split(',').map((x) => x.trim()).filter(Boolean))
    .pipe(z.array(z.enum(UsageDims, { error: `each dimension must be one of ${UsageDims.join(', ')}` })).min(1)),
  period: z.string().default('month').refine((p) => periodRange(p) !== undefined, 'today | week | month | all | YYYY-MM | YYYY-MM-DD'),
  tenant: scopeName.optional(),
  json: z.boolean().default(false),
});

export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;
  const budget = program.command('budget').description('budgets per tenant / team / project and period');

  budget
    .command('set')
    .description('set (or change) a budget limit in USD')
    .requiredOption('--tenant <tenant>')
    .option('--team <team>')
    .option('--project <project>')
    .requiredOption('--usd <amount>')
    .option('--period <period>', 'day | week | month | total', 'month')
    .option('--as <user>', 'who sets it (audited)')
    .action(async (raw) => {
      const o = parseOptions(BudgetSet, raw);
      await withContext(dataDir(), async (ctx) => {
        const db = await ctx.db();
        await setBudget(db, { tenant: o.tenant, ...(o.team ? { team: o.team } : {}), ...(o.project ? { project: o.project } : {}) }, o.period, o.usd, o.as);
        console.log(`budget ${o.tenant}/${o.team ?? '*'}/${o.project ?? '*'} ${o.period}: ${usd(o.usd)}`);
      });
    });

  budget
    .command('show')
    .description('limit, reserved and spent in the current window of each budget')
    .requiredOption('--tenant <tenant>')
    .option('--team <team>')
    .option('--project <project>')
    .option('--period <period>')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(BudgetShow, raw);
      await withContext(dataDir(), async (ctx) => {
        const views = await showBudgets(await ctx.db(), { tenant: o.tenant, ...(o.team ? { team: o.team } : {}), ...(o.project ? { project: o.project } : {}), ...(o.period ? { period: o.period } : {}) }, new Date());
        if (o.json) return printJson(views.length === 1 && (o.team !== undefined || o.period !== undefined) ? views[0] : views);
        if (views.length === 0) return console.log(`no budget for ${o.tenant}`);
        console.log(table(['scope', 'period', 'window', 'limit', 'reserved', 'spent', 'left'], views.map((v) => [v.scope, v.period, v.window, usd(v.limitUsd), usd(v.reservedUsd), usd(v.spentUsd), usd(v.limitUsd - v.reservedUsd - v.spentUsd)])));
      });
    });

  program
    .command('usage')
    .description('usage and cost from the ledger, by attribution dimensions')
    .option('--by <dims>', `comma-separated: ${UsageDims.join(', ')}`, 'team')
    .option('--period <period>', 'today | week | month | all | YYYY-MM | YYYY-MM-DD', 'month')
    .option('--tenant <tenant>')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(UsageOptions, raw);
      const { from, to } = periodRange(o.period)!;
      await withContext(dataDir(), async (ctx) => {
        const rows = await usageBy(await ctx.db(), o.by as UsageDim[], from, to, o.tenant);
        if (o.json) return printJson(rows);
        console.log(table([...o.by, 'cost', 'GPU-hours', 'tokens', 'tasks'], rows.map((r) => [...o.by.map((d) => String(r[d])), usd(r.costUsd), r.gpuHours, r.tokens, r.tasks])));
      });
    });

  const audit = program.command('audit').description('the tamper-evident audit log');
  audit
    .command('verify')
    .description('recompute the hash chain; exit 4 naming the first row that does not fit')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(z.strictObject({ json: z.boolean().default(false) }), raw);
      await withContext(dataDir(), async (ctx) => {
        const v = await verifyAudit(await ctx.db());
        if (o.json) printJson(v);
        else console.log(v.ok ? `audit chain intact: ${v.rows} rows` : `audit chain broken at row ${v.firstBadId} (${v.problem}); ${v.rows} rows`);
        if (!v.ok) process.exitCode = Exit.AuditBroken;
      });
    });
  audit
    .command('show')
    .description("a task's audit trail, oldest first")
    .argument('<taskId>')
    .option('--json', 'print JSON')
    .action(async (taskId: string, raw) => {
      const o = parseOptions(z.strictObject({ json: z.boolean().default(false) }), raw);
      await withContext(dataDir(), async (ctx) => {
        const { rows } = await (await ctx.db()).query('SELECT id, at, actor, action, decision, detail FROM audit_log WHERE task_id = $1 ORDER BY id', [taskId]);
        if (rows.length === 0) throw new CliExit(Exit.Failure, `no audit rows for ${taskId}`);
        if (o.json) return printJson(rows);
        console.log(table(['id', 'at', 'actor', 'action', 'decision', 'detail'], rows.map((r) => [r.id, r.at.toISOString(), r.actor, r.action, r.decision, JSON.stringify(r.detail).slice(0, 80)])));
      });
    });
}
