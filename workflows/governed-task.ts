import {
  ActivityFailure,
  ApplicationFailure,
  ContinueAsNew,
  allHandlersFinished,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  log,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities, GateOutcome, Observation, Timing } from '../activities';
import type { Plan } from '../governance/plan';
import type { Reason } from '../governance/reasons';
import { type StepTotals, type StepUsage, StepUsageSchema, zeroTotals } from '../governance/step-gate';
import {
  ApprovalDecisionSchema,
  ApprovalOutcomeRequestSchema,
  CallerShape,
  CancelRequestSchema,
  CancelSignalSchema,
  FinishRequestSchema,
  FinishSignalSchema,
  PreemptRequestSchema,
  PreemptSignalSchema,
  ResolveRequestSchema,
  issuesList,
  issuesText,
} from './schemas';
import type { z } from 'zod';
import {
  type ApprovalAnswer,
  type ApprovalDecision,
  type ApprovalView,
  type CarriedPhase,
  type CarriedTask,
  type CompensationView,
  type HeldApproval,
  type Decision,
  FINAL_STATES,
  type PreemptRequest,
  GovState,
  type StepAnswer,
  type TaskCallAnswer,
  type TaskInput,
  type TaskStatus,
  admissionUpdate,
  approvalOutcomeUpdate,
  approveUpdate,
  cancelSignal,
  cancelTaskUpdate,
  finishSignal,
  finishTaskUpdate,
  preemptSignal,
  preemptTaskUpdate,
  jobChangedSignal,
  rejectUpdate,
  resolveUpdate,
  statusQuery,
  stepUpdate,
} from './messages';
import * as SA from './search-attributes';
import { TASK_CLUSTER_ACTIVITY, TASK_LEDGER_ACTIVITY } from './activity-options';
import { installLeasedSteps } from './leased-steps';

/** Ledger calls with the default bound; the task swaps in its config's bound once admission told it (timing.retries). */
const boundedLedger = (maxAttempts?: number) =>
  proxyActivities<Activities>(
    maxAttempts === undefined ? TASK_LEDGER_ACTIVITY : { ...TASK_LEDGER_ACTIVITY, retry: { ...TASK_LEDGER_ACTIVITY.retry, maximumAttempts: maxAttempts } },
  );
/**
 * The step gate on the agent's hot path runs as a local activity: one ledger transaction inside
 * the workflow task that took the update, no round trip through the server's activity queue. It
 * is idempotent by (task, seq), so the re-run a local activity may get after a crash is harmless.
 */
const localLedger = proxyLocalActivities<Activities>(TASK_LEDGER_ACTIVITY);
/** Histories from before the local step gate replay with the activity they recorded. */
const gateStep: Activities['gateStep'] = (input) => (patched('step-gate-local-activity') ? localLedger.gateStep(input) : boundedLedger().gateStep(input));

/**
 * Cluster calls go to the cluster's own task queue, where its dispatcher runs: a bit more time,
 * a longer bound; past it the task asks an operator (a cluster outage must not lose the task).
 */
const clusterActivities = (taskQueue: string, maxAttempts?: number) =>
  proxyActivities<Activities>({
    ...TASK_CLUSTER_ACTIVITY,
    taskQueue,
    ...(maxAttempts === undefined ? {} : { retry: { ...TASK_CLUSTER_ACTIVITY.retry, maximumAttempts: maxAttempts } }),
  });

/** A call whose bounded retries ran out (as opposed to one refused for good: a data error, a non-retryable failure). */
const retriesExhausted = (err: unknown): err is ActivityFailure =>
  err instanceof ActivityFailure && (err.retryState === 'MAXIMUM_ATTEMPTS_REACHED' || err.retryState === 'TIMEOUT');
/** A call refused because its input is wrong (activities/errors.ts): no retry can fix it. */
const dataError = (err: unknown): string | null =>
  err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.type === 'DataError' ? err.cause.message : null;
const causeText = (err: unknown): string =>
  err instanceof ActivityFailure && err.cause ? err.cause.message : err instanceof Error ? err.message : String(err);

export const TaskErrors = {
  InvalidStep: 'InvalidStep',
  NotAcceptingSteps: 'NotAcceptingSteps',
  InvalidDecision: 'InvalidDecision',
  UnknownApproval: 'UnknownApproval',
  NotNeedingOperator: 'NotNeedingOperator',
  InvalidRequest: 'InvalidRequest',
  NotPreemptible: 'NotPreemptible',
  TaskEnded: 'TaskEnded',
} as const;

/** A step as the agent sends it: the usage, and who sends it. */
const StepRequestSchema = StepUsageSchema.extend(CallerShape);

/** Parses an update's payload or refuses it before it reaches history, naming every bad field. */
function parseOrRefuse<T>(schema: z.ZodType<T>, payload: unknown, errorType: string): T {
  const parsed = schema.safeParse(payload);
  if (!parsed.success) throw ApplicationFailure.nonRetryable(issuesText(parsed.error), errorType, issuesList(parsed.error));
  return parsed.data;
}
/** The caller part of a message, for the activity that authenticates it. */
const callerOf = (m: { credential?: string | undefined; as?: string | undefined }) => ({
  ...(m.credential ? { credential: m.credential } : {}),
  ...(m.as !== undefined ? { as: m.as } : {}),
});

/** History length at which a task continues as new when its config does not say (older histories' timing). */
const CONTINUE_AS_NEW_EVENTS = 4000;
/** Decided approvals a task carries into its next run, newest first (their outcome may still be asked for). */
const CARRIED_DECIDED_APPROVALS = 50;

/**
 * One governed workload: admission → translation → reservation → dispatch → run → settle → audit.
 * Decisions are made in activities over pure functions; this function only orchestrates.
 */
export async function governedTask(input: TaskInput): Promise<TaskStatus> {
  const { taskId, intent } = input;
  // Tasks started before continue-as-new existed never hand over: their replay has no such command.
  const mayContinue = patched('continue-as-new');
  let state: GovState = GovState.Admitting;
  let decision: Decision = 'pending';
  let reasons: Reason[] = [];
  let plan: Plan | null = null;
  let nodes: string[] = [];
  let progress: number | null = null;
  let cancelled: { by: string; reason: string } | null = null;
  let finished = false;
  let totals: StepTotals = zeroTotals;
  let stepSeq = 0;
  let lastObservation: Observation | null = null;
  let usage = { gpuSeconds: 0, tokensIn: 0, tokensOut: 0, tokensProcessed: 0, costMicros: 0 };
  let gate: Promise<unknown> = Promise.resolve();
  const approvals = new Map<string, HeldApproval>();
  let approval: HeldApproval | null = null;
  /** Completed side-effecting tool steps, oldest first: what rollback undoes, newest first. */
  const sideEffects: { seq: number; tool: string; args: unknown }[] = [];
  const compensations: CompensationView[] = [];
  let resolution: { by: string; reason: string } | null = null;
  /** A preemption asked for and not yet carried out; how many this task has had. */
  let preemptReq: PreemptRequest | null = null;
  let preemptions = 0;
  /** Who submitted the task, as admission authenticated them (the typed claim until then). */
  let requester: string = input.requester;
  /** How the workflow paces itself and where it sends cluster work: from admission, the worker's config. */
  let timing: Timing = { pollMillis: 1000, queueRetryMillis: 1000, dispatchQueue: '' };
  /** A step's input the ledger refused for good (a data error): the task ends Failed with it. */
  let fatal: Reason | null = null;
  /** How many times a call ran out of retries and an operator was asked. */
  let escalations = 0;
  /** The cluster job this task runs (or ran before a preemption). */
  let job: string | null = null;
  /** Admission's attempt counter: its idempotency key in the ledger. */
  let attempt = 0;
  /** How many runs this task had before this one (continue-as-new, decision 0022). */
  let runs = 0;

  // A run that continues an earlier one starts from what that run carried, not from admission.
  const carried: CarriedTask | undefined = input.carried;
  if (carried) {
    ({ state, decision, reasons, plan, job, nodes, progress, usage, totals, stepSeq, requester, timing, attempt, preemptions, escalations, runs } = carried);
    sideEffects.push(...carried.sideEffects);
    for (const a of carried.approvals) approvals.set(a.approvalId, a);
    approval = carried.approvalId === null ? null : (approvals.get(carried.approvalId) ?? null);
  }

  // The task's own ledger and cluster calls retry within a bound; past it the task asks an
  // operator and waits (NeedsOperator), then tries again once resolved (decision 0020).
  const rawLedger = () => boundedLedger(timing.retries?.ledgerMaxAttempts);
  const escalating = <T extends object>(raw: () => T): T =>
    new Proxy({} as T, {
      get:
        (_target, name) =>
        async (...args: unknown[]) => {
          for (;;) {
            try {
              return await (raw() as Record<string | symbol, (...a: unknown[]) => Promise<unknown>>)[name]!(...args);
            } catch (err) {
              if (!retriesExhausted(err)) throw err;
              await askOperator(String(name), err);
            }
          }
        },
    });
  const ledger = escalating(rawLedger);
  const awaiting = () => state === GovState.AwaitingApproval || state === GovState.Escalated;
  /** A tool call waits for a human and its step has no answer yet. */
  const held = () => approval !== null && approval.state === 'pending' && approval.outcome === null;

  /**
   * Continue-as-new (decision 0022): past the configured history length, or when the server
   * suggests it, the task hands over to a fresh run of itself at a safe point of its loop: nothing
   * held for a human, no cancel, finish or preemption waiting, every message handler done. The
   * ledger keeps the money; the next run gets the loop's own memory (CarriedTask).
   */
  const longHistory = () => {
    if (!mayContinue) return false;
    const info = workflowInfo();
    return info.continueAsNewSuggested || info.historyLength >= (timing.continueAsNewEvents ?? CONTINUE_AS_NEW_EVENTS);
  };
  const mustAct = () => cancelled !== null || finished || preemptReq !== null || fatal !== null || held();
  const carry = (phase: CarriedPhase): CarriedTask => {
    const all = [...approvals.values()];
    const decided = all.filter((a) => a.state !== 'pending').slice(-CARRIED_DECIDED_APPROVALS);
    return {
      phase,
      runs: runs + 1,
      state,
      decision,
      reasons,
      plan,
      job,
      nodes,
      progress,
      usage,
      totals,
      stepSeq,
      requester,
      timing,
      attempt,
      preemptions,
      escalations,
      sideEffects: [...sideEffects],
      approvals: [...all.filter((a) => a.state === 'pending'), ...decided],
      approvalId: approval?.approvalId ?? null,
      ...leased.carry(),
    };
  };
  /** Hands over to the next run when the history is long and nothing needs this one; else returns. */
  async function continueIfLong(phase: CarriedPhase, stillSafe: () => boolean = () => true): Promise<void> {
    if (!longHistory() || mustAct()) return;
    await gate;
    await condition(allHandlersFinished);
    if (mustAct() || !stillSafe()) return;
    log.info('continuing as new', { taskId, phase, run: runs + 1, historyLength: workflowInfo().historyLength });
    await continueAsNew<typeof governedTask>({ ...input, carried: carry(phase) });
  }
  const costUsd = () => usage.costMicros / 1e6;
  const view = (a: HeldApproval): ApprovalView => ({
    approvalId: a.approvalId,
    tool: a.tool,
    argsDigest: a.argsDigest,
    requester: a.requester,
    costSoFarUsd: a.costSoFarUsd,
    state: a.state,
    tier: a.tier,
    expiresAt: a.expiresAt,
    decidedBy: a.decidedBy,
  });

  const setState = (next: GovState) => {
    state = next;
    upsertSearchAttributes([
      { key: SA.GovState, value: next },
      { key: SA.GovCostUsd, value: usage.costMicros / 1e6 },
    ]);
    upsertMemo({ runbook: `${SA.RUNBOOK_BASE}${next.toLowerCase()}.md` });
  };

  const status = (): TaskStatus => ({
    taskId,
    name: intent.name,
    kind: intent.kind,
    attribution: intent.attribution,
    decision,
    state,
    reasons,
    plan,
    nodes,
    usage: {
      gpuSeconds: usage.gpuSeconds,
      gpuHours: usage.gpuSeconds / 3600,
      tokensIn: usage.tokensIn,
      tokensOut: usage.tokensOut,
      tokensProcessed: usage.tokensProcessed,
      steps: totals.steps,
      toolCalls: totals.toolCalls,
    },
    costUsd: usage.costMicros / 1e6,
    progress,
    approval: approval && view(approval),
    compensations: [...compensations],
    requester,
    runs: runs + 1,
  });

  setHandler(statusQuery, status);

  // Who may act on this task is decided by an activity, against the ledger (decision 0018): people
  // by their credential, govloop's own workflows by the ledger row that ordered the action.
  type TaskAction = 'cancel' | 'finish' | 'preempt' | 'resolve';
  const authorize = (
    action: TaskAction,
    m: { credential?: string | undefined; as?: string | undefined; reason?: string },
    system?: { kind: 'budget-preempt' } | { kind: 'preemptor'; preemptor: string },
  ) =>
    rawLedger().authorizeTaskCall({
      taskId,
      tenant: intent.attribution.tenant,
      requester,
      action,
      ...(m.reason ? { reason: m.reason } : {}),
      ...(system ? { system } : { caller: callerOf(m) }),
    });
  const preemptible = () => {
    // Only a cluster job that holds GPUs can be preempted; one preemption at a time.
    const holding = state === GovState.Reserved || state === GovState.Dispatched || state === GovState.Running;
    return preemptReq === null && holding && plan?.placement === 'cluster' && cancelled === null;
  };
  const refusedCall = (r: { code: string; message: string }): TaskCallAnswer => ({ accepted: false, code: r.code, message: r.message });

  setHandler(cancelSignal, async (c) => {
    if (!patched('identity-v1')) {
      if (!cancelled) cancelled = { by: c.by ?? 'unknown', reason: c.reason };
      return;
    }
    const m = CancelSignalSchema.safeParse(c);
    if (!m.success) return log.warn('cancel signal ignored: invalid payload', { taskId, errors: issuesText(m.error) });
    const system = m.data.by === 'budget-controller' && !m.data.credential ? ({ kind: 'budget-preempt' } as const) : undefined;
    const ok = await authorize('cancel', m.data, system);
    if (ok.ok && !cancelled) cancelled = { by: ok.by, reason: m.data.reason };
  });
  setHandler(finishSignal, async (f) => {
    if (!patched('identity-v1')) {
      finished = true;
      return;
    }
    const m = FinishSignalSchema.safeParse(f);
    if (!m.success) return log.warn('finish signal ignored: invalid payload', { taskId, errors: issuesText(m.error) });
    if ((await authorize('finish', m.data)).ok) finished = true;
  });
  let jobChanged = false;
  setHandler(jobChangedSignal, () => {
    jobChanged = true;
  });
  setHandler(preemptSignal, async (p) => {
    if (!patched('identity-v1')) {
      if (preemptible()) preemptReq = p;
      return;
    }
    const m = PreemptSignalSchema.safeParse(p);
    if (!m.success) return log.warn('preempt signal ignored: invalid payload', { taskId, errors: issuesText(m.error) });
    if (!preemptible()) return;
    const system = m.data.preemptor !== null && !m.data.credential ? ({ kind: 'preemptor', preemptor: m.data.preemptor } as const) : undefined;
    const ok = await authorize('preempt', m.data, system);
    if (ok.ok && preemptible()) preemptReq = { by: ok.by, reason: m.data.reason, preemptor: m.data.preemptor };
  });

  // People cancel, finish and preempt through updates: refused before history when malformed,
  // answered with the refusal's code when their credential may not.
  const notEnded = () => {
    if (FINAL_STATES.includes(state) || state === GovState.Settling) throw ApplicationFailure.nonRetryable(`task ${taskId} is ${state}`, TaskErrors.TaskEnded);
  };
  setHandler(
    cancelTaskUpdate,
    async (c): Promise<TaskCallAnswer> => {
      const ok = await authorize('cancel', c);
      if (!ok.ok) return refusedCall(ok);
      if (!cancelled) cancelled = { by: ok.by, reason: c.reason };
      return { accepted: true, by: ok.by, state };
    },
    { validator: (c) => (parseOrRefuse(CancelRequestSchema, c, TaskErrors.InvalidRequest), notEnded()) },
  );
  setHandler(
    finishTaskUpdate,
    async (f): Promise<TaskCallAnswer> => {
      const ok = await authorize('finish', f);
      if (!ok.ok) return refusedCall(ok);
      finished = true;
      return { accepted: true, by: ok.by, state };
    },
    { validator: (f) => (parseOrRefuse(FinishRequestSchema, f, TaskErrors.InvalidRequest), notEnded()) },
  );
  setHandler(
    preemptTaskUpdate,
    async (p): Promise<TaskCallAnswer> => {
      const ok = await authorize('preempt', p);
      if (!ok.ok) return refusedCall(ok);
      if (!preemptible()) return { accepted: false, code: TaskErrors.NotPreemptible, message: `task ${taskId} is ${state} and holds no GPUs to give back` };
      preemptReq = { by: ok.by, reason: p.reason, preemptor: null };
      return { accepted: true, by: ok.by, state };
    },
    {
      validator: (p) => {
        parseOrRefuse(PreemptRequestSchema, p, TaskErrors.InvalidRequest);
        if (!preemptible()) throw ApplicationFailure.nonRetryable(`task ${taskId} is ${state} and holds no GPUs to give back`, TaskErrors.NotPreemptible);
      },
    },
  );
  setHandler(admissionUpdate, async () => {
    await condition(() => decision !== 'pending' || FINAL_STATES.includes(state));
    return { taskId, decision, reasons, state };
  });
  const answer = (a: StepAnswer['answer'], reason: Reason | null, extra: Partial<StepAnswer> = {}): StepAnswer => ({
    answer: a,
    reason,
    approvalId: null,
    fallbackModel: null,
    step: totals.steps,
    costUsd: costUsd(),
    ...extra,
  });

  /** Applies the gate's answer to the task: totals, usage, rollback stack, approval hold, cap stop. */
  const applyGate = (out: GateOutcome, seq: number, step: StepUsage, approvalId: string | null): StepAnswer => {
    if (out.answer === 'deny') {
      if (out.reason.code.startsWith('CAP_') && (state === GovState.Running || awaiting())) {
        reasons = [out.reason];
        setState(GovState.CapExceeded);
      }
      return answer('deny', out.reason, { approvalId });
    }
    if (out.answer === 'await-approval') {
      approval = {
        approvalId: out.approvalId,
        tool: step.tool!,
        argsDigest: out.argsDigest,
        requester,
        costSoFarUsd: costUsd(),
        state: 'pending',
        tier: 0,
        expiresAt: new Date(out.expiresAt).toISOString(),
        decidedBy: null,
        seq,
        step,
        requestedAtMs: out.requestedAt,
        escalateAfterMs: out.escalateAfterMs,
        expiresAtMs: out.expiresAt,
        tiers: out.tiers,
        outcome: null,
      };
      approvals.set(out.approvalId, approval);
      setState(GovState.AwaitingApproval);
      upsertMemo({ approval: view(approval) });
      const r: Reason = {
        code: 'AWAITING_APPROVAL',
        message: `${step.tool} needs a human approval (${out.approvalId})`,
        limit: null,
        requested: step.tool!,
        policy: `tools#${step.tool}.risk`,
      };
      return answer('await-approval', r, { approvalId: out.approvalId });
    }
    totals = out.totals;
    usage = { ...usage, tokensIn: usage.tokensIn + step.tokensIn, tokensOut: usage.tokensOut + step.tokensOut, costMicros: out.totals.costMicros };
    if (out.sideEffect && step.tool !== undefined) sideEffects.push({ seq, tool: step.tool, args: step.toolArgs ?? null });
    return answer(out.answer, null, {
      approvalId,
      fallbackModel: out.answer === 'degrade' ? out.model : null,
      ...(out.approvalToken ? { approvalToken: out.approvalToken } : {}),
    });
  };

  setHandler(
    stepUpdate,
    async (request): Promise<StepAnswer> => {
      // The usage is what the gate judges and the approval keeps; the caller only says who reports it.
      const { credential, as, ...step } = request;
      await condition(() => state === GovState.Running || awaiting() || FINAL_STATES.includes(state));
      // One step at a time: each is judged against the totals the previous one left.
      const run = gate.then(async (): Promise<StepAnswer> => {
        if (awaiting()) {
          const r: Reason = {
            code: 'AWAITING_APPROVAL',
            message: `task waits for approval ${approval?.approvalId}; no step until it is decided`,
            limit: null,
            requested: null,
            policy: 'task#state',
          };
          return answer('deny', r, { approvalId: approval?.approvalId ?? null });
        }
        if (state !== GovState.Running) {
          const r: Reason = { code: 'NOT_RUNNING', message: `task is ${state}`, limit: null, requested: null, policy: 'task#state' };
          return answer('deny', r);
        }
        const seq = ++stepSeq;
        const out = await gateStep({ taskId, seq, intent, plan: plan!, totals, step, requester, caller: callerOf({ credential, as }) }).catch(
          (err: unknown) => {
            // Input the ledger refuses for good ends the task; any other failure is the caller's to retry.
            const bad = dataError(err);
            if (bad !== null && fatal === null) fatal = { code: 'DATA_ERROR', message: `step ${seq}: ${bad}`, limit: null, requested: null, policy: 'ledger' };
            throw err;
          },
        );
        return applyGate(out, seq, step, null);
      });
      gate = run.catch(() => undefined);
      return run;
    },
    {
      validator: (step) => {
        parseOrRefuse(StepRequestSchema, step, TaskErrors.InvalidStep);
        if (plan !== null && plan.placement !== 'hosted') {
          throw ApplicationFailure.nonRetryable(
            `task ${taskId} runs on the cluster; only hosted agent/inference tasks take steps`,
            TaskErrors.NotAcceptingSteps,
          );
        }
        if (FINAL_STATES.includes(state) || state === GovState.NeedsOperator || state === GovState.Settling) {
          throw ApplicationFailure.nonRetryable(`task ${taskId} is ${state} and takes no more steps`, TaskErrors.NotAcceptingSteps);
        }
      },
    },
  );

  // Step leases (decision 0030): low-risk steps decided in the agent's process, reported in batches.
  const leased = installLeasedSteps({
    ...{ taskId, intent, ledger, carried: carried?.leased },
    view: () => ({ state, plan, totals, usage, stepSeq, requester }),
    set: (p) => void ({ totals = totals, usage = usage, stepSeq = stepSeq } = p),
    serial: (fn) => {
      const run = gate.then(fn);
      gate = run.catch(() => undefined);
      return run;
    },
  });

  /** Applies a ledger decision to the held approval (the ledger is the judge; this only follows it). */
  const follow = (a: HeldApproval, r: { recorded: boolean; state: string | null; by?: string }) => {
    if (a.state !== 'pending') return;
    if (r.state === 'approved' || r.state === 'rejected' || r.state === 'expired') {
      a.state = r.state;
      a.decidedBy = r.recorded ? (r.by ?? null) : a.decidedBy;
      upsertMemo({ approval: view(a) });
    }
  };

  const decide = async (kind: 'approve' | 'reject', d: ApprovalDecision): Promise<ApprovalAnswer> => {
    const a = approvals.get(d.approvalId)!;
    // The decider is whoever the credential says (the activity derives it); a typed name counts only under auth: none.
    const legacyBy = (d as { by?: string }).by;
    const r = await ledger.decideApproval({
      approvalId: d.approvalId,
      tool: a.tool,
      decision: kind,
      caller: callerOf({ ...d, ...(legacyBy !== undefined && d.as === undefined ? { as: legacyBy } : {}) }),
      reason: d.reason,
    });
    follow(a, r);
    return r.recorded
      ? { recorded: true, approvalId: r.approvalId, state: r.state, by: r.by, idempotent: r.idempotent }
      : { recorded: false, approvalId: r.approvalId, code: r.code, message: r.message, state: r.state };
  };
  const decisionValidator = (d: ApprovalDecision) => {
    parseOrRefuse(ApprovalDecisionSchema, d, TaskErrors.InvalidDecision);
    if (!approvals.has(d.approvalId))
      throw ApplicationFailure.nonRetryable(`task ${taskId} has no approval request ${d.approvalId}`, TaskErrors.UnknownApproval);
  };
  setHandler(approveUpdate, (d) => decide('approve', d), { validator: decisionValidator });
  setHandler(rejectUpdate, (d) => decide('reject', d), { validator: decisionValidator });
  setHandler(
    approvalOutcomeUpdate,
    async ({ approvalId }) => {
      const a = approvals.get(approvalId)!;
      await condition(() => a.outcome !== null || FINAL_STATES.includes(state) || state === GovState.NeedsOperator);
      return { approvalId, state: a.state === 'pending' ? 'expired' : a.state, decidedBy: a.decidedBy, step: a.outcome };
    },
    {
      validator: (q) => {
        parseOrRefuse(ApprovalOutcomeRequestSchema, q, TaskErrors.InvalidRequest);
        if (!approvals.has(q.approvalId)) {
          throw ApplicationFailure.nonRetryable(`task ${taskId} has no approval request ${String(q?.approvalId)}`, TaskErrors.UnknownApproval);
        }
      },
    },
  );
  setHandler(
    resolveUpdate,
    async (r) => {
      if (patched('identity-v1')) {
        const ok = await authorize('resolve', r);
        if (!ok.ok) return refusedCall(ok) as { accepted: false; code: string; message: string };
        resolution = { by: ok.by, reason: r.reason };
      } else {
        resolution = { by: (r as { by?: string }).by ?? 'unknown', reason: r.reason };
      }
      await condition(() => state !== GovState.NeedsOperator);
      return { state };
    },
    {
      validator: (r) => {
        parseOrRefuse(ResolveRequestSchema, r, TaskErrors.InvalidDecision);
        if (state !== GovState.NeedsOperator)
          throw ApplicationFailure.nonRetryable(`task ${taskId} is ${state}, not NeedsOperator`, TaskErrors.NotNeedingOperator);
      },
    },
  );

  upsertSearchAttributes([
    { key: SA.GovTenant, value: intent.attribution.tenant },
    { key: SA.GovTeam, value: intent.attribution.team },
    { key: SA.GovProject, value: intent.attribution.project },
    { key: SA.GovUseCase, value: intent.attribution.useCase },
    { key: SA.GovKind, value: intent.kind },
    { key: SA.GovPriority, value: intent.priority },
    { key: SA.GovRiskClass, value: intent.riskClass },
  ]);
  if (!carried) setState(GovState.Admitting);

  // Admission: rejected, admitted, or queued until the team's quota frees up (again after a preemption).
  /** Admitted and reserved: null; refused before admission ('refused'); else the final state to finish with. */
  const admission = async (): Promise<GovState | null | 'refused'> => {
    for (;;) {
      const admitted = await ledger.admitTask({
        taskId,
        intent,
        requester: input.requester,
        attempt: ++attempt,
        ...(input.credential ? { credential: input.credential } : {}),
      });
      timing = admitted.timing;
      const result = admitted.result;
      reasons = result.reasons;
      if (admitted.requester !== undefined) requester = admitted.requester;
      // No identity, no right to submit here, or another run's task id: nothing of this run is in
      // the ledger, so it ends without settling (settle would touch the other run's row).
      if (admitted.refused) {
        decision = 'rejected';
        return 'refused';
      }
      if (result.decision === 'rejected') {
        decision = 'rejected';
        return GovState.Rejected;
      }
      plan = result.plan;
      // Quota is taken by borrowers or lower-priority work: tell the victims to make room, then wait for it.
      if (admitted.preempt && patched('preemption')) {
        for (const v of admitted.preempt) {
          await getExternalWorkflowHandle(v.taskId)
            .signal(preemptSignal, {
              by: 'govloop',
              reason: `${v.why}: ${taskId} needs ${intent.resources.gpus} ${intent.resources.gpuType} GPUs`,
              preemptor: taskId,
            })
            .catch(() => undefined); // the victim already ended: its GPUs are free anyway
        }
      }
      const reserved = await ledger.reserveBudget({ taskId, intent, plan, ...(preemptions > 0 ? { requeued: true } : {}) });
      if (reserved.ok) {
        decision = 'admitted';
        reasons = [];
        return null;
      }
      reasons = reserved.reasons;
      if (!reserved.retry) {
        decision = 'rejected';
        return GovState.Rejected;
      }
      if (result.decision === 'queued' || reserved.retry) {
        decision = 'queued';
        setState(GovState.Queued);
        await ledger.recordState({ taskId, state: GovState.Queued, reasons });
        await continueIfLong('admission');
        if (await condition(() => cancelled !== null, timing.queueRetryMillis)) return GovState.Cancelled;
      }
    }
  };
  // A run that continues an earlier one goes back to where that one stopped (CarriedPhase).
  const resumeAt: CarriedPhase | null = carried?.phase ?? null;
  if (resumeAt === null || (resumeAt === 'admission' && preemptions === 0)) {
    let ended: Awaited<ReturnType<typeof admission>>;
    try {
      ended = await admission();
    } catch (err) {
      const bad = dataError(err);
      if (bad === null) throw err;
      // The ledger refused the task's own input: nothing was reserved; it ends Failed, settled and audited.
      decision = 'rejected';
      reasons = [{ code: 'DATA_ERROR', message: bad, limit: null, requested: null, policy: 'ledger' }];
      return finish(GovState.Failed);
    }
    if (ended === 'refused') {
      setState(GovState.Rejected);
      return status();
    }
    if (ended) return finish(ended);
    setState(GovState.Reserved);
  }
  plan = plan as Plan | null; // assigned inside admission(), which the compiler does not follow
  if (plan === null) throw ApplicationFailure.nonRetryable(`task ${taskId} was admitted without a plan`);

  // From here on the task holds a reservation: every way out goes through settle.
  const cluster = escalating(() => clusterActivities(timing.dispatchQueue, timing.retries?.clusterMaxAttempts));
  /** Where the cluster loop starts: placing the job, watching it, or readmission after a preemption. */
  let stage: 'dispatch' | 'running' | 'readmission' =
    resumeAt === 'running' ? 'running' : resumeAt === 'admission' ? (preemptions > 0 ? 'readmission' : 'dispatch') : 'dispatch';
  try {
    // A preempted job comes back here once readmitted: placed again and resumed from its checkpoint.
    while (plan.placement === 'cluster') {
      for (; stage === 'dispatch';) {
        const d = await cluster.dispatchJob({ taskId, intent, plan });
        job = d.job;
        if (d.ok) {
          nodes = d.nodes;
          reasons = [];
          setState(GovState.Running);
          stage = 'running';
          break;
        }
        reasons = [d.reason];
        if ((state as GovState) !== GovState.Queued) {
          setState(GovState.Queued);
          await ledger.recordState({ taskId, state: GovState.Queued, reasons });
        }
        await continueIfLong('dispatch');
        if (await condition(() => cancelled !== null, timing.queueRetryMillis)) return finish(GovState.Cancelled);
      }
      for (; stage === 'running';) {
        if (job === null) throw ApplicationFailure.nonRetryable(`task ${taskId} runs on the cluster without a job`);
        await continueIfLong('running');
        await condition(() => cancelled !== null || preemptReq !== null || jobChanged, timing.pollMillis);
        jobChanged = false;
        lastObservation = await cluster.observeJob({ taskId, job, intent, plan });
        usage = lastObservation.usage;
        progress = lastObservation.progress;
        if (cancelled) {
          await cluster.deleteJob({ job });
          await cluster.observeJob({ taskId, job, intent, plan });
          return finish(GovState.Cancelled);
        }
        if (lastObservation.capBreach) {
          reasons = [lastObservation.capBreach];
          await cluster.deleteJob({ job });
          return finish(GovState.CapExceeded);
        }
        if (lastObservation.phase === 'Succeeded') return finish(GovState.Succeeded);
        if (lastObservation.phase === 'Failed' || lastObservation.phase === 'Deleted') {
          reasons = [
            { code: 'NOT_RUNNING', message: lastObservation.message ?? `job ${lastObservation.phase}`, limit: null, requested: null, policy: `cluster/${job}` },
          ];
          await cluster.deleteJob({ job });
          return finish(GovState.Failed);
        }
        if (preemptReq !== null && patched('preemption')) {
          if (await preempt(preemptReq, job, cluster)) stage = 'readmission';
        }
      }
      // Preempted: back to the queue, with the reservation kept and the quota checked again.
      const notReadmitted = await admission();
      if (notReadmitted === 'refused') throw ApplicationFailure.nonRetryable(`task ${taskId} lost its claim to the ledger row while preempted`);
      if (notReadmitted) {
        if (job !== null) await cluster.deleteJob({ job }); // the suspended job will not run again
        return finish(notReadmitted);
      }
      setState(GovState.Reserved);
      stage = 'dispatch';
    }
    // Hosted work (agent steps, hosted inference): runs until finished, cancelled, a cap, or its deadline.
    setState(GovState.Running);
    const deadlineAt = plan.caps.deadline === null ? null : Date.parse(plan.caps.deadline);
    const ended = () => finished || cancelled !== null || fatal !== null || !(state === GovState.Running || awaiting());
    let inTime = true;
    let approvalEnd: Reason | null = null;
    for (;;) {
      const waitMs = deadlineAt === null ? undefined : Math.max(0, deadlineAt - Date.now());
      const wake = () => ended() || held() || longHistory();
      inTime = waitMs === undefined ? (await condition(wake), true) : await condition(wake, waitMs);
      if (!inTime || ended()) break;
      if (!held()) {
        await continueIfLong('hosted', () => !ended());
        continue;
      }
      approvalEnd = await holdForApproval(approval!, deadlineAt);
      if (approvalEnd !== null) break;
      if (deadlineAt !== null && Date.now() >= deadlineAt) {
        inTime = false;
        break;
      }
    }
    await gate;
    if (cancelled) return finish(GovState.Cancelled);
    if (fatal !== null) {
      reasons = [fatal];
      return finish(GovState.Failed);
    }
    if ((state as GovState) === GovState.CapExceeded) return finish(GovState.CapExceeded);
    if (approvalEnd !== null) {
      reasons = [approvalEnd];
      return finish(GovState.Rejected);
    }
    if (!inTime) {
      reasons = [
        { code: 'CAP_DEADLINE', message: `deadline ${plan.caps.deadline} passed`, limit: plan.caps.deadline, requested: null, policy: 'task#caps.deadline' },
      ];
      return finish(GovState.CapExceeded);
    }
    return finish(GovState.Succeeded);
  } catch (err) {
    if (err instanceof ContinueAsNew) throw err; // handing over to the next run, not failing
    // Compensate: nothing keeps running or stays reserved for a task that failed.
    log.error('task failed; compensating', { taskId, error: String(err) });
    if (job !== null) await cluster.deleteJob({ job });
    const bad = dataError(err);
    reasons = [
      bad !== null
        ? { code: 'DATA_ERROR', message: bad, limit: null, requested: null, policy: 'ledger' }
        : { code: 'NOT_RUNNING', message: `task failed: ${causeText(err)}`, limit: null, requested: null, policy: 'workflow' },
    ];
    return finish(GovState.Failed);
  }

  /**
   * Preemption of the running job: the checkpoint signal, the grace period, suspend (the job frees
   * its GPUs and keeps its progress up to the checkpoint), the last metering of what ran, then the
   * ledger record — lost GPU-seconds against the preemptor's team, the audit row naming the
   * preemptor — and GovState Preempted. False when a cancel came during the grace period.
   */
  async function preempt(p: PreemptRequest, job: string, cluster: ReturnType<typeof clusterActivities>): Promise<boolean> {
    const checkpointed = await cluster.checkpointJob({ job });
    // The policy's grace, or longer where the cluster needs longer to deliver the signal.
    const grace = Math.max(timing.preemptGraceMillis ?? 30_000, checkpointed?.graceMillis ?? 0);
    if (await condition(() => cancelled !== null, grace)) {
      preemptReq = null;
      return false;
    }
    const suspended = await cluster.suspendJob({ job, gpus: plan!.gpu.count });
    lastObservation = await cluster.observeJob({ taskId, job, intent, plan: plan! });
    usage = lastObservation.usage;
    progress = lastObservation.progress;
    preemptions++;
    const r = await ledger.recordPreemption({
      taskId,
      round: preemptions,
      by: p.by,
      reason: p.reason,
      preemptor: p.preemptor,
      lostGpuSecondsTotal: suspended.lostGpuSecondsTotal,
      gpuType: plan!.gpu.type,
      gpus: plan!.gpu.count,
    });
    reasons = [
      {
        code: 'PREEMPTED',
        message: `preempted by ${p.preemptor ?? p.by} (${p.reason}); ${r.lostGpuSeconds} GPU-seconds since the checkpoint lost`,
        limit: null,
        requested: null,
        policy: p.preemptor ? `task/${p.preemptor}` : 'operator',
      },
    ];
    nodes = [];
    preemptReq = null;
    decision = 'queued';
    setState(GovState.Preempted);
    return true;
  }

  /**
   * Holds a tool call until a human decides it: escalates to the next approver tier when nobody
   * answers in time, expires it at its TTL (through the ledger, so a racing approval and the
   * expiry are decided exactly once), then gates the approved step. Returns the reason the task
   * must stop (rejected or expired), or null to carry on.
   */
  async function holdForApproval(a: HeldApproval, deadlineAt: number | null): Promise<Reason | null> {
    while (a.state === 'pending') {
      const nextEscalation = a.tier + 1 < a.tiers ? a.requestedAtMs + (a.tier + 1) * a.escalateAfterMs : Infinity;
      const wakeAt = Math.min(nextEscalation, a.expiresAtMs, deadlineAt ?? Infinity);
      const stop = await condition(() => a.state !== 'pending' || finished || cancelled !== null, Math.max(1, wakeAt - Date.now()));
      if (stop && a.state === 'pending') return null;
      if (stop) break;
      const now = Date.now();
      if (deadlineAt !== null && now >= deadlineAt) return null;
      if (now >= a.expiresAtMs) {
        const r = await ledger.decideApproval({ approvalId: a.approvalId, tool: a.tool, decision: 'expire', by: 'govloop', reason: 'approval TTL passed' });
        follow(a, r);
        if (a.state === 'pending') await condition(() => a.state !== 'pending', 250);
      } else if (now >= nextEscalation) {
        const e = await ledger.escalateApproval({ approvalId: a.approvalId, tool: a.tool, fromTier: a.tier });
        a.tier = e.tier;
        if (a.state === 'pending' && e.state === 'pending') {
          setState(GovState.Escalated);
          upsertMemo({ approval: view(a) });
        }
      }
    }
    if (a.state === 'approved') {
      const run = gate.then(async () => {
        const out = await gateStep({ taskId, seq: a.seq, intent, plan: plan!, totals, step: a.step, requester, approved: a.approvalId });
        if (awaiting()) setState(GovState.Running);
        a.outcome = applyGate(out, a.seq, a.step, a.approvalId);
      });
      gate = run.catch(() => undefined);
      await run;
      return null;
    }
    const code = a.state === 'rejected' ? 'APPROVAL_REJECTED' : 'APPROVAL_EXPIRED';
    const r: Reason = {
      code,
      message:
        a.state === 'rejected'
          ? `${a.tool} call ${a.approvalId} rejected by ${a.decidedBy}`
          : `${a.tool} call ${a.approvalId} was not approved before ${a.expiresAt}`,
      limit: null,
      requested: a.tool,
      policy: `tools#${a.tool}.approvers`,
    };
    a.outcome = answer('deny', r, { approvalId: a.approvalId });
    return r;
  }

  /**
   * Undoes the completed side-effecting steps, newest first, with the catalog's compensations.
   * One that cannot succeed after its retries hands the task to an operator (NeedsOperator), who
   * deals with it by hand and resolves; then rollback goes on with the older steps.
   */
  async function rollBack(): Promise<void> {
    const policy = timing.compensation ?? { maxAttempts: 5, initialIntervalMs: 500 };
    const compensator = proxyActivities<Activities>({
      startToCloseTimeout: '60 seconds',
      retry: {
        initialInterval: policy.initialIntervalMs,
        backoffCoefficient: 2,
        maximumInterval: '30 seconds',
        maximumAttempts: policy.maxAttempts,
        nonRetryableErrorTypes: ['NoCompensation'],
      },
    });
    for (const s of [...sideEffects].reverse()) {
      const c: CompensationView = { step: s.seq, tool: s.tool, state: 'pending', error: null };
      compensations.push(c);
    }
    for (const c of compensations) {
      const s = sideEffects.find((x) => x.seq === c.step)!;
      try {
        await compensator.compensateStep({ taskId, seq: s.seq, tool: s.tool, args: s.args });
        c.state = 'done';
      } catch (err) {
        c.state = 'failed';
        const e = err instanceof Error ? err : new Error(String(err));
        c.error = e.cause instanceof Error ? e.cause.message : e.message;
        reasons = [
          ...reasons,
          {
            code: 'COMPENSATION_FAILED',
            message: `undoing ${s.tool} (step ${s.seq}) failed: ${c.error}`,
            limit: null,
            requested: s.tool,
            policy: `tools#${s.tool}.compensation`,
          },
        ];
        await ledger.compensationFailed({ taskId, seq: s.seq, tool: s.tool, error: c.error ?? 'unknown' });
        setState(GovState.NeedsOperator);
        await condition(() => resolution !== null);
        const r: { by: string; reason: string } = resolution!;
        resolution = null;
        await ledger.resolveTask({ taskId, by: r.by, reason: r.reason, state: GovState.Settling });
        state = GovState.Settling;
      }
    }
  }

  /**
   * A call ran out of its bounded retries: the task says so (NeedsOperator, a RETRIES_EXHAUSTED
   * reason, the memo, an audit row and a notification where the ledger answers) and waits for an
   * operator's `resolve`, then goes back to where it was and tries the call again.
   */
  async function askOperator(activity: string, err: ActivityFailure): Promise<void> {
    const before = state;
    const error = causeText(err);
    const why: Reason = {
      code: 'RETRIES_EXHAUSTED',
      message: `${activity} kept failing: ${error}; fix the cause, then resolve the task`,
      limit: null,
      requested: activity,
      policy: 'policies#retries',
    };
    reasons = [...reasons.filter((r) => r.code !== 'RETRIES_EXHAUSTED'), why];
    setState(GovState.NeedsOperator);
    upsertMemo({ escalation: { activity, error } });
    // Best effort: the ledger may be the part that is down. The state and its search attribute are the page.
    await boundedLedger(3)
      .operatorNeeded({ taskId, activity, error, round: ++escalations })
      .catch(() => undefined);
    await condition(() => resolution !== null);
    const r: { by: string; reason: string } = resolution!;
    resolution = null;
    reasons = reasons.filter((x) => x !== why);
    upsertMemo({ escalation: null });
    await ledger.resolveTask({ taskId, by: r.by, reason: r.reason, state: before, round: escalations });
    setState(before);
  }

  async function finish(final: GovState): Promise<TaskStatus> {
    await leased.drain();
    if (cancelled) {
      const c: { by: string; reason: string } = cancelled;
      reasons = [{ code: 'CANCELLED', message: `cancelled by ${c.by}: ${c.reason}`, limit: null, requested: null, policy: 'operator' }];
    }
    // A request nobody decided closes with the task.
    if (approval !== null && approval.state === 'pending') {
      const a: HeldApproval = approval;
      const r = await ledger.decideApproval({
        approvalId: a.approvalId,
        tool: a.tool,
        decision: 'expire',
        by: 'govloop',
        reason: `task ended ${final}`,
        force: true,
      });
      follow(a, r);
      if (a.outcome === null)
        a.outcome = answer(
          'deny',
          { code: 'NOT_RUNNING', message: `task ended ${final}`, limit: null, requested: null, policy: 'task#state' },
          { approvalId: a.approvalId },
        );
    }
    if (final !== GovState.Succeeded && sideEffects.length > 0) await rollBack();
    state = GovState.Settling;
    const settled = await ledger.settleTask({ taskId, state: final, reasons });
    usage = settled;
    setState(final);
    // Let in-flight step updates answer before the run closes.
    await condition(allHandlersFinished);
    log.info('task settled', { taskId, state: final, costUsd: usage.costMicros / 1e6, workflowId: workflowInfo().workflowId });
    return status();
  }
}
