import { randomBytes } from 'node:crypto';
import type { Command } from 'commander';
import { z } from 'zod';
import { type ReconcileReport, reconciler } from '../../workflows/reconciler';
import { TASK_QUEUE_CONTROL } from '../../workflows/messages';
import { withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table, usd } from '../util';
import { settings } from '../../config/settings';

/** A whole number of `what` in [min, max]; each way of being wrong says which (a schema-wide message would also cover the bounds). */
const whole = (what: string, min: number, max: number) =>
  z.coerce
    .number({ error: (i) => (i.code === 'invalid_type' ? `must be a whole number of ${what}` : undefined) })
    .int(`must be a whole number of ${what}`)
    .min(min, `must be at least ${min}`)
    .max(max, `must be at most ${max}`);
const ReconcileOptions = z.strictObject({
  graceSeconds: whole('seconds', 0, 7 * 86_400).optional(),
  limit: whole('tasks', 1, 5000).optional(),
  dryRun: z.boolean().default(false),
  tenant: z.string().min(1).max(200).optional(),
  taskQueue: z
    .string()
    .min(1)
    .max(200)
    .default(() => settings().GOVLOOP_TASK_QUEUE ?? TASK_QUEUE_CONTROL),
  waitSeconds: whole('seconds', 1, 3600).default(120),
  json: z.boolean().default(false),
});

function describe(r: ReconcileReport, dryRun: boolean): string {
  const left =
    Object.entries(r.left)
      .map(([why, n]) => `${n} ${why}`)
      .join(', ') || 'none';
  const lines: string[] = [];
  if (dryRun) {
    lines.push(
      r.orphans.length === 0
        ? 'no orphaned tasks'
        : table(
            ['task', 'state', 'workflow', 'job'],
            r.orphans.map((o) => [o.taskId, o.state, o.workflowStatus, o.job ? `${o.job.name} (${o.job.cluster})` : '-']),
          ),
    );
    lines.push(`dry run: ${r.orphans.length} would be settled; ${r.checked} unsettled past the grace looked at; left alone: ${left}`);
    return lines.join('\n');
  }
  if (r.settled.length > 0) {
    lines.push(
      table(
        ['task', 'kind', 'tenant', 'was', 'now', 'workflow', 'charged', 'released', 'job deleted'],
        r.settled.map((s) => [s.taskId, s.kind, s.tenant, s.previousState, s.state, s.workflowStatus, usd(s.costUsd), usd(s.releasedUsd), s.job ?? '-']),
      ),
    );
  }
  lines.push(
    `${r.settled.length === 0 ? 'nothing to settle' : `settled ${r.settled.length}`}; ${r.checked} unsettled past the grace looked at; left alone: ${left}`,
  );
  for (const s of r.skipped) lines.push(`  skipped ${s.taskId}: ${s.why} (the next pass tries again)`);
  return lines.join('\n');
}

/** `govloop reconcile`: one reconciler pass now, run by the workers like the scheduled ones (runbooks/reconciled.md). */
export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;
  program
    .command('reconcile')
    .description(
      'settle and release tasks whose workflow closed without settling them (terminated, timed out, failed), now; the govloop-reconcile schedule does it every policies.reconcile.everySeconds',
    )
    .option('--grace-seconds <n>', 'leave workflows closed for less than this alone (default: policies.reconcile.graceSeconds)')
    .option('--limit <n>', 'at most this many tasks, oldest first (default: policies.reconcile.batch)')
    .option('--dry-run', 'list the orphans, settle nothing')
    .option('--tenant <tenant>', "only this tenant's tasks")
    .option('--task-queue <name>', 'control task queue of the workers that run the pass (default: $GOVLOOP_TASK_QUEUE or govloop-control)')
    .option('--wait-seconds <n>', 'how long to wait for a worker to finish the pass', '120')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(ReconcileOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const client = await ctx.client();
        const workflowId = `govloop-reconcile-now-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(3).toString('hex')}`;
        const handle = await client.workflow.start(reconciler, {
          taskQueue: o.taskQueue,
          workflowId,
          // No worker on the queue: the pass gives up within the hour rather than run much later.
          workflowExecutionTimeout: '1 hour',
          args: [
            {
              ...(o.graceSeconds !== undefined ? { graceSeconds: o.graceSeconds } : {}),
              ...(o.limit !== undefined ? { limit: o.limit } : {}),
              ...(o.dryRun ? { dryRun: true } : {}),
              ...(o.tenant !== undefined ? { tenant: o.tenant } : {}),
            },
          ],
        });
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), o.waitSeconds * 1000)));
        const r = await Promise.race([handle.result(), timeout]).finally(() => clearTimeout(timer));
        if (r === null) {
          throw new CliExit(
            Exit.Failure,
            `the pass ${workflowId} did not finish within ${o.waitSeconds} s: is a worker (govloop worker, govloop dev) serving task queue ${o.taskQueue}? It runs when one does.`,
            { workflowId },
          );
        }
        if (o.json) return printJson({ workflowId, ...r });
        console.log(describe(r, o.dryRun));
      });
    });
}
