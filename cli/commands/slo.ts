import type { Command } from 'commander';
import { z } from 'zod';
import type { ObjectiveResult } from '../../governance/slo';
import { measureSlos } from '../../ledger/slo';
import { withContext } from '../context';
import { parseOptions, printJson, table } from '../util';

const SloOptions = z.strictObject({ tenant: z.string().min(1).max(256).optional(), json: z.boolean().default(false) });

const unit: Record<ObjectiveResult['objective'], (n: number) => string> = {
  stepLatencyP95Ms: (n) => `${round(n)} ms`,
  gateLatencyP95Ms: (n) => `${round(n)} ms`,
  queueWaitP95Seconds: (n) => `${round(n)} s`,
  successRate: (n) => `${round(n * 100)}%`,
  costPerTaskUsd: (n) => `$${n.toFixed(4)}`,
};
const round = (n: number) => String(Math.round(n * 100) / 100);
const label: Record<ObjectiveResult['objective'], string> = {
  stepLatencyP95Ms: 'step latency p95',
  gateLatencyP95Ms: 'step gate p95',
  queueWaitP95Seconds: 'queue wait p95',
  successRate: 'success rate',
  costPerTaskUsd: 'cost per task',
};

/** `govloop slo`: each configured SLO measured from the ledger now (decision 0026, runbooks/slo.md). */
export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;
  program
    .command('slo')
    .description('SLOs from config/policies.yaml measured from the ledger: target, measured value, attainment, error budget left, samples')
    .option('--tenant <tenant>', "only this tenant's SLOs")
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const opts = parseOptions(SloOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const config = ctx.config();
        const reports = await measureSlos(await ctx.db(), config, new Date(), opts.tenant !== undefined ? { tenants: [opts.tenant] } : {});
        if (opts.json) return printJson({ slos: reports });
        if (reports.length === 0)
          return console.log(opts.tenant !== undefined ? `no SLOs for tenant ${opts.tenant} in policies.slos` : 'no SLOs configured (policies.slos)');
        console.log(
          table(
            ['SLO', 'window', 'objective', 'target', 'measured', 'attainment', 'error budget left', 'samples'],
            reports.flatMap((r) =>
              r.objectives.map((o) => [
                `${r.slo}${r.forbidsFallback ? ' (no fallback)' : ''}`,
                `${r.windowDays}d`,
                label[o.objective],
                `${o.objective === 'successRate' ? '≥' : '≤'} ${unit[o.objective](o.target)}`,
                o.measured === null ? '-' : unit[o.objective](o.measured),
                o.met === null ? 'no data' : o.met ? 'met' : 'NOT MET',
                o.errorBudgetRemaining === null ? '-' : o.errorBudgetRemaining <= 0 ? '0% (spent)' : `${round(o.errorBudgetRemaining * 100)}%`,
                o.samples,
              ]),
            ),
          ),
        );
      });
    });
}
