import { gpuQuotaFor } from '../governance/flat-quota';
import type { Intent } from '../governance/intent';
import { type Plan, quotaGpusOf } from '../governance/plan';
import type { Reason } from '../governance/reasons';
import { appendAudit } from '../ledger/audit';
import { type ReserveResult, release, reserve } from '../ledger/budgets';
import type { Queryable } from '../ledger/db';
import { quotaLockKey } from '../ledger/quota';
import { updateTask } from '../ledger/tasks';
import { type TaskUsage, taskUsage } from '../ledger/usage';
import { type ActivityContext, gpuRequest } from './context';
import { decideQuota } from './quota';

/**
 * A task's hold on its budgets: the reservation of its worst case (with the GPU quota checked
 * again under the lock) and, at the end, the settlement that releases what is left.
 */
export function createReservationActivities(ctx: ActivityContext) {
  const { db, wakeQueued } = ctx;
  return {
    /** Reserves the plan's worst case against every covering budget, atomically; re-checks GPU quota. */
    reserveBudget: (input: ReserveInput): Promise<ReserveResult> => reserveTask(ctx, input),

    /** Settle: release what is left of the reservation, close the task, audit the charge. Idempotent. */
    async settleTask(input: { taskId: string; state: string; reasons: Reason[] }): Promise<TaskUsage> {
      const { taskId, state, reasons } = input;
      const released = await release(db, taskId);
      const usage = await taskUsage(db, taskId);
      await db.tx(async (c) => {
        await updateTask(c, taskId, { state, finished: true, ...(reasons.length ? { reasons } : {}) });
        await appendAudit(c, {
          actor: 'govloop',
          taskId,
          action: 'settle',
          decision: state,
          detail: { costUsd: usage.costMicros / 1e6, releasedUsd: released / 1e6, gpuSeconds: usage.gpuSeconds, reasons },
          dedupeKey: `${taskId}:settle`,
        });
      });
      // Its GPUs (if it held any) are free: the tasks queued for them ask again now.
      await wakeQueued(taskId);
      return usage;
    },
  };
}

export interface ReserveInput {
  taskId: string;
  intent: Intent;
  plan: Plan;
  requeued?: boolean;
}

/** Reserves the plan's worst case against every covering budget, atomically; re-checks GPU quota (reserveBudget, and admitTask's `reserve`). */
export async function reserveTask(ctx: ActivityContext, input: ReserveInput): Promise<ReserveResult> {
  const { db, config, backend, clock, nudgeBudgets, wakeTasks } = ctx;
  const { intent, plan } = input;
  const gpuType = plan.gpu.type;
  const cohortQuota = gpuType !== null && config.policies.cohorts.some((c) => c.gpuType === gpuType);
  const capacity = gpuType && (cohortQuota || input.requeued) && backend.capacity ? await backend.capacity(gpuType, gpuRequest(intent)) : undefined;
  // The re-check's fair-share answer names the request that goes first: it is woken, as admission does.
  let ahead: string | undefined;
  const quota =
    plan.gpu.count > 0 && gpuType
      ? {
          gpuType,
          gpus: quotaGpusOf(plan.gpu),
          ...gpuQuotaFor(config.policies, intent.attribution, gpuType),
          lockKey: quotaLockKey(config.policies, intent.attribution, gpuType),
          // Cohorts (and a task back from preemption): the whole quota decision again, under the lock.
          ...(cohortQuota || input.requeued
            ? {
                recheck: async (q: Queryable) => {
                  const d = await decideQuota(ctx, input.taskId, intent, q, { capacity });
                  ahead = d?.decision === 'queued' ? d.ahead : undefined;
                  return d === null || d.decision === 'admitted' ? null : d.reason;
                },
              }
            : {}),
        }
      : undefined;
  const r = await reserve(db, input.taskId, intent.attribution, plan.worstCaseMicros, clock(), quota, { requeued: input.requeued ?? false });
  if (r.ok) await nudgeBudgets(intent.attribution);
  else if (ahead) await wakeTasks([ahead], input.taskId);
  return r;
}
