import type { Command } from 'commander';
import { z } from 'zod';
import { Periods } from '../../governance/periods';
import { decideRaise, requestBudgetChange, showBudgets } from '../../ledger/budgets';
import { budgetSnapshot, listRaises } from '../../ledger/ladder';
import { startBudgetController } from '../../runtime/schedules';
import { TASK_QUEUE_CONTROL } from '../../workflows/messages';
import { type BudgetKey, BudgetScopeSchema, projectNeedsTeam, scopeLabel, scopeName, scopeOf } from '../../governance/budget-scope';
import { registerAuditCommands } from './audit';
import { UsageDims, type UsageDim } from '../../ledger/usage';
import { type Capacity, rollUp, rollupUsageBy, showback } from '../../ledger/rollups';
import type { GovConfig } from '../../config/load';
import { priceVersionAt } from '../../governance/pricing';
import { stringify } from 'csv-stringify/sync';
import { type CommandContext, refused, withContext } from '../context';
import { actorName } from '../../governance/authz';
import { dataDir as dataDirOf, readDevState } from '../../runtime/environment';
import { CliExit, Exit, parseOptions, printJson, table, usd } from '../util';
import { own } from '../../governance/own';
import { settings } from '../../config/settings';

const BudgetSet = z
  .strictObject({
    ...BudgetScopeSchema.shape,
    usd: z.coerce.number({ error: 'must be a number' }).nonnegative().max(1e12),
    period: z.enum(Periods).default('month'),
    as: z.string().min(1).max(128).optional(),
    reason: z.string().min(1).max(1000).default('budget set'),
  })
  .refine(projectNeedsTeam, { message: 'a project budget needs --team', path: ['project'] });
const RaiseDecision = z.strictObject({ as: z.string().min(1).max(128).optional(), reason: z.string().min(1).max(1000) });
const RaiseId = z.coerce.number({ error: 'must be a number' }).int().positive();
const BudgetShow = z.strictObject({
  tenant: scopeName,
  team: scopeName.optional(),
  project: scopeName.optional(),
  period: z.enum(Periods).optional(),
  as: scopeName.optional(),
  json: z.boolean().default(false),
});

/** `--period` of usage: today | week | month | all | YYYY-MM | YYYY-MM-DD, as a [from, to) range in UTC. */
export function periodRange(p: string, now = new Date()): { from: Date; to: Date } | undefined {
  const day = (y: number, m: number, d: number) => new Date(Date.UTC(y, m, d));
  const y = now.getUTCFullYear(),
    m = now.getUTCMonth(),
    d = now.getUTCDate();
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
    .transform((s) =>
      s
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean),
    )
    .pipe(z.array(z.enum(UsageDims, { error: `each dimension must be one of ${UsageDims.join(', ')}` })).min(1)),
  period: z
    .string()
    .default('month')
    .refine((p) => periodRange(p) !== undefined, 'today | week | month | all | YYYY-MM | YYYY-MM-DD'),
  tenant: scopeName.optional(),
  as: scopeName.optional(),
  json: z.boolean().default(false),
});

const ReportOptions = z.strictObject({
  by: UsageOptions.shape.by,
  period: UsageOptions.shape.period,
  tenant: scopeName.optional(),
  as: scopeName.optional(),
  format: z.enum(['table', 'csv', 'json']).default('table'),
});

/** The configured cluster's GPUs per type, at the exclusive GPU-hour price in force now. */
export function clusterCapacity(config: GovConfig): Capacity {
  const prices = priceVersionAt(config.priceBook, new Date().toISOString());
  const gpus = new Map<string, number>();
  for (const n of config.cluster.nodes) gpus.set(n.gpuType, (gpus.get(n.gpuType) ?? 0) + n.gpus);
  return { gpuTypes: [...gpus].map(([gpuType, n]) => ({ gpuType, gpus: n, usdPerGpuHour: own(prices.gpuHourUsd, gpuType)?.exclusive ?? 0 })) };
}

const fmtUnit = (v: number | null) => (v === null ? '—' : usd(v));

/**
 * Starts the budget's controller, or nudges it to read the ledger now, where a Temporal server is
 * configured (TEMPORAL_ADDRESS or a running govloop dev). Without one the budget still applies:
 * the next worker start gives it a controller.
 */
export async function nudgeController(ctx: CommandContext, budget: BudgetKey): Promise<void> {
  if (!settings().TEMPORAL_ADDRESS && !readDevState(dataDirOf(ctx.dataDir))) return;
  try {
    await startBudgetController(await ctx.client(), budget, settings().GOVLOOP_TASK_QUEUE ?? TASK_QUEUE_CONTROL);
  } catch (err) {
    console.error(`note: budget controller not started (${(err as Error).message}); the next worker start starts it`);
  }
}

/** Usage of one tenant needs `read` there; of every tenant, platform-admin. */
async function readScope(ctx: CommandContext, tenant: string | undefined, as: string | undefined): Promise<void> {
  const p = await ctx.principal(as, 'usage');
  if (tenant !== undefined) await ctx.allow(p, 'read', tenant);
  else if (!p.platformAdmin || p.tenantScope !== null)
    throw refused({ code: 'FORBIDDEN', message: `usage of every tenant is for platform admins; ${actorName(p)} names one with --tenant` }, p);
}

export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;
  const budget = program.command('budget').description('budgets per tenant / team / project and period');

  budget
    .command('set')
    .description('set a budget limit in USD; raising an existing limit waits for another person (budget approve)')
    .requiredOption('--tenant <tenant>')
    .option('--team <team>')
    .option('--project <project>')
    .requiredOption('--usd <amount>')
    .option('--period <period>', 'day | week | month | total', 'month')
    .option('--as <user>', 'who sets it (auth: none only; audited)')
    .option('--reason <text>', 'why (audited)')
    .action(async (raw) => {
      const o = parseOptions(BudgetSet, raw);
      await withContext(dataDir(), async (ctx) => {
        const db = await ctx.db();
        const principal = await ctx.principal(o.as ?? (ctx.credential ? undefined : settings().USER), 'budget.set');
        const key: BudgetKey = { ...scopeOf(o), period: o.period };
        const r = await requestBudgetChange(
          db,
          key,
          o.period,
          o.usd,
          { principal, lowerSecondPersonAbove: ctx.config().auth.budgetLowerSecondPersonAbove },
          o.reason,
        );
        const label = `${scopeLabel(key)} ${o.period}`;
        if (!r.applied && 'refused' in r) throw refused(r.refused, principal);
        if (!r.applied) {
          const what = r.toUsd > r.fromUsd ? 'raise' : 'lowering';
          console.log(
            `budget ${label}: ${what} ${usd(r.fromUsd)} → ${usd(r.toUsd)} is pending as change ${r.raiseId}; someone other than ${actorName(principal)} approves it: govloop budget approve ${r.raiseId} --reason TEXT`,
          );
          return;
        }
        console.log(`budget ${label}: ${usd(o.usd)}`);
        await nudgeController(ctx, key);
      });
    });

  budget
    .command('raises')
    .description('budget raises waiting for a second person (pending first), with --all the decided ones too')
    .requiredOption('--tenant <tenant>')
    .option('--all', 'decided raises too')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(
        z.strictObject({ tenant: scopeName, all: z.boolean().default(false), as: scopeName.optional(), json: z.boolean().default(false) }),
        raw,
      );
      await withContext(dataDir(), async (ctx) => {
        await ctx.allow(await ctx.principal(o.as, 'budget.raises'), 'read', o.tenant);
        const rows = await listRaises(await ctx.db(), o.tenant, !o.all);
        if (o.json) return printJson(rows);
        if (rows.length === 0) return console.log(`no ${o.all ? '' : 'pending '}budget raises for ${o.tenant}`);
        console.log(
          table(
            ['raise', 'scope', 'period', 'from', 'to', 'requested by', 'reason', 'state', 'decided by'],
            rows.map((r) => [r.raiseId, r.scope, r.period, usd(r.fromUsd), usd(r.toUsd), r.requestedBy, r.reason, r.state, r.decidedBy ?? '—']),
          ),
        );
      });
    });

  for (const kind of ['approve', 'reject'] as const) {
    budget
      .command(kind)
      .description(`${kind} a pending budget raise (not the person who asked for it)`)
      .argument('<raiseId>')
      .option('--as <user>', 'who decides (auth: none only)')
      .requiredOption('--reason <text>')
      .action(async (id: string, raw) => {
        const raiseId = parseOptions(z.strictObject({ raiseId: RaiseId }), { raiseId: id }).raiseId;
        const o = parseOptions(RaiseDecision, raw);
        await withContext(dataDir(), async (ctx) => {
          const principal = await ctx.principal(o.as, `budget.${kind}`);
          const r = await decideRaise(await ctx.db(), raiseId, kind, principal, o.reason);
          if (!r.recorded) throw new CliExit(Exit.Rejected, `${r.code}: ${r.message}`, { code: r.code });
          console.log(`budget change ${raiseId} ${r.state} by ${actorName(principal)}; limit ${usd(r.limitUsd)}`);
          if (r.state === 'approved') await nudgeController(ctx, r.budget);
        });
      });
  }

  budget
    .command('show')
    .description('limit, reserved and spent in the current window of each budget')
    .requiredOption('--tenant <tenant>')
    .option('--team <team>')
    .option('--project <project>')
    .option('--period <period>')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(BudgetShow, raw);
      await withContext(dataDir(), async (ctx) => {
        await ctx.allow(await ctx.principal(o.as, 'budget.show'), 'read', o.tenant);
        const db = await ctx.db();
        const now = new Date();
        const views = await showBudgets(
          db,
          { tenant: o.tenant, ...(o.team ? { team: o.team } : {}), ...(o.project ? { project: o.project } : {}), ...(o.period ? { period: o.period } : {}) },
          now,
        );
        const full = [];
        for (const v of views) {
          const snap = await budgetSnapshot(db, v.budgetId, now);
          const { budgetId: _id, ...rest } = v;
          full.push({
            ...rest,
            sharePct: snap ? Math.round(snap.sharePct * 100) / 100 : null,
            step: snap?.step ?? 'ok',
            burnUsdPerHour: snap ? Math.round(snap.burnUsdPerHour * 1e6) / 1e6 : 0,
            forecastUsd: snap?.forecastUsd == null ? null : Math.round(snap.forecastUsd * 100) / 100,
          });
        }
        if (o.json) return printJson(full.length === 1 && (o.team !== undefined || o.period !== undefined) ? full[0] : full);
        if (full.length === 0) return console.log(`no budget for ${o.tenant}`);
        console.log(
          table(
            ['scope', 'period', 'window', 'limit', 'reserved', 'spent', 'left', 'used', 'step', 'burn /h', 'forecast'],
            full.map((v) => [
              v.scope,
              v.period,
              v.window,
              usd(v.limitUsd),
              usd(v.reservedUsd),
              usd(v.spentUsd),
              usd(v.limitUsd - v.reservedUsd - v.spentUsd),
              v.sharePct === null ? '—' : `${v.sharePct} %`,
              v.step,
              usd(v.burnUsdPerHour),
              v.forecastUsd === null ? '—' : usd(v.forecastUsd),
            ]),
          ),
        );
      });
    });

  program
    .command('usage')
    .description('usage and cost from the ledger, by attribution dimensions')
    .option('--by <dims>', `comma-separated: ${UsageDims.join(', ')}`, 'team')
    .option('--period <period>', 'today | week | month | all | YYYY-MM | YYYY-MM-DD', 'month')
    .option('--tenant <tenant>')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(UsageOptions, raw);
      const { from, to } = periodRange(o.period)!;
      await withContext(dataDir(), async (ctx) => {
        await readScope(ctx, o.tenant, o.as);
        const db = await ctx.db();
        // The rollups are what the meteringRollup schedule keeps; catch up first so the answer
        // includes usage recorded since its last run (idempotent, recomputes whole buckets).
        await rollUp(db, { lateArrivalSeconds: ctx.config().policies.metering.lateArrivalSeconds });
        const rows = await rollupUsageBy(db, o.by as UsageDim[], from, to, o.tenant);
        if (o.json) return printJson(rows);
        console.log(
          table(
            [...o.by, 'cost', 'GPU-hours', 'tokens', 'tasks'],
            rows.map((r) => [...o.by.map((d) => String(r[d])), usd(r.costUsd), r.gpuHours, r.tokens, r.tasks ?? '—']),
          ),
        );
      });
    });

  program
    .command('report')
    .description('showback / chargeback: cost by dimensions, unit costs, unattributed and idle cost')
    .option('--by <dims>', `comma-separated: ${UsageDims.join(', ')}`, 'team')
    .option('--period <period>', 'today | week | month | all | YYYY-MM | YYYY-MM-DD', 'month')
    .option('--tenant <tenant>', 'one tenant only (idle capacity is reported for the whole cluster only)')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--format <format>', 'table | csv | json', 'table')
    .action(async (raw) => {
      const o = parseOptions(ReportOptions, raw);
      const { from, to } = periodRange(o.period)!;
      await withContext(dataDir(), async (ctx) => {
        await readScope(ctx, o.tenant, o.as);
        const db = await ctx.db();
        await rollUp(db, { lateArrivalSeconds: ctx.config().policies.metering.lateArrivalSeconds });
        const r = await showback(db, {
          by: o.by as UsageDim[],
          from,
          to,
          ...(o.tenant ? { tenant: o.tenant } : {}),
          capacity: clusterCapacity(ctx.config()),
          priceBook: ctx.config().priceBook,
        });
        if (o.format === 'json') return printJson(r);
        const header = [...o.by, 'costUsd', 'gpuHours', 'tokensIn', 'tokensOut', 'events', 'tasks'];
        const rows = r.rows.map((x) => [...o.by.map((d) => String(x[d])), x.costUsd, x.gpuHours, x.tokensIn, x.tokensOut, x.events, x.tasks ?? '']);
        if (o.format === 'csv') return process.stdout.write(stringify([header, ...rows]));
        console.log(
          `showback ${o.period} (${r.period.from.slice(0, 10)} – ${r.period.to.slice(0, 10)})${o.tenant ? ` tenant ${o.tenant}` : ''}: ${usd(r.totalCostUsd)}`,
        );
        console.log(
          table(
            header,
            rows.map((x) => x.map((v, i) => (i === o.by.length ? usd(Number(v)) : v))),
          ),
        );
        const u = r.unitCosts;
        console.log(
          table(
            ['per 1M tokens', 'per GPU-hour', 'per agent task', 'per training job', 'unattributed', 'idle GPU-hours', 'idle cost'],
            [
              [
                fmtUnit(u.per1MTokensUsd),
                fmtUnit(u.perGpuHourUsd),
                fmtUnit(u.perAgentTaskUsd),
                fmtUnit(u.perTrainingJobUsd),
                `${usd(r.unattributed.costUsd)} (${r.unattributed.events} events)`,
                r.idle ? r.idle.gpuHours.toFixed(1) : '—',
                r.idle ? usd(r.idle.costUsd) : '—',
              ],
            ],
          ),
        );
        if (r.preemptionLosses.length > 0) {
          console.log('GPU work lost to preemption, charged to the preemptor’s team');
          console.log(
            table(
              ['tenant', 'team', 'preemptions', 'GPU-hours lost', 'cost'],
              r.preemptionLosses.map((l) => [l.tenant, l.team, l.preemptions, l.gpuHours.toFixed(3), usd(l.costUsd)]),
            ),
          );
        }
        if (r.overages.length > 0) {
          console.log('Overage: usage past the tasks’ reservations, in the cost above but charged to no budget (runbooks/overage.md)');
          console.log(
            table(
              ['tenant', 'team', 'project', 'tasks', 'overage'],
              r.overages.map((x) => [x.tenant, x.team, x.project, x.tasks, `$${x.costUsd.toFixed(6)}`]),
            ),
          );
        }
      });
    });

  const audit = program.command('audit').description('the tamper-evident audit log');
  registerAuditCommands(audit, dataDir);
  audit
    .command('show')
    .description("a task's audit trail, oldest first")
    .argument('<taskId>')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (taskId: string, raw) => {
      const o = parseOptions(z.strictObject({ as: scopeName.optional(), json: z.boolean().default(false) }), raw);
      await withContext(dataDir(), async (ctx) => {
        const p = await ctx.principal(o.as, 'audit.show');
        // A task's trail is its tenant's to read; rows of a task the ledger never admitted, a platform admin's.
        const t = await (
          await ctx.db()
        ).query<{ tenant: string }>('SELECT a.tenant FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE t.task_id = $1', [taskId]);
        if (t.rows[0]) await ctx.allow(p, 'read', t.rows[0].tenant, { taskId });
        else if (!p.platformAdmin || p.tenantScope !== null)
          throw refused({ code: 'FORBIDDEN', message: `${taskId} is no task of a tenant ${actorName(p)} may read` }, p);
        const { rows } = await (await ctx.db()).query('SELECT id, at, actor, action, decision, detail FROM audit_log WHERE task_id = $1 ORDER BY id', [taskId]);
        if (rows.length === 0) throw new CliExit(Exit.Failure, `no audit rows for ${taskId}`);
        if (o.json) return printJson(rows);
        console.log(
          table(
            ['id', 'at', 'actor', 'action', 'decision', 'detail'],
            rows.map((r) => [r.id, r.at.toISOString(), r.actor, r.action, r.decision, JSON.stringify(r.detail).slice(0, 80)]),
          ),
        );
      });
    });
}
