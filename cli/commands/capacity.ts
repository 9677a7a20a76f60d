import type { Command } from 'commander';
import { z } from 'zod';
import { GovloopNotFoundError, GovloopStateError } from '../../sdk';
import { preemptionLosses, queuedTasks } from '../../ledger/quota';
import { withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table } from '../util';

const QueueOptions = z.strictObject({ tenant: z.string().min(1).optional(), json: z.boolean().default(false) });
const PreemptOptions = z.strictObject({
  as: z.string().min(1).max(128).optional(),
  reason: z.string({ error: 'required: why (it goes into the audit log)' }).min(1).max(1000),
  json: z.boolean().default(false),
});
const LossesOptions = z.strictObject({ tenant: z.string().min(1).optional(), json: z.boolean().default(false) });

/** Quotas and preemption for operators: the queue, an operator's preemption, and work lost to preemption. */
export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;

  program
    .command('queue')
    .description('tasks waiting for quota or capacity, oldest first, with their position and why they wait')
    .option('--tenant <tenant>')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const opts = parseOptions(QueueOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const rows = await queuedTasks(await ctx.db(), ctx.config().policies, opts.tenant);
        if (opts.json) return printJson(rows);
        if (rows.length === 0) return console.log('the queue is empty');
        console.log(
          table(
            ['task', 'state', 'tenant/team', 'priority', 'GPUs', 'position', 'queued at', 'why'],
            rows.map((r) => [
              r.taskId,
              r.state,
              `${r.tenant}/${r.team}`,
              r.priority,
              r.gpuType ? `${r.gpus} x ${r.gpuType}` : '-',
              r.position,
              r.queuedAt,
              r.reasons.map((x) => `${x.code}: ${x.message}`).join('; ') || '-',
            ]),
          ),
        );
      });
    });

  program
    .command('preempt')
    .description('preempt a running cluster task: it checkpoints, is suspended after the grace period, requeued, and resumes from its checkpoint (audited)')
    .argument('<taskId>')
    .option('--as <user>', "who preempts (auth: none only; a tenant-admin of the task's tenant)")
    .option('--reason <text>', 'why (required)')
    .option('--json', 'print JSON')
    .action(async (taskId: string, raw) => {
      const opts = parseOptions(PreemptOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        let r;
        try {
          r = await (await ctx.gov()).preempt(taskId, { reason: opts.reason, ...(opts.as !== undefined ? { as: opts.as } : {}) });
        } catch (err) {
          if (err instanceof GovloopStateError)
            throw new CliExit(Exit.Rejected, `${err.message}: only a cluster job that holds GPUs can be preempted`, { taskId, code: 'not-preemptible' });
          if (err instanceof GovloopNotFoundError) {
            // The task has ended (or never was): say which, as for a running one that holds no GPUs.
            const s = await (await ctx.gov()).status(taskId).catch(() => null);
            if (s)
              throw new CliExit(Exit.Rejected, `task ${taskId} is ${s.state}: only a cluster job that holds GPUs can be preempted`, {
                taskId,
                state: s.state,
                code: 'not-preemptible',
              });
          }
          throw err;
        }
        if (opts.json) return printJson({ taskId, requested: true, by: r.by, reason: opts.reason });
        console.log(`preemption of ${taskId} accepted from ${r.by}: it checkpoints, is suspended and requeued (watch: govloop status ${taskId})`);
      });
    });

  program
    .command('preemptions')
    .description("work lost to preemption (GPU-hours since the victims' checkpoints), by the team that preempted")
    .option('--tenant <tenant>', 'preemptor tenant')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const opts = parseOptions(LossesOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const rows = await preemptionLosses(await ctx.db(), opts.tenant);
        if (opts.json) return printJson(rows);
        console.log(
          table(
            ['preemptor team', 'preemptions', 'lost GPU-hours'],
            rows.map((r) => [r.preemptorTeam, r.preemptions, r.lostGpuHours]),
          ),
        );
      });
    });
}
