import { log } from '@temporalio/activity';
import { type AdmissionResult, admit } from '../governance/admission';
import { actorName } from '../governance/authz';
import { Intent } from '../governance/intent';
import type { ReasonCode } from '../governance/reasons';
import type { Victim } from '../governance/quota';
import type { Caller } from '../identity/authenticate';
import { appendAudit } from '../ledger/audit';
import { auditRefusal, checkAccess } from '../ledger/authz';
import { budgetHeadroom } from '../ledger/budgets';
import { openPreemption } from '../ledger/quota';
import { taskOwnership, teamGpusInUse, updateTask, upsertTask } from '../ledger/tasks';
import { type Timing, waitsForQuota } from '../config/task-queues';
import type { ReserveResult } from '../ledger/budgets';
import { type ActivityContext, callingRunId } from './context';
import { decideQuota } from './quota';
import { reserveTask } from './reservation';

/**
 * Admission (governance/admission.ts decides, with the quota decision of activities/quota.ts):
 * who submits, the decision over a ledger snapshot, the preemptions it orders, all recorded on
 * the task and in the audit log.
 */
export function createAdmissionActivities(ctx: ActivityContext) {
  const { db, config, clock, timing, whoIs, wakeTasks } = ctx;
  return {
    /**
     * Admission (pure policy over a ledger snapshot), recorded on the task and in the audit log.
     * First: who submits (from the credential), may they submit in the intent's tenant, and is the
     * task id this run's own. A refusal there is audited and writes nothing else: the workflow
     * ends without touching the ledger again (`refused`).
     */
    async admitTask(input: {
      taskId: string;
      intent: Intent;
      requester: string;
      attempt: number;
      credential?: string;
      /** The task was Queued (or Preempted) in the ledger before this ask: a release during it woke it. */
      queuedBefore?: boolean;
      /**
       * Reserve in the same call once admission has answered (not rejected, and no victims to tell
       * first), as reserveBudget would right after, and record the task Queued when the
       * reservation must wait (as recordState would): one local activity, not three (issue 13,
       * decision 0035). Its answer is `reserved`; absent where the caller must still call
       * reserveBudget.
       */
      reserve?: { requeued?: boolean };
    }): Promise<{
      result: AdmissionResult;
      timing: Timing;
      preempt?: Victim[];
      requester?: string;
      refused?: { code: string; message: string };
      /** Queued: the task's place among the requests waiting for its quota (1: first). */
      queuePosition?: number;
      /**
       * Queued for quota by an ask it was not Queued for before: the quota read again once this
       * answer was committed (`Queued`, so later releases wake it) has room, so a release came
       * during the ask, and its wake may have missed the task. true: ask again soon; false: no
       * release was missed, wait to be woken. Absent otherwise.
       */
      passedBy?: boolean;
      /** Asked for with `reserve`, and reserved (or refused) here: reserveBudget's answer. */
      reserved?: ReserveResult;
    }> {
      const { taskId, intent } = input;
      const now = clock();
      const runId = callingRunId();
      const tenant = intent.attribution.tenant;
      const refuse = (code: string, message: string) => ({
        result: { decision: 'rejected' as const, reasons: [{ code: code as ReasonCode, message, limit: null, requested: null, policy: 'auth' }] },
        timing,
        refused: { code, message },
      });
      // A run admitted before (queued again, or readmitted after a preemption) keeps the requester
      // it was admitted with: its credential may have expired in the meantime, rightly.
      const known = await db.tx((c) => taskOwnership(c, taskId, runId));
      let requester: string;
      if (known.owner === 'mine' && known.requester !== null) {
        requester = known.requester;
      } else {
        // A workflow started straight through Temporal skipped the SDK's and CLI's parse: parse here.
        // A ZodError is a data error (activities/errors.ts): the task ends Failed, nothing retried.
        Intent.parse(intent);
        const caller: Caller = input.credential ? { credential: input.credential } : { as: input.requester };
        const who = await whoIs(db, caller);
        if (!who.ok) {
          await auditRefusal(db, null, 'submit', who, { tenant, taskId, claimed: input.credential ? null : input.requester }, taskId);
          return refuse(who.code, who.message);
        }
        const principal = who.principal;
        requester = actorName(principal);
        const gate = await db.tx(async (c) => {
          const owned = await taskOwnership(c, taskId, runId);
          if (owned.owner === 'reused') {
            const d = { code: 'TASK_ID_REUSED', message: `task id ${taskId} belongs to another run (${owned.runId ?? 'closed'}); submit under a new id` };
            await auditRefusal(c, principal, 'submit', d, { tenant, taskId, runId }, taskId);
            return d;
          }
          const d = await checkAccess(c, principal, 'submit', tenant, { taskId });
          if (!d.allowed) return d;
          await upsertTask(c, { taskId, intent, requester, state: 'Admitting', runId });
          return null;
        });
        if (gate) return refuse(gate.code, gate.message);
      }
      const budgets = await budgetHeadroom(db, intent.attribution, now);
      const gpuType = intent.resources.gpuType;
      const teamGpus = gpuType ? await teamGpusInUse(db, intent.attribution.tenant, intent.attribution.team, gpuType, taskId) : 0;
      const quota = await decideQuota(ctx, taskId, intent);
      const result = admit(intent, { config, now: now.toISOString(), budgets, teamGpusInUse: teamGpus, ...(quota ? { quota } : {}) });
      // Quota says preempt, and nothing else holds the task back: the victims are told (by the workflow) to make room.
      const preempt =
        quota?.decision === 'preempt' && result.decision === 'queued' && result.reasons.every((r) => r.code === 'PREEMPTION_PENDING')
          ? quota.victims
          : undefined;
      await db.tx(async (c) => {
        for (const v of preempt ?? []) {
          await openPreemption(c, {
            victimTaskId: v.taskId,
            preemptorTaskId: taskId,
            by: 'govloop',
            reason: `${v.why}: ${taskId} of ${intent.attribution.tenant}/${intent.attribution.team} needs ${intent.resources.gpus} ${gpuType} GPUs`,
            preemptorTenant: intent.attribution.tenant,
            preemptorTeam: intent.attribution.team,
            gpuType: gpuType ?? null,
            gpus: v.gpus,
          });
        }
        await updateTask(c, taskId, {
          decision: result.decision,
          reasons: result.reasons,
          state: result.decision === 'rejected' ? 'Rejected' : result.decision === 'queued' ? 'Queued' : 'Admitting',
          ...(result.decision !== 'rejected' ? { plan: result.plan } : {}),
        });
        await appendAudit(c, {
          actor: 'govloop',
          taskId,
          action: 'admission',
          decision: result.decision,
          detail: {
            requester,
            reasons: result.reasons,
            worstCaseUsd: result.decision !== 'rejected' ? result.plan.worstCaseMicros / 1e6 : null,
            ...(quota?.decision === 'admitted' ? { quota: quota.mode, borrowed: quota.borrowed } : {}),
            ...(preempt ? { preempt: preempt.map((v) => ({ taskId: v.taskId, why: v.why, gpus: v.gpus, lostGpuSeconds: v.lostGpuSeconds })) } : {}),
          },
          dedupeKey: `${taskId}:admission:${input.attempt}`,
        });
      });
      log.info('admission', {
        taskId,
        decision: result.decision,
        reasons: result.reasons.map((r) => r.code),
        ...(preempt ? { preempt: preempt.map((v) => v.taskId) } : {}),
      });
      const queuePosition = result.decision === 'queued' && quota && 'position' in quota ? quota.position : undefined;
      // Fair share holds this one back for another team's request that fits now: that one may be
      // asleep (a release wakes its own team's waiters first), so wake it.
      if (result.decision === 'queued' && quota?.decision === 'queued' && quota.ahead) await wakeTasks([quota.ahead], taskId);
      // A release whose wake was read before this answer was committed did not see the task as
      // queued. Once committed, every later release wakes it; one before shows as room now.
      let passedBy: boolean | undefined;
      if (!input.queuedBefore && result.decision === 'queued' && quota && waitsForQuota(result.reasons)) {
        passedBy = (await decideQuota(ctx, taskId, intent))?.decision !== 'queued';
      }
      // What the workflow would do next (workflows/task/admission.ts): reserve, quota checked again under the lock.
      const reserved =
        input.reserve && result.decision !== 'rejected' && !preempt
          ? await reserveTask(ctx, { taskId, intent, plan: result.plan, ...(input.reserve.requeued ? { requeued: true } : {}) })
          : undefined;
      // Not reserved, to ask again: Queued with the reservation's reasons, where the workflow's recordState put it before.
      if (reserved && !reserved.ok && reserved.retry) await updateTask(db, taskId, { state: 'Queued', reasons: reserved.reasons });
      return {
        result,
        timing,
        requester,
        ...(preempt ? { preempt } : {}),
        ...(queuePosition !== undefined ? { queuePosition } : {}),
        ...(passedBy !== undefined ? { passedBy } : {}),
        ...(reserved ? { reserved } : {}),
      };
    },
  };
}
