import type { Command } from 'commander';
import { z } from 'zod';
import { GovloopNotFoundError } from '../../sdk';
import { appendAudit } from '../../ledger/audit';
import { preemptionLosses, queuedTasks } from '../../ledger/quota';
import { GovState, preemptSignal, statusQuery } from '../../workflows/messages';
import { withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table } from '../util';

const QueueOptions = z.strictObject({ tenant: z.string().min(1).optional(), json: z.boolean().default(false) });
const PreemptOptions = z.strictObject({
  as: z.string({ error: 'required: who preempts' }).min(1).max(128),
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
            rows.map((r) => [r.taskId, r.state, `${r.tenant}/${r.team}`, r.priority, r.gpuType ? `${r.gpus} x ${r.gpuType}` : '-', r.position, r.queuedAt, r.reasons.map((x) => `${x.code}: ${x.message}`).join('; ') || '-']),
          ),
        );
      });
    });

  program
    .command('preempt')
    .description('preempt a running cluster task: it checkpoints, is suspended after the grace period, requeued, and resumes from its checkpoint (audited)')
    .argument('<taskId>')
    .option('--as <user>', 'who preempts (required)')
    .option('--reason <text>', 'why (required)')
    .option('--json', 'print JSON')
    .action(async (taskId: string, raw) => {
      const opts = parseOptions(PreemptOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const handle = (await ctx.client()).workflow.getHandle(taskId);
        let s;
        try {
          s = await handle.query(statusQuery);
        } catch (err) {
          if ((err as Error).name === 'WorkflowNotFoundError') throw new GovloopNotFoundError(`task ${taskId} not found`);
          throw err;
        }
        const holding: string[] = [GovState.Reserved, GovState.Dispatched, GovState.Running];
        if (s.plan?.placement !== 'cluster' || !holding.includes(s.state)) {
          throw new CliExit(Exit.Rejected, `task ${taskId} is ${s.state}${s.plan?.placement === 'hosted' ? ' (hosted, no cluster job)' : ''}: only a cluster job that holds GPUs can be preempted`, { taskId, state: s.state, code: 'not-preemptible' });
        }
        const db = await ctx.db();
        await db.tx((c) => appendAudit(c, { actor: opts.as, taskId, action: 'preempt.request', decision: 'requested', detail: { reason: opts.reason } }));
        await handle.signal(preemptSignal, { by: opts.as, reason: opts.reason, preemptor: null });
        if (opts.json) return printJson({ taskId, requested: true, by: opts.as, reason: opts.reason });
        console.log(`preemption requested for ${taskId}: it checkpoints, is suspended and requeued (watch: govloop status ${taskId})`);
      });
    });

  program
    .command('preemptions')
    .description('work lost to preemption (GPU-hours since the victims\' checkpoints), by the team that preempted')
    .option('--tenant <tenant>', 'preemptor tenant')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const opts = parseOptions(LossesOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const rows = await preemptionLosses(await ctx.db(), opts.tenant);
        if (opts.json) return printJson(rows);
        console.log(table(['preemptor team', 'preemptions', 'lost GPU-hours'], rows.map((r) => [r.preemptorTeam, r.preemptions, r.lostGpuHours])));
      });
    });
}
