import { createHash } from 'node:crypto';
import { ApplicationFailure, Context, log } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type { GovConfig } from '../config/load';
import { type AdmissionResult, admit, gpuQuotaFor } from '../governance/admission';
import { Intent } from '../governance/intent';
import type { BudgetKey, Timing } from '../workflows/messages';

export type { Timing };
import { type Plan, quotaGpus, quotaGpusOf } from '../governance/plan';
import { costMicros, priceVersionAt, unitPriceUsd, usdToMicros } from '../governance/pricing';
import type { Reason, ReasonCode } from '../governance/reasons';
import { type StepTotals, type StepUsage, allowedModels, evaluateStep } from '../governance/step-gate';
import { type ClusterBackend, type ClusterCapacity, type CreateResult, type GpuRequest, jobName } from '../cluster/backend';
import { type DecideResult, approvalMatches, decideApproval, escalateApproval, getApproval, requestApproval, sameIdentity } from '../ledger/approvals';
import { type SigningKey, loadOrCreateSigningKey } from '../identity/signing';
import { type ApprovalClaims, argsDigest as digestArgs, signApprovalToken } from '../identity/approval-token';
import { appendAudit, canonicalJson } from '../ledger/audit';
import { budgetHeadroom, release, reserve, type ReserveResult } from '../ledger/budgets';
import type { Db, Queryable } from '../ledger/db';
import { teamGpusInUse, updateTask, upsertTask } from '../ledger/tasks';
import { type TaskOverage, type TaskUsage, type UsageEvent, overageCrossed, recordUsageIn, taskUsage } from '../ledger/usage';
import { type RollupRun, rollUp } from '../ledger/rollups';
import {
  type LeaseGrant,
  type LeaseReport,
  type LeaseScope,
  closeLease,
  expireLeases,
  grantLease,
  reportLease,
  scopeBurnMicrosPerHour,
} from '../ledger/leases';
import {
  type BudgetSnapshot,
  type LadderChange,
  applyLadderChange,
  budgetIdOf,
  budgetSnapshot,
  recordBudgetPreemption,
  runningGpuWork,
  scopeLadder,
} from '../ledger/ladder';
import { type LadderMove, type LadderStep, ladderDegrade, ladderMove, preemptionVictim, stepRank } from '../governance/ladder';
import { fallbackForbiddenBy, sloLabel } from '../governance/slo';
import { recordSloHold, recordStep } from '../ledger/slo';
import { approverRoles } from '../governance/tools';
import { callTool } from '../tools/executor';
import { type QuotaDecision, type Victim, admitQuota } from '../governance/quota';
import { closePreemption, openPreemption, quotaLockKey, quotaState } from '../ledger/quota';
import { createAuditActivities } from './audit';
import { createReconcileActivities } from './reconcile';
import { createProgramActivities } from './program';
import { type Authenticator, type Caller, createAuthenticator } from '../identity/authenticate';
import { IdentityError } from '../identity/errors';
import { type Principal, actorName } from '../governance/authz';
import { auditRefusal, checkAccess } from '../ledger/authz';
import { taskOwnership } from '../ledger/tasks';
import { own } from '../governance/own';
import { capReached, runLimit, usdCeilingMicros } from '../governance/run-limit';
import { type ActivityDeps, activityContext } from './context';
import { notify } from './notify';
import { createClusterActivities } from './cluster';
import { createAgentStepActivities } from './agent-steps';
import { createApprovalActivities } from './approvals';
import { createCompensationActivities } from './compensation';
import { createTaskCallActivities } from './task-calls';
import { createBudgetControlActivities } from './budget-control';
import { createLeaseActivities } from './leases';
import { createMeteringActivities } from './metering';

export type { ActivityDeps };
export type { GateOutcome } from './agent-steps';
export type { Observation } from './cluster';
export { notify };

/**
 * Side effects of the governance loop, thin over governance/ (decisions), ledger/ and cluster/.
 * Every write is idempotent by task id plus a step or sequence number (design principle 2).
 */
export function createActivities(deps: ActivityDeps) {
  const { db, config, backend, dispatchQueue, clock = () => new Date(), auth = createAuthenticator(deps.config.auth) } = deps;
  const mechanisms = activityContext(deps);
  const timing: Timing = {
    pollMillis: config.simulation.pollMillis,
    queueRetryMillis: config.simulation.queueRetryMillis,
    dispatchQueue,
    compensation: config.policies.compensation,
    preemptGraceMillis: config.policies.preemption.graceMillis,
    retries: config.policies.retries,
    continueAsNewEvents: config.policies.history.continueAsNewEvents,
  };

  /** Usage or a reservation may have pushed a budget past a threshold: its controller looks now (best effort). */
  const nudgeBudgets = async (a: Pick<Intent['attribution'], 'tenant' | 'team' | 'project'>) => {
    try {
      await deps.nudgeBudgets?.(Context.current().client, a, clock());
    } catch (err) {
      log.warn('budget controller nudge failed (its next poll catches up)', { error: String(err) });
    }
  };

  /** The GPU part of an intent (translate() copies it into the plan unchanged), as the cluster places it. */
  function gpuRequest(intent: Intent): GpuRequest {
    const r = intent.resources;
    return {
      gpus: r.gpus,
      gpuType: r.gpuType ?? '',
      sharing: r.sharing,
      ...(r.gpuMilli !== undefined ? { gpuMilli: r.gpuMilli } : {}),
      ...(r.topology ? { topology: r.topology } : {}),
    };
  }

  /**
   * The quota decision (governance/quota.ts) over a ledger snapshot and the cluster's nodes, for a
   * GPU intent whose type the cluster has; null otherwise (admission then rejects or needs none).
   * `q`: the transaction to read the quota state in. `capacity`: the cluster's capacity, read
   * before that transaction — the backend reads through its own connections, and the embedded
   * ledger has one session: a read on another connection inside the transaction would wait for it
   * forever.
   */
  async function decideQuota(
    taskId: string,
    intent: Intent,
    q: Queryable = db,
    known?: { capacity: ClusterCapacity | undefined },
  ): Promise<QuotaDecision | null> {
    const { gpuType } = intent.resources;
    const gpus = quotaGpus(intent.resources);
    if (gpus <= 0 || !gpuType || !config.cluster.gpuTypes[gpuType]) return null;
    const a = intent.attribution;
    const capacity = known ? known.capacity : backend.capacity ? await backend.capacity(gpuType, gpuRequest(intent)) : undefined;
    const staleAfterMs = config.policies.preemption.graceMillis + 60_000;
    const state = await quotaState(
      q,
      config.policies,
      { taskId, tenant: a.tenant, team: a.team, gpuType },
      gpuQuotaFor(config.policies, a, gpuType),
      capacity,
      staleAfterMs,
    );
    const created = await q.query<{ created_at: Date }>('SELECT created_at FROM tasks WHERE task_id = $1', [taskId]);
    return admitQuota(state, {
      taskId,
      tenant: a.tenant,
      team: a.team,
      gpus,
      priority: own(config.policies.priorities, intent.priority) ?? 0,
      queuedAt: (created.rows[0]?.created_at ?? clock()).toISOString(),
    });
  }

  /** The principal of a call, or why there is none (the identity error's code). */
  async function whoIs(q: Queryable, caller: Caller): Promise<{ ok: true; principal: Principal } | { ok: false; code: string; message: string }> {
    try {
      return { ok: true, principal: await auth.authenticate(q, caller) };
    } catch (err) {
      if (err instanceof IdentityError) return { ok: false, code: err.code, message: err.message };
      throw err;
    }
  }

  return {
    ...createAuditActivities({ db, config }),
    ...createReconcileActivities({ db, config, cluster: backend.cluster, dispatchQueue, clock }),
    ...createProgramActivities({ db, config, auth, notify, clock }),
    ...createClusterActivities(mechanisms),
    ...createAgentStepActivities(mechanisms),
    ...createApprovalActivities(mechanisms),
    ...createCompensationActivities(mechanisms),
    ...createTaskCallActivities(mechanisms),
    ...createMeteringActivities(mechanisms),
    ...createBudgetControlActivities(mechanisms),
    ...createLeaseActivities(mechanisms),
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
    }): Promise<{ result: AdmissionResult; timing: Timing; preempt?: Victim[]; requester?: string; refused?: { code: string; message: string } }> {
      const { taskId, intent } = input;
      const now = clock();
      const runId = Context.current().info.workflowExecution?.runId ?? '';
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
      const quota = await decideQuota(taskId, intent);
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
      return { result, timing, requester, ...(preempt ? { preempt } : {}) };
    },

    /** Reserves the plan's worst case against every covering budget, atomically; re-checks GPU quota. */
    async reserveBudget(input: { taskId: string; intent: Intent; plan: Plan; requeued?: boolean }): Promise<ReserveResult> {
      const { intent, plan } = input;
      const gpuType = plan.gpu.type;
      const cohortQuota = gpuType !== null && config.policies.cohorts.some((c) => c.gpuType === gpuType);
      const capacity = gpuType && (cohortQuota || input.requeued) && backend.capacity ? await backend.capacity(gpuType, gpuRequest(intent)) : undefined;
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
                      const d = await decideQuota(input.taskId, intent, q, { capacity });
                      return d === null || d.decision === 'admitted' ? null : d.reason;
                    },
                  }
                : {}),
            }
          : undefined;
      const r = await reserve(db, input.taskId, intent.attribution, plan.worstCaseMicros, clock(), quota, { requeued: input.requeued ?? false });
      if (r.ok) await nudgeBudgets(intent.attribution);
      return r;
    },

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
      return usage;
    },
  };
}

export type Activities = ReturnType<typeof createActivities>;
