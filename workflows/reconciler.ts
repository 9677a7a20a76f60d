import { ActivityFailure, ApplicationFailure, log, proxyActivities } from '@temporalio/workflow';
import { z } from 'zod';
import type { Activities } from '../activities';
import { issuesText } from './schemas';

/**
 * One pass's options: the schedule passes none (policies.reconcile decides); `govloop reconcile`
 * may shorten the grace, cap the batch, keep to one tenant, or only look (dryRun).
 */
export const ReconcileInputSchema = z.strictObject({
  graceSeconds: z
    .number()
    .int()
    .min(0)
    .max(7 * 86_400)
    .optional(),
  limit: z.number().int().min(1).max(5000).optional(),
  dryRun: z.boolean().optional(),
  /** Only this tenant's tasks (an operator's look at one tenant; tests, which share a ledger). */
  tenant: z.string().min(1).max(200).optional(),
});
export type ReconcileInput = z.infer<typeof ReconcileInputSchema>;

type Orphan = Awaited<ReturnType<Activities['findOrphans']>>['orphans'][number];
type Reconciled = NonNullable<Awaited<ReturnType<Activities['reconcileTask']>>>;

export interface ReconcileReport {
  checked: number;
  /** Left alone, by why: running, in-grace, unknown-status, settled. */
  left: Record<string, number>;
  /** Orphans found (a dry run stops here). */
  orphans: Orphan[];
  settled: Reconciled[];
  /** Orphans not settled this pass (their Job could not be deleted, or the ledger would not answer); the next pass tries again. */
  skipped: { taskId: string; why: string }[];
}

/**
 * A pass is retried by the next one, not for ever: a bounded run leaves the schedule's next run
 * (overlap SKIP) free to start.
 */
const ledger = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds', maximumAttempts: 8, nonRetryableErrorTypes: ['DataError'] },
});

/** The Job of a dispatched task goes before its quota does: freed quota over a Job still running would book its GPUs twice. */
const clusterOf = (taskQueue: string) =>
  proxyActivities<Activities>({
    taskQueue,
    startToCloseTimeout: '1 minute',
    scheduleToCloseTimeout: '3 minutes',
    retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds', maximumAttempts: 5 },
  });

/**
 * Started by the `govloop-reconcile` Temporal Schedule (runtime/schedules.ts) and by
 * `govloop reconcile`: settles ledger tasks whose workflow closed without settling them
 * (terminated by hand, timed out, failed, cancelled; gone past retention), releasing their
 * reservation and quota, audited `task.reconciled` with reason RECONCILED. Running tasks are never
 * touched, and a second pass changes nothing.
 */
export async function reconciler(input: ReconcileInput = {}): Promise<ReconcileReport> {
  const parsed = ReconcileInputSchema.safeParse(input ?? {});
  if (!parsed.success) throw ApplicationFailure.nonRetryable(`invalid reconciler input: ${issuesText(parsed.error)}`, 'InvalidReconcileInput');
  const o = parsed.data;
  const scan = await ledger.findOrphans({
    ...(o.graceSeconds !== undefined ? { graceSeconds: o.graceSeconds } : {}),
    ...(o.limit !== undefined ? { limit: o.limit } : {}),
    ...(o.tenant !== undefined ? { tenant: o.tenant } : {}),
  });
  const report: ReconcileReport = { checked: scan.checked, left: scan.left, orphans: scan.orphans, settled: [], skipped: [] };
  if (o.dryRun) return report;
  for (const orphan of scan.orphans) {
    try {
      if (orphan.job) await clusterOf(orphan.job.dispatchQueue).deleteJob({ job: orphan.job.name });
    } catch (err) {
      if (!(err instanceof ActivityFailure)) throw err;
      report.skipped.push({
        taskId: orphan.taskId,
        why: `job ${orphan.job!.name} on ${orphan.job!.cluster} not deleted: ${err.cause?.message ?? err.message}`,
      });
      continue;
    }
    try {
      const r = await ledger.reconcileTask({ taskId: orphan.taskId, ...(o.graceSeconds !== undefined ? { graceSeconds: o.graceSeconds } : {}) });
      if (r) report.settled.push(r);
    } catch (err) {
      if (!(err instanceof ActivityFailure)) throw err;
      report.skipped.push({ taskId: orphan.taskId, why: `not settled: ${err.cause?.message ?? err.message}` });
    }
  }
  log.info('reconcile pass', { checked: report.checked, settled: report.settled.length, skipped: report.skipped.length, left: report.left });
  return report;
}
