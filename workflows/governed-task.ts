import {
  ApplicationFailure,
  allHandlersFinished,
  condition,
  log,
  proxyActivities,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities, Observation } from '../activities';
import type { Plan } from '../governance/plan';
import type { Reason } from '../governance/reasons';
import { type StepTotals, StepUsageSchema, zeroTotals } from '../governance/step-gate';
import {
  type Decision,
  FINAL_STATES,
  GovState,
  type StepAnswer,
  type TaskInput,
  type TaskStatus,
  admissionUpdate,
  cancelSignal,
  finishSignal,
  statusQuery,
  stepUpdate,
} from './messages';
import * as SA from './search-attributes';

/** Ledger and policy calls: quick, retried until the ledger answers (it is the source of truth). */
const ledger = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '200 milliseconds', backoffCoefficient: 2, maximumInterval: '10 seconds' },
});
/**
 * Cluster calls go to the cluster's own task queue, where its dispatcher runs: a bit more time,
 * same unlimited retry (a cluster outage must not lose the task).
 */
const clusterActivities = (taskQueue: string) =>
  proxyActivities<Activities>({
    taskQueue,
    startToCloseTimeout: '60 seconds',
    retry: { initialInterval: '500 milliseconds', backoffCoefficient: 2, maximumInterval: '30 seconds' },
  });

export const TaskErrors = { InvalidStep: 'InvalidStep', NotAcceptingSteps: 'NotAcceptingSteps' } as const;

/**
 * One governed workload: admission → translation → reservation → dispatch → run → settle → audit.
 * Decisions are made in activities over pure functions; this function only orchestrates.
 */
export async function governedTask(input: TaskInput): Promise<TaskStatus> {
  const { taskId, intent } = input;
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
  });

  setHandler(statusQuery, status);
  setHandler(cancelSignal, (c) => {
    if (!cancelled) cancelled = c;
  });
  setHandler(finishSignal, () => {
    finished = true;
  });
  setHandler(admissionUpdate, async () => {
    await condition(() => decision !== 'pending' || FINAL_STATES.includes(state));
    return { taskId, decision, reasons, state };
  });
  setHandler(
    stepUpdate,
    async (step): Promise<StepAnswer> => {
      await condition(() => state === GovState.Running || FINAL_STATES.includes(state));
      // One step at a time: each is judged against the totals the previous one left.
      const run = gate.then(async (): Promise<StepAnswer> => {
        if (state !== GovState.Running) {
          const r: Reason = { code: 'NOT_RUNNING', message: `task is ${state}`, limit: null, requested: null, policy: 'task#state' };
          return { answer: 'deny', reason: r, step: totals.steps, costUsd: usage.costMicros / 1e6 };
        }
        const seq = ++stepSeq;
        const out = await ledger.gateStep({ taskId, seq, intent, plan: plan!, totals, step });
        if (out.answer === 'allow') {
          totals = out.totals;
          usage = { ...usage, tokensIn: usage.tokensIn + step.tokensIn, tokensOut: usage.tokensOut + step.tokensOut, costMicros: out.totals.costMicros };
          return { answer: 'allow', reason: null, step: totals.steps, costUsd: usage.costMicros / 1e6 };
        }
        if (out.reason.code.startsWith('CAP_') && state === GovState.Running) {
          reasons = [out.reason];
          setState(GovState.CapExceeded);
        }
        return { answer: 'deny', reason: out.reason, step: totals.steps, costUsd: usage.costMicros / 1e6 };
      });
      gate = run.catch(() => undefined);
      return run;
    },
    {
      validator: (step) => {
        const parsed = StepUsageSchema.safeParse(step);
        if (!parsed.success) {
          throw ApplicationFailure.nonRetryable(parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; '), TaskErrors.InvalidStep);
        }
        if (plan !== null && plan.placement !== 'hosted') {
          throw ApplicationFailure.nonRetryable(`task ${taskId} runs on the cluster; only hosted agent/inference tasks take steps`, TaskErrors.NotAcceptingSteps);
        }
        if (FINAL_STATES.includes(state)) {
          throw ApplicationFailure.nonRetryable(`task ${taskId} is ${state} and takes no more steps`, TaskErrors.NotAcceptingSteps);
        }
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
  setState(GovState.Admitting);

  // Admission: rejected, admitted, or queued until the team's quota frees up.
  let timing = { pollMillis: 1000, queueRetryMillis: 1000, dispatchQueue: '' };
  for (let attempt = 1; ; attempt++) {
    const admitted = await ledger.admitTask({ taskId, intent, requester: input.requester, attempt });
    timing = admitted.timing;
    const result = admitted.result;
    reasons = result.reasons;
    if (result.decision === 'rejected') {
      decision = 'rejected';
      return finish(GovState.Rejected);
    }
    plan = result.plan;
    const reserved = await ledger.reserveBudget({ taskId, intent, plan });
    if (reserved.ok) {
      decision = 'admitted';
      reasons = [];
      break;
    }
    reasons = reserved.reasons;
    if (!reserved.retry) {
      decision = 'rejected';
      return finish(GovState.Rejected);
    }
    if (result.decision === 'queued' || reserved.retry) {
      decision = 'queued';
      setState(GovState.Queued);
      await ledger.recordState({ taskId, state: GovState.Queued, reasons });
      if (await condition(() => cancelled !== null, timing.queueRetryMillis)) return finish(GovState.Cancelled);
    }
  }
  setState(GovState.Reserved);

  // From here on the task holds a reservation: every way out goes through settle.
  let job: string | null = null;
  const cluster = clusterActivities(timing.dispatchQueue);
  try {
    if (plan.placement === 'cluster') {
      for (;;) {
        const d = await cluster.dispatchJob({ taskId, intent, plan });
        job = d.job;
        if (d.ok) {
          nodes = d.nodes;
          break;
        }
        reasons = [d.reason];
        if ((state as GovState) !== GovState.Queued) {
          setState(GovState.Queued);
          await ledger.recordState({ taskId, state: GovState.Queued, reasons });
        }
        if (await condition(() => cancelled !== null, timing.queueRetryMillis)) return finish(GovState.Cancelled);
      }
      reasons = [];
      setState(GovState.Running);
      for (;;) {
        await condition(() => cancelled !== null, timing.pollMillis);
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
          reasons = [{ code: 'NOT_RUNNING', message: lastObservation.message ?? `job ${lastObservation.phase}`, limit: null, requested: null, policy: `cluster/${job}` }];
          await cluster.deleteJob({ job });
          return finish(GovState.Failed);
        }
      }
    }
    // Hosted work (agent steps, hosted inference): runs until finished, cancelled, a cap, or its deadline.
    setState(GovState.Running);
    const deadlineMs = plan.caps.deadline === null ? undefined : Math.max(0, Date.parse(plan.caps.deadline) - Date.now());
    const ended = () => finished || cancelled !== null || state !== GovState.Running;
    const inTime = deadlineMs === undefined ? (await condition(ended), true) : await condition(ended, deadlineMs);
    await gate;
    if (cancelled) return finish(GovState.Cancelled);
    if ((state as GovState) === GovState.CapExceeded) return finish(GovState.CapExceeded);
    if (!inTime) {
      reasons = [{ code: 'CAP_DEADLINE', message: `deadline ${plan.caps.deadline} passed`, limit: plan.caps.deadline, requested: null, policy: 'task#caps.deadline' }];
      return finish(GovState.CapExceeded);
    }
    return finish(GovState.Succeeded);
  } catch (err) {
    // Compensate: nothing keeps running or stays reserved for a task that failed.
    log.error('task failed; compensating', { taskId, error: String(err) });
    if (job !== null) await cluster.deleteJob({ job });
    reasons = [{ code: 'NOT_RUNNING', message: `task failed: ${String(err)}`, limit: null, requested: null, policy: 'workflow' }];
    return finish(GovState.Failed);
  }

  async function finish(final: GovState): Promise<TaskStatus> {
    if (cancelled) {
      const c: { by: string; reason: string } = cancelled;
      reasons = [{ code: 'CANCELLED', message: `cancelled by ${c.by}: ${c.reason}`, limit: null, requested: null, policy: 'operator' }];
    }
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
