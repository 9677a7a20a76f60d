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
import { notify, notifyOverage } from './notify';
import { createBudgetControlActivities } from './budget-control';
import { createLeaseActivities } from './leases';
import { createMeteringActivities } from './metering';

export type { ActivityDeps };
export { notify };

/** The gate's answer, as the workflow sees it. */
export type GateOutcome =
  | {
      answer: 'allow' | 'degrade';
      totals: StepTotals;
      model: string;
      costMicros: number;
      sideEffect: boolean;
      argsDigest: string | null;
      approvalToken?: string;
    }
  | { answer: 'deny'; reason: Reason }
  | { answer: 'await-approval'; approvalId: string; argsDigest: string; requestedAt: number; escalateAfterMs: number; expiresAt: number; tiers: number };

const digest = digestArgs;

async function upsertCompensation(
  q: Queryable,
  r: { taskId: string; seq: number; tool: string; compensation: string; args: unknown; state: 'done' | 'failed'; attempts: number; error: string | null },
): Promise<void> {
  await q.query(
    `INSERT INTO compensations (task_id, seq, tool, compensation, args, state, attempts, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (task_id, seq) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts, error = EXCLUDED.error, updated_at = now()`,
    [r.taskId, r.seq, r.tool, r.compensation, JSON.stringify(r.args ?? null), r.state, r.attempts, r.error],
  );
}

export interface Observation {
  phase: string;
  nodes: string[];
  progress: number;
  usage: TaskUsage;
  capBreach: Reason | null;
  message: string | null;
}

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

  /** What a task reserved (the most its budgets are charged), or null when it holds no reservation row. */
  const reservationOf = async (taskId: string): Promise<number | null> => {
    const r = await db.query<{ amount_micros: number }>('SELECT amount_micros FROM reservations WHERE task_id = $1', [taskId]);
    return r.rows[0] ? Number(r.rows[0].amount_micros) : null;
  };

  /**
   * The run limit for a job about to run (governance/run-limit.ts): what the task's caps and its
   * reservation leave after everything it used, metered or not yet (the cluster's own counters
   * can be ahead of the ledger), at the plan's GPU price now, less the cluster's stop margin.
   */
  async function runLimitOf(taskId: string, job: string, intent: Intent, plan: Plan) {
    const [usage, status] = await Promise.all([taskUsage(db, taskId), backend.status(job)]);
    const limit = runLimit({ ...(await runLimitInput(taskId, intent, plan, usage, status?.gpuSeconds ?? 0)), stopMarginSeconds: backend.stopMarginSeconds });
    log.info('run limit', { taskId, job, maxRunSeconds: limit.maxRunSeconds, binding: limit.binding });
    return limit;
  }

  /** What the run limit is computed from: caps, reservation, GPUs, the GPU price now, and usage including what the cluster ran that is not metered yet. */
  async function runLimitInput(taskId: string, intent: Intent, plan: Plan, usage: TaskUsage, clusterGpuSeconds: number) {
    const subject = `${plan.gpu.type}:${plan.gpu.sharing}`;
    const microsPerGpuSecond = plan.gpu.type
      ? unitPriceUsd(priceVersionAt(config.priceBook, clock().toISOString()), { meter: 'gpu_seconds', subject }) * 1e6
      : 0;
    const unmetered = Math.max(0, clusterGpuSeconds - usage.gpuSeconds);
    return {
      caps: plan.caps,
      reservationMicros: await reservationOf(taskId),
      gpus: gpuRequest(intent).gpus,
      microsPerGpuSecond,
      used: { gpuSeconds: usage.gpuSeconds + unmetered, costMicros: usage.costMicros + unmetered * microsPerGpuSecond },
    };
  }

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

  /**
   * Refuses (audited) a step reported by anyone but the task's requester or an operator of its
   * tenant; null when the caller may report it.
   */
  async function stepCallerRefused(taskId: string, tenant: string, requester: string | null, caller: Caller): Promise<Reason | null> {
    const who = await whoIs(db, caller);
    const reason = (code: string, message: string): Reason => ({ code: code as ReasonCode, message, limit: null, requested: null, policy: 'auth' });
    if (!who.ok) {
      await auditRefusal(db, null, 'step', who, { tenant }, taskId);
      return reason(who.code, who.message);
    }
    const own = requester !== null && sameIdentity(actorName(who.principal), requester);
    const d = await db.tx((c) => checkAccess(c, who.principal, own ? 'task.own' : 'operate', tenant, { taskId }));
    return d.allowed ? null : reason(d.code, d.message);
  }

  // The worker's key (policies.audit.signingKeyFile, resolved against the data dir at start).
  const keyFile = config.policies.audit?.signingKeyFile;
  const signingKey = deps.signingKey ?? (keyFile ? loadOrCreateSigningKey(keyFile) : undefined);
  /** A signed approval token: what the tool executor checks before the high-risk call runs. */
  function signApproval(claims: Omit<ApprovalClaims, 'v' | 'keyId'>): string | null {
    return signingKey ? signApprovalToken(signingKey, claims) : null;
  }

  async function approvalMismatch(approvalId: string, taskId: string, message: string): Promise<Reason> {
    const r: Reason = { code: 'APPROVAL_MISMATCH', message, limit: null, requested: approvalId, policy: 'tools#approvals' };
    await appendAudit(db, { actor: 'govloop', taskId, action: 'approval.refused', decision: r.code, detail: { approvalId, message } });
    return r;
  }

  return {
    ...createAuditActivities({ db, config }),
    ...createReconcileActivities({ db, config, cluster: backend.cluster, dispatchQueue, clock }),
    ...createProgramActivities({ db, config, auth, notify, clock }),
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

    /** Creates the job suspended on the cluster and resumes it. No room: answers with a reason (the task queues). */
    async dispatchJob(input: { taskId: string; intent: Intent; plan: Plan }): Promise<CreateResult & { job: string }> {
      const { taskId, intent, plan } = input;
      // A task dispatched before (preempted, now placed again) keeps its job, whatever name
      // jobName() gives today: the name it ran under is in its dispatch audit row.
      const prior = await db.query<{ job: string | null }>("SELECT detail->>'job' AS job FROM audit_log WHERE dedupe_key = $1", [`${taskId}:dispatch`]);
      const name = prior.rows[0]?.job ?? jobName(taskId);
      const a = intent.attribution;
      const created = await backend.create({
        name,
        taskId,
        ...gpuRequest(intent),
        priorityClass: `govloop-${plan.priority.name}`,
        labels: { 'govloop.io/tenant': a.tenant, 'govloop.io/team': a.team, 'govloop.io/project': a.project, 'govloop.io/task': taskId },
        runtime: plan.runtime,
        simulation: plan.simulation,
      });
      if (created.ok) {
        const limit = await runLimitOf(taskId, name, intent, plan);
        await backend.resume(name, { maxRunSeconds: limit.maxRunSeconds });
        await db.tx(async (c) => {
          await updateTask(c, taskId, { state: 'Running' });
          await appendAudit(c, {
            actor: 'govloop',
            taskId,
            action: 'dispatch',
            decision: 'running',
            detail: {
              cluster: backend.cluster,
              job: name,
              nodes: created.nodes,
              placement: created.explanation ?? null,
              runLimit: { seconds: limit.maxRunSeconds, cap: limit.binding },
            },
            dedupeKey: `${taskId}:dispatch`,
          });
        });
      }
      return { ...created, job: name };
    },

    /**
     * Reads the job and meters what it used since the last look. Exactly once: a cursor per task
     * and meter moves in the same transaction as the usage it justifies.
     */
    async observeJob(input: { taskId: string; job: string; intent: Intent; plan: Plan }): Promise<Observation> {
      const { taskId, job, intent, plan } = input;
      const status = await backend.status(job);
      if (!status) throw new Error(`job ${job} is missing from cluster ${backend.cluster}`);
      const now = clock();
      const gpuSubject = `${plan.gpu.type}:${plan.gpu.sharing}`;
      const recorded = await db.tx(async (c) => {
        const events: UsageEvent[] = [];
        for (const [meter, cumulative, subject] of [
          ['gpu_seconds', status.gpuSeconds, gpuSubject],
          ['tokens_processed', status.tokens, intent.attribution.model],
        ] as const) {
          await c.query('INSERT INTO meter_cursors (task_id, meter, metered) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING', [taskId, meter]);
          const cur = await c.query<{ metered: number }>('SELECT metered FROM meter_cursors WHERE task_id = $1 AND meter = $2 FOR UPDATE', [taskId, meter]);
          const metered = cur.rows[0]!.metered;
          if (cumulative > metered) {
            events.push({
              key: `${taskId}:${meter}:${metered}-${cumulative}`,
              taskId,
              attribution: intent.attribution,
              meter,
              subject,
              quantity: cumulative - metered,
              cumulativeBefore: metered,
              occurredAt: now,
            });
            await c.query('UPDATE meter_cursors SET metered = $3 WHERE task_id = $1 AND meter = $2', [taskId, meter, cumulative]);
          }
        }
        return recordUsageIn(c, config.priceBook, events, config.policies.usageLimits);
      });
      await notifyOverage(config, recorded.overages);
      await nudgeBudgets(intent.attribution);
      const usage = await taskUsage(db, taskId);
      let capBreach: Reason | null = null;
      const maxUsdMicros = Math.round(plan.caps.maxUsd * 1e6);
      if (status.deadlineExceeded) {
        // The cluster stopped the job at the run limit dispatch gave it: a cap did, not a fault.
        const limitInput = await runLimitInput(taskId, intent, plan, usage, status.gpuSeconds);
        const reserved = limitInput.reservationMicros;
        const cap = capReached(limitInput);
        capBreach =
          cap === 'maxGpuHours'
            ? {
                code: 'CAP_MAX_GPU_HOURS',
                message: `the cluster stopped the job at its run limit: ${(usage.gpuSeconds / 3600).toFixed(3)} GPU-hours used, cap ${plan.caps.maxGpuHours}`,
                limit: plan.caps.maxGpuHours,
                requested: usage.gpuSeconds / 3600,
                policy: 'task#caps.maxGpuHours',
              }
            : {
                code: 'CAP_MAX_USD',
                message: `the cluster stopped the job at its run limit: $${(usage.costMicros / 1e6).toFixed(4)} spent, cap $${(usdCeilingMicros(plan.caps, reserved) / 1e6).toFixed(4)}${reserved !== null && reserved < maxUsdMicros ? ' (its reservation)' : ''}`,
                limit: plan.caps.maxUsd,
                requested: usage.costMicros / 1e6,
                policy: 'task#caps.maxUsd',
              };
      } else if (usage.gpuSeconds / 3600 > plan.caps.maxGpuHours) {
        capBreach = {
          code: 'CAP_MAX_GPU_HOURS',
          message: `used ${(usage.gpuSeconds / 3600).toFixed(3)} GPU-hours, cap ${plan.caps.maxGpuHours}`,
          limit: plan.caps.maxGpuHours,
          requested: usage.gpuSeconds / 3600,
          policy: 'task#caps.maxGpuHours',
        };
      } else if (usage.costMicros > maxUsdMicros) {
        capBreach = {
          code: 'CAP_MAX_USD',
          message: `spent $${(usage.costMicros / 1e6).toFixed(2)}, cap $${plan.caps.maxUsd}`,
          limit: plan.caps.maxUsd,
          requested: usage.costMicros / 1e6,
          policy: 'task#caps.maxUsd',
        };
      } else if (plan.caps.deadline !== null && now.getTime() > Date.parse(plan.caps.deadline) && status.phase === 'Running') {
        capBreach = {
          code: 'CAP_DEADLINE',
          message: `deadline ${plan.caps.deadline} passed while running`,
          limit: plan.caps.deadline,
          requested: now.toISOString(),
          policy: 'task#caps.deadline',
        };
      }
      return {
        phase: status.phase,
        nodes: status.nodes,
        progress: status.progressSeconds / plan.simulation.durationSeconds,
        usage,
        capBreach,
        message: status.message,
      };
    },

    async deleteJob(input: { job: string }): Promise<void> {
      await backend.delete(input.job);
    },

    /**
     * Preemption, step 1: the checkpoint signal (a cluster that cannot checkpoint ignores it).
     * Answers the least grace period this cluster needs, when it says (histories from before this
     * answer record none, and the workflow then waits the policy's grace as it did).
     */
    async checkpointJob(input: { job: string }): Promise<{ graceMillis: number | null }> {
      await backend.checkpoint?.(input.job);
      return { graceMillis: backend.checkpointGraceMillis ?? null };
    },

    /** Preemption, step 2 (after the grace period): suspend; answers the GPU-seconds the job has lost to preemptions so far. */
    async suspendJob(input: { job: string; gpus: number }): Promise<{ lostGpuSecondsTotal: number }> {
      await backend.suspend(input.job);
      const status = await backend.status(input.job);
      return { lostGpuSecondsTotal: (status?.lostSeconds ?? 0) * input.gpus };
    },

    /** Preemption, step 3: the ledger record (lost GPU-seconds against the preemptor's team), the task Preempted, the audit row naming the preemptor. */
    async recordPreemption(input: {
      taskId: string;
      round: number;
      by: string;
      reason: string;
      preemptor: string | null;
      lostGpuSecondsTotal: number;
      gpuType: string | null;
      gpus: number;
    }): Promise<{ round: number; lostGpuSeconds: number }> {
      const preemptor = input.preemptor
        ? await db.query<{ tenant: string; team: string }>(
            'SELECT a.tenant, a.team FROM tasks t JOIN attributions a ON a.id = t.attribution_id WHERE t.task_id = $1',
            [input.preemptor],
          )
        : null;
      const team = preemptor?.rows[0] ?? null;
      const r = await db.tx((c) =>
        closePreemption(c, {
          victimTaskId: input.taskId,
          round: input.round,
          preemptorTaskId: input.preemptor,
          by: input.by,
          reason: input.reason,
          preemptorTenant: team?.tenant ?? null,
          preemptorTeam: team?.team ?? null,
          gpuType: input.gpuType,
          gpus: input.gpus,
          lostGpuSecondsTotal: input.lostGpuSecondsTotal,
        }),
      );
      log.info('preempted', { taskId: input.taskId, by: input.by, preemptor: input.preemptor, round: r.round, lostGpuSeconds: r.lostGpuSeconds });
      return r;
    },

    /**
     * The agent step gate: prices the step (on its model and on the fallback), checks every cap
     * and the tool catalog, and commits its usage if allowed or degraded. A tool call that needs a
     * human opens an approval request instead and commits nothing until `approved` names it.
     * Idempotent by (task, seq): a retried activity answers the same and charges once.
     */
    async gateStep(input: {
      taskId: string;
      seq: number;
      intent: Intent;
      plan: Plan;
      totals: StepTotals;
      step: StepUsage;
      requester?: string;
      approved?: string;
      caller?: Caller;
    }): Promise<GateOutcome> {
      const { taskId, seq, intent, plan, totals, step } = input;
      const started = performance.now();
      const now = clock();
      const runId = Context.current().info.workflowExecution?.runId ?? '';
      // Who reports the step: the task's requester, or an operator of its tenant. An approved step
      // coming back is the workflow's own call, made for the step the requester reported.
      if (!input.approved) {
        const refused = await stepCallerRefused(taskId, intent.attribution.tenant, input.requester ?? null, input.caller ?? {});
        if (refused) return { answer: 'deny', reason: refused };
      }
      const version = priceVersionAt(config.priceBook, now.toISOString());
      const price = (model: string) =>
        costMicros(version, { meter: 'tokens_in', quantity: step.tokensIn, subject: model }) +
        costMicros(version, { meter: 'tokens_out', quantity: step.tokensOut, subject: model });
      const asked = step.model ?? intent.attribution.model;
      // A model the gate refuses (MODEL_NOT_ALLOWED) is not priced: the price book need not know it.
      const model = allowedModels(intent.attribution.model, plan.fallbackModel).includes(asked) ? asked : intent.attribution.model;
      // The budget ladder: past its degrade threshold, steps run on the fallback model (critical work
      // and use cases whose SLO forbids the fallback last: not before the queue step).
      const critical = config.policies.criticalPriorities.includes(intent.priority);
      const forbidding = fallbackForbiddenBy(config.policies.slos, intent.attribution);
      const windows = await scopeLadder(db, intent.attribution, now);
      const ladder = ladderDegrade(windows, critical, config.policies.ladder, forbidding !== null);
      const budgetDegrade = ladder.degrade;
      // A budget-degraded step's audit row names the ladder's highest step then (the SLO gate reads it).
      const ladderNow = windows.reduce<LadderStep>((top, w) => (stepRank(w.step) > stepRank(top) ? w.step : top), 'ok');
      const decision = evaluateStep({
        budgetDegrade,
        caps: plan.caps,
        totals,
        step,
        primaryModel: intent.attribution.model,
        fallbackModel: plan.fallbackModel,
        costMicros: price(model),
        fallbackCostMicros: plan.fallbackModel === null ? null : price(plan.fallbackModel),
        reservedMicros: plan.worstCaseMicros,
        tools: { catalog: config.tools, declared: intent.tools },
        toolOverheadTokens: plan.toolOverheadTokens ?? 0,
        degradeAtFraction: config.policies.stepGate.degradeAtFraction,
        now: now.toISOString(),
      });
      const gateMs = performance.now() - started;
      const recordThisStep = (c: Queryable, answer: 'allow' | 'degrade' | 'deny', model: string | null) =>
        recordStep(c, { taskId, seq, decision: answer, model, latencyMs: step.latencyMs ?? null, gateMs, at: now });
      const argsDigest = step.tool !== undefined ? digest(step.toolArgs ?? null) : null;
      const dedupeKey = `${taskId}:step:${seq}${input.approved ? ':approved' : ''}`;
      const auditStep = (q: Queryable, answer: string, detail: Record<string, unknown>) =>
        appendAudit(q, {
          actor: 'govloop',
          taskId,
          action: 'step',
          decision: answer,
          detail: {
            seq,
            tool: step.tool ?? null,
            argsDigest,
            tokensIn: step.tokensIn,
            tokensOut: step.tokensOut,
            contextTokens: step.contextTokens,
            ...detail,
          },
          dedupeKey,
        });
      if (decision.answer === 'deny') {
        await db.tx(async (c) => {
          await auditStep(c, 'deny', { reason: decision.reason });
          await recordThisStep(c, 'deny', null);
        });
        return { answer: 'deny', reason: decision.reason };
      }
      if (decision.needsApproval && !input.approved) {
        const entry = own(config.tools.tools, step.tool!)!;
        const approvalId = `${taskId}.a${seq}`;
        const row = await db.tx(async (c) => {
          const r = await requestApproval(c, {
            approvalId,
            taskId,
            runId,
            seq,
            tenant: intent.attribution.tenant,
            tool: step.tool!,
            argsDigest: argsDigest!,
            requester: input.requester ?? 'unknown',
            costSoFarMicros: totals.costMicros,
            requestedAt: now,
            escalateAt: new Date(now.getTime() + entry.escalateAfterSeconds * 1000),
            expiresAt: new Date(now.getTime() + entry.approvalTtlSeconds * 1000),
          });
          // Only the request this step opened can be adopted: same run, step, tool and arguments.
          if (!approvalMatches(r, { runId, seq, tool: step.tool!, argsDigest: argsDigest! })) return null;
          await auditStep(c, 'await-approval', { approvalId, approverRoles: approverRoles(entry, 0) });
          return r;
        });
        if (row === null)
          return {
            answer: 'deny',
            reason: await approvalMismatch(approvalId, taskId, 'an approval request with this id exists for another run, step or arguments'),
          };
        return {
          answer: 'await-approval',
          approvalId,
          argsDigest: argsDigest!,
          requestedAt: row.requestedAt.getTime(),
          escalateAfterMs: entry.escalateAfterSeconds * 1000,
          expiresAt: row.expiresAt.getTime(),
          tiers: entry.approvers.length,
        };
      }
      let approvalToken: string | null = null;
      if (input.approved) {
        // The approval must be the one asked for this very call: same run, step, tool and arguments.
        const a = await getApproval(db, input.approved);
        if (!a || a.state !== 'approved' || !approvalMatches(a, { runId, seq, tool: step.tool ?? '', argsDigest: argsDigest ?? '' })) {
          return {
            answer: 'deny',
            reason: await approvalMismatch(
              input.approved,
              taskId,
              a ? `approval ${a.approvalId} (${a.state}) was given for another run, step or arguments` : `no approval ${input.approved}`,
            ),
          };
        }
        approvalToken = signApproval({
          approvalId: a.approvalId,
          taskId,
          runId,
          seq,
          tool: a.tool,
          argsDigest: a.argsDigest,
          approvedBy: a.decidedBy ?? '',
          expiresAt: new Date(now.getTime() + config.auth.approvalTokenTtlSeconds * 1000).toISOString(),
        });
      }
      const attribution = { ...intent.attribution, model: decision.model };
      await db.tx(async (c) => {
        await recordUsageIn(
          c,
          config.priceBook,
          [
            {
              key: `${taskId}:step:${seq}:tokens_in`,
              taskId,
              attribution,
              tool: step.tool ?? null,
              meter: 'tokens_in',
              subject: decision.model,
              quantity: step.tokensIn,
              occurredAt: now,
            },
            {
              key: `${taskId}:step:${seq}:tokens_out`,
              taskId,
              attribution,
              tool: step.tool ?? null,
              meter: 'tokens_out',
              subject: decision.model,
              quantity: step.tokensOut,
              occurredAt: now,
            },
          ],
          config.policies.usageLimits,
        );
        await auditStep(c, decision.answer, {
          model: decision.model,
          costUsd: decision.costMicros / 1e6,
          ...(budgetDegrade && decision.answer === 'degrade' ? { ladderStep: ladderNow } : {}),
          ...(input.approved ? { approvalId: input.approved } : {}),
          ...(step.latencyMs !== undefined ? { latencyMs: step.latencyMs } : {}),
        });
        await recordThisStep(c, decision.answer, decision.model);
        // The ladder would have degraded this step but the use case's SLO forbids the fallback: say so, once per window and crossing.
        if (forbidding !== null && decision.answer === 'allow') {
          for (const w of ladder.held)
            await recordSloHold(c, {
              budgetId: w.budgetId,
              window: w.window,
              step: w.step,
              sharePct: w.sharePct,
              slo: sloLabel(forbidding.scope),
              taskId,
              scope: w.scope,
            });
        }
      });
      return {
        answer: decision.answer,
        totals: decision.totals,
        model: decision.model,
        costMicros: decision.costMicros,
        sideEffect: decision.sideEffect,
        argsDigest,
        ...(approvalToken ? { approvalToken } : {}),
      };
    },

    /** An approver's (or the TTL's) decision on a tool call, recorded exactly once in the ledger. */
    async decideApproval(input: {
      approvalId: string;
      tool: string;
      decision: 'approve' | 'reject' | 'expire';
      by?: string;
      caller?: Caller;
      reason: string;
      force?: boolean;
    }): Promise<DecideResult> {
      const entry = own(config.tools.tools, input.tool);
      // A person's decision names its decider by credential; only govloop's own expiry passes `by`.
      let principal: Principal | undefined;
      if (input.decision !== 'expire' || input.caller) {
        const who = await whoIs(db, input.caller ?? (input.by !== undefined ? { as: input.by } : {}));
        if (!who.ok) {
          const row = await getApproval(db, input.approvalId);
          await auditRefusal(
            db,
            null,
            input.decision,
            who,
            { approvalId: input.approvalId, claimed: input.caller?.as ?? input.by ?? null },
            row?.taskId ?? null,
          );
          return {
            recorded: false,
            approvalId: input.approvalId,
            taskId: row?.taskId ?? null,
            state: row?.state ?? null,
            code: who.code,
            message: who.message,
          };
        }
        principal = who.principal;
      }
      const { caller: _caller, ...rest } = input;
      const r = await decideApproval(db, {
        ...rest,
        by: principal ? actorName(principal) : (input.by ?? 'govloop'),
        ...(principal ? { principal } : {}),
        tiers: entry ? entry.approvers.map((t) => t.roles) : [],
        now: clock(),
      });
      log.info('approval decision', {
        approvalId: input.approvalId,
        decision: input.decision,
        by: r.recorded ? r.by : principal ? actorName(principal) : input.by,
        recorded: r.recorded,
        ...(r.recorded ? {} : { code: r.code }),
      });
      return r;
    },

    /** No answer in time: the request moves to the next approver tier, who is notified. */
    async escalateApproval(input: { approvalId: string; tool: string; fromTier: number }): Promise<{ escalated: boolean; tier: number; state: string }> {
      const entry = own(config.tools.tools, input.tool);
      const roles = entry?.approvers[input.fromTier + 1]?.roles ?? [];
      const { escalated, row } = await escalateApproval(db, { approvalId: input.approvalId, fromTier: input.fromTier, roles, now: clock() });
      if (escalated && row) {
        await notify(config, {
          event: 'approval.escalated',
          approvalId: row.approvalId,
          taskId: row.taskId,
          tenant: row.tenant,
          tool: row.tool,
          tier: row.tier,
          notifyRoles: roles,
          expiresAt: row.expiresAt.toISOString(),
          runbook: 'runbooks/escalated.md',
        });
      }
      return { escalated, tier: row?.tier ?? input.fromTier, state: row?.state ?? 'pending' };
    },

    /**
     * Undoes one side-effecting step with the catalog's compensation. Throws on failure, so
     * Temporal retries it; every attempt is recorded. Idempotent: a step already undone is not undone twice.
     */
    async compensateStep(input: { taskId: string; seq: number; tool: string; args: unknown }): Promise<{ compensation: string; detail: string }> {
      const entry = own(config.tools.tools, input.tool);
      const compensation = entry?.compensation ?? null;
      if (compensation === null) throw ApplicationFailure.nonRetryable(`${input.tool} has no compensation in the tool catalog`, 'NoCompensation');
      const done = await db.query("SELECT 1 FROM compensations WHERE task_id = $1 AND seq = $2 AND state = 'done'", [input.taskId, input.seq]);
      if (done.rowCount) return { compensation, detail: 'already compensated' };
      const attempt = Context.current().info.attempt;
      try {
        const r = await callTool(config.tools.tools[compensation]!, {
          tool: compensation,
          args: input.args,
          taskId: input.taskId,
          step: input.seq,
          undoes: input.tool,
        });
        await db.tx(async (c) => {
          await upsertCompensation(c, { ...input, compensation, state: 'done', attempts: attempt, error: null });
          await appendAudit(c, {
            actor: 'govloop',
            taskId: input.taskId,
            action: 'compensation',
            decision: 'done',
            detail: { seq: input.seq, tool: input.tool, compensation, detail: r.detail },
            dedupeKey: `${input.taskId}:compensate:${input.seq}`,
          });
        });
        return { compensation, detail: r.detail };
      } catch (err) {
        await upsertCompensation(db, { ...input, compensation, state: 'failed', attempts: attempt, error: String((err as Error).message ?? err) });
        throw err;
      }
    },

    /** A compensation that cannot succeed: recorded and audited; the task waits for an operator. */
    async compensationFailed(input: { taskId: string; seq: number; tool: string; error: string }): Promise<void> {
      await db.tx(async (c) => {
        await updateTask(c, input.taskId, { state: 'NeedsOperator' });
        await appendAudit(c, {
          actor: 'govloop',
          taskId: input.taskId,
          action: 'compensation',
          decision: 'failed',
          detail: input,
          dedupeKey: `${input.taskId}:compensate:${input.seq}:failed`,
        });
      });
      await notify(config, {
        event: 'task.needs-operator',
        taskId: input.taskId,
        tool: input.tool,
        step: input.seq,
        error: input.error,
        runbook: 'runbooks/needsoperator.md',
      });
    },

    /**
     * May this cancel, finish, preempt or resolve act on the task? A person's call by its credential
     * (the task's requester for its own cancel and finish, an operator of the tenant for the rest);
     * govloop's own signals by the ledger row that ordered them (a budget controller's preemption,
     * an open quota preemption naming the preemptor). Accepted and refused calls are both audited.
     */
    async authorizeTaskCall(input: {
      taskId: string;
      tenant: string;
      requester: string | null;
      action: 'cancel' | 'finish' | 'preempt' | 'resolve';
      reason?: string;
      caller?: Caller;
      system?: { kind: 'budget-preempt' } | { kind: 'preemptor'; preemptor: string };
    }): Promise<{ ok: true; by: string } | { ok: false; code: string; message: string }> {
      const { taskId, tenant, action } = input;
      if (input.system) {
        const sys = input.system;
        const found =
          sys.kind === 'budget-preempt'
            ? await db.query('SELECT 1 FROM ladder_events WHERE action = $1', [`preempt:${taskId}`])
            : await db.query('SELECT 1 FROM preemptions WHERE victim_task_id = $1 AND preemptor_task_id = $2 AND suspended_at IS NULL', [
                taskId,
                sys.preemptor,
              ]);
        const by = sys.kind === 'budget-preempt' ? 'budget-controller' : 'govloop';
        if (found.rowCount) return { ok: true, by };
        const d = {
          code: 'FORBIDDEN',
          message: sys.kind === 'budget-preempt' ? `no budget controller ordered ${taskId} stopped` : `no open preemption of ${taskId} for ${sys.preemptor}`,
        };
        await auditRefusal(db, { subject: by, verified: false }, action, d, { tenant, system: sys.kind }, taskId);
        return { ok: false, ...d };
      }
      const who = await whoIs(db, input.caller ?? {});
      if (!who.ok) {
        await auditRefusal(db, null, action, who, { tenant, claimed: input.caller?.as ?? null }, taskId);
        return { ok: false, code: who.code, message: who.message };
      }
      const by = actorName(who.principal);
      const own = input.requester !== null && sameIdentity(by, input.requester) && (action === 'cancel' || action === 'finish');
      return db.tx(async (c) => {
        const d = await checkAccess(c, who.principal, own ? 'task.own' : 'operate', tenant, { taskId, detail: { attempted: action } });
        if (!d.allowed) return { ok: false as const, code: d.code, message: d.message };
        await appendAudit(c, {
          actor: by,
          taskId,
          action: `task.${action}`,
          decision: 'accepted',
          detail: { via: d.via, ...(input.reason ? { reason: input.reason } : {}) },
        });
        return { ok: true as const, by };
      });
    },

    /** An operator says the side effects a failed compensation left behind are dealt with. */
    async resolveTask(input: { taskId: string; by: string; reason: string; state: string; round?: number }): Promise<void> {
      await db.tx(async (c) => {
        await updateTask(c, input.taskId, { state: input.state });
        const key = input.round === undefined ? `${input.taskId}:resolve` : `${input.taskId}:resolve:escalation:${input.round}`;
        await appendAudit(c, {
          actor: input.by,
          taskId: input.taskId,
          action: 'operator.resolve',
          decision: input.state,
          detail: { reason: input.reason },
          dedupeKey: key,
        });
      });
    },

    /** A call of the task ran out of its bounded retries (decision 0020): page, then record it where the ledger answers. */
    async operatorNeeded(input: { taskId: string; activity: string; error: string; round: number }): Promise<void> {
      await notify(config, {
        event: 'task.needs-operator',
        taskId: input.taskId,
        activity: input.activity,
        error: input.error,
        runbook: 'runbooks/needsoperator.md',
      });
      await db.tx(async (c) => {
        await updateTask(c, input.taskId, { state: 'NeedsOperator' });
        await appendAudit(c, {
          actor: 'govloop',
          taskId: input.taskId,
          action: 'retries.exhausted',
          decision: 'needs-operator',
          detail: { activity: input.activity, error: input.error },
          dedupeKey: `${input.taskId}:escalation:${input.round}`,
        });
      });
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

    async recordState(input: { taskId: string; state: string; reasons?: Reason[] }): Promise<void> {
      await updateTask(db, input.taskId, { state: input.state, ...(input.reasons ? { reasons: input.reasons } : {}) });
    },
  };
}

export type Activities = ReturnType<typeof createActivities>;
