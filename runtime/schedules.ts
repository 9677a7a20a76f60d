import { type Client, ScheduleAlreadyRunning, ScheduleOverlapPolicy } from '@temporalio/client';
import type { Queryable } from '../ledger/db';
import type { LadderConfig } from '../governance/ladder';
import { crossedBudgets, listBudgets } from '../ledger/ladder';
import { type BudgetKey, TASK_QUEUE_CONTROL, budgetControllerId, budgetNudgeSignal, requeueSignal } from '../workflows/messages';
import { auditCheckpoint, budgetController, meteringRollup, reconciler } from '../workflows';
import type { ReconcileInput } from '../workflows/reconciler';

export const METERING_ROLLUP_SCHEDULE = 'govloop-metering-rollup';

/**
 * Creates the meteringRollup Temporal Schedule, or brings an existing one to the given interval
 * and task queue. Every worker start calls it: the first creates, the others find it there.
 * Overlaps are skipped (a rollup is idempotent, a second one at the same time is wasted work);
 * missed runs are caught up once, not one by one.
 */
export async function ensureRollupSchedule(
  client: Client,
  opts: { everySeconds: number; taskQueue?: string; scheduleId?: string },
): Promise<{ scheduleId: string; created: boolean }> {
  const scheduleId = opts.scheduleId ?? METERING_ROLLUP_SCHEDULE;
  const taskQueue = opts.taskQueue ?? TASK_QUEUE_CONTROL;
  const spec = { intervals: [{ every: opts.everySeconds * 1000 }] };
  const action = { type: 'startWorkflow' as const, workflowType: meteringRollup, workflowId: `${scheduleId}-run`, taskQueue, args: [] as [] };
  return ensureIntervalSchedule(client, { scheduleId, spec, action, what: 'hourly and daily usage rollups (govloop usage / report read them)' });
}

export const AUDIT_CHECKPOINT_SCHEDULE = 'govloop-audit-checkpoint';

/**
 * Creates the auditCheckpoint Temporal Schedule (signed checkpoints of the audit chain outside
 * the database, decision 0019), or brings an existing one to the given interval and task queue;
 * like ensureRollupSchedule, every worker start calls it. Overlaps are skipped and missed runs
 * caught up once: one checkpoint covers every row since the last.
 */
export async function ensureAuditCheckpointSchedule(
  client: Client,
  opts: { everySeconds: number; taskQueue?: string; scheduleId?: string },
): Promise<{ scheduleId: string; created: boolean }> {
  const scheduleId = opts.scheduleId ?? AUDIT_CHECKPOINT_SCHEDULE;
  const taskQueue = opts.taskQueue ?? TASK_QUEUE_CONTROL;
  const spec = { intervals: [{ every: opts.everySeconds * 1000 }] };
  const action = { type: 'startWorkflow' as const, workflowType: auditCheckpoint, workflowId: `${scheduleId}-run`, taskQueue, args: [] as [] };
  return ensureIntervalSchedule(client, { scheduleId, spec, action, what: 'signed checkpoints of the audit chain (govloop audit verify compares with them)' });
}

export const RECONCILE_SCHEDULE = 'govloop-reconcile';

/**
 * Creates the reconciler's Temporal Schedule (tasks whose workflow closed without settling them
 * are settled and released, runbooks/reconciled.md), or brings an existing one to the given
 * interval and task queue; every worker start calls it. Overlaps are skipped (a pass is
 * idempotent) and missed runs caught up once: one pass covers every orphan since the last.
 * `input`: the passes' options (none in production: policies.reconcile decides).
 */
export async function ensureReconcileSchedule(
  client: Client,
  opts: { everySeconds: number; taskQueue?: string; scheduleId?: string; input?: ReconcileInput },
): Promise<{ scheduleId: string; created: boolean }> {
  const scheduleId = opts.scheduleId ?? RECONCILE_SCHEDULE;
  const taskQueue = opts.taskQueue ?? TASK_QUEUE_CONTROL;
  const spec = { intervals: [{ every: opts.everySeconds * 1000 }] };
  const action = {
    type: 'startWorkflow' as const,
    workflowType: reconciler,
    workflowId: `${scheduleId}-run`,
    taskQueue,
    args: [opts.input ?? {}] as [ReconcileInput],
  };
  return ensureIntervalSchedule(client, {
    scheduleId,
    spec,
    action,
    what: 'settles and releases tasks whose workflow closed without settling them (govloop reconcile runs a pass now)',
  });
}

/**
 * Starts the budget's controller, or nudges the running one to look at the ledger now
 * (signal-with-start: exactly one controller per budget, whoever calls first).
 */
export async function startBudgetController(client: Client, budget: BudgetKey, taskQueue = TASK_QUEUE_CONTROL): Promise<{ workflowId: string; runId: string }> {
  const workflowId = budgetControllerId(budget);
  const handle = await client.workflow.signalWithStart(budgetController, {
    workflowId,
    taskQueue,
    args: [{ budget }],
    signal: budgetNudgeSignal,
    signalArgs: [],
  });
  return { workflowId, runId: handle.signaledRunId };
}

/** A controller for every budget in the ledger (worker start: budgets set while no worker ran get one too). */
export async function ensureBudgetControllers(client: Client, db: Queryable, taskQueue = TASK_QUEUE_CONTROL): Promise<number> {
  const budgets = await listBudgets(db);
  for (const b of budgets) await startBudgetController(client, b, taskQueue);
  return budgets.length;
}

/**
 * Nudges the controllers of the budgets an attribution's usage just pushed past a threshold, so
 * the ladder moves now instead of at their next poll. Best effort: a controller not running (or
 * a signal that fails) is caught by its next poll or the next worker start.
 */
export async function nudgeCrossed(
  client: Client,
  db: Queryable,
  a: { tenant: string; team: string; project: string },
  ladder: LadderConfig,
  now = new Date(),
): Promise<number> {
  const crossed = await crossedBudgets(db, a, now, ladder);
  for (const b of crossed)
    await client.workflow
      .getHandle(budgetControllerId(b))
      .signal(budgetNudgeSignal)
      .catch(() => undefined);
  return crossed.length;
}

/**
 * Creates an interval schedule, or brings an existing one's spec and action up to date (its
 * policies and memo stay as created): overlap SKIP, missed runs caught up once within a day.
 */
async function ensureIntervalSchedule<A extends Parameters<Client['schedule']['create']>[0]['action']>(
  client: Client,
  s: { scheduleId: string; spec: { intervals: { every: number }[] }; action: A; what: string },
): Promise<{ scheduleId: string; created: boolean }> {
  const { scheduleId, spec, action } = s;
  try {
    await client.schedule.create({
      scheduleId,
      spec,
      action,
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 day' },
      memo: { what: s.what },
    });
    return { scheduleId, created: true };
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
    await client.schedule.getHandle(scheduleId).update((prev) => ({ ...prev, spec, action }));
    return { scheduleId, created: false };
  }
}

/**
 * Wakes tasks queued for the GPUs `releasedBy` just gave back (ledger/quota.ts tasksToWake chose
 * them), so they ask admission again now instead of at their next recheck. Best effort: a task
 * that ended meanwhile, or a signal that fails, is covered by the woken task's own recheck.
 * Answers how many signals were delivered.
 */
export async function wakeQueued(client: Client, taskIds: readonly string[], releasedBy: string): Promise<number> {
  const sent = await Promise.all(
    taskIds.map((id) =>
      client.workflow
        .getHandle(id)
        .signal(requeueSignal, { releasedBy })
        .then(
          () => 1,
          () => 0,
        ),
    ),
  );
  return sent.reduce((a, b) => a + b, 0);
}
