/**
 * Agent steps, the synchronous gate (hosted agent and inference tasks): the step update, the gate's
 * answer applied to the task (totals, usage, rollback stack, approval hold, cap stop). Safe to
 * import from workflow code.
 */
import { ApplicationFailure, condition, setHandler, upsertMemo } from '@temporalio/workflow';
import type { GateOutcome } from '../../activities';
import type { Reason } from '../../governance/reasons';
import type { StepUsage } from '../../governance/step-gate';
import { FINAL_STATES, GovState, type HeldApproval, type StepAnswer, stepUpdate } from '../messages';
import { StepRequestSchema } from '../schemas';
import { gateStep } from './calls';
import { TaskErrors, callerOf, dataError, parseOrRefuse } from './errors';
import { type TaskState, approvalView } from './state';

/** The task's answer to a step, with its step count and cost now. */
export const answer = (t: TaskState, a: StepAnswer['answer'], reason: Reason | null, extra: Partial<StepAnswer> = {}): StepAnswer => ({
  answer: a,
  reason,
  approvalId: null,
  fallbackModel: null,
  step: t.totals.steps,
  costUsd: t.costUsd(),
  ...extra,
});

/** Applies the gate's answer to the task: totals, usage, rollback stack, approval hold, cap stop. */
export function applyGate(t: TaskState, out: GateOutcome, seq: number, step: StepUsage, approvalId: string | null): StepAnswer {
  if (out.answer === 'deny') {
    if (out.reason.code.startsWith('CAP_') && (t.state === GovState.Running || t.awaiting())) {
      t.reasons = [out.reason];
      t.setState(GovState.CapExceeded);
    }
    return answer(t, 'deny', out.reason, { approvalId });
  }
  if (out.answer === 'await-approval') {
    const approval: HeldApproval = {
      approvalId: out.approvalId,
      tool: step.tool!,
      argsDigest: out.argsDigest,
      requester: t.requester,
      costSoFarUsd: t.costUsd(),
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
    t.approval = approval;
    t.approvals.set(out.approvalId, approval);
    t.setState(GovState.AwaitingApproval);
    upsertMemo({ approval: approvalView(approval) });
    const r: Reason = {
      code: 'AWAITING_APPROVAL',
      message: `${step.tool} needs a human approval (${out.approvalId})`,
      limit: null,
      requested: step.tool!,
      policy: `tools#${step.tool}.risk`,
    };
    return answer(t, 'await-approval', r, { approvalId: out.approvalId });
  }
  t.totals = out.totals;
  t.usage = { ...t.usage, tokensIn: t.usage.tokensIn + step.tokensIn, tokensOut: t.usage.tokensOut + step.tokensOut, costMicros: out.totals.costMicros };
  if (out.sideEffect && step.tool !== undefined) t.sideEffects.push({ seq, tool: step.tool, args: step.toolArgs ?? null });
  return answer(t, out.answer, null, {
    approvalId,
    fallbackModel: out.answer === 'degrade' ? out.model : null,
    ...(out.approvalToken ? { approvalToken: out.approvalToken } : {}),
  });
}

/**
 * Finishes the task for a caller, with the same check and audit as the finish update
 * (workflows/task/control.ts): true, or why it may not.
 */
export type FinishTask = (caller: {
  credential?: string | undefined;
  as?: string | undefined;
}) => Promise<true | { refused: { code: string; message: string } }>;

export function installStepUpdate(t: TaskState, finishTask: FinishTask): void {
  const { taskId, intent } = t;
  setHandler(
    stepUpdate,
    async (request): Promise<StepAnswer> => {
      // The usage is what the gate judges and the approval keeps; the caller only says who reports it.
      const { credential, as, finish, ...step } = request;
      await condition(() => t.state === GovState.Running || t.awaiting() || FINAL_STATES.includes(t.state));
      // One step at a time: each is judged against the totals the previous one left.
      return t.serial(async (): Promise<StepAnswer> => {
        if (t.awaiting()) {
          const r: Reason = {
            code: 'AWAITING_APPROVAL',
            message: `task waits for approval ${t.approval?.approvalId}; no step until it is decided`,
            limit: null,
            requested: null,
            policy: 'task#state',
          };
          return answer(t, 'deny', r, { approvalId: t.approval?.approvalId ?? null });
        }
        if (t.state !== GovState.Running) {
          const r: Reason = { code: 'NOT_RUNNING', message: `task is ${t.state}`, limit: null, requested: null, policy: 'task#state' };
          return answer(t, 'deny', r);
        }
        const seq = ++t.stepSeq;
        const { plan, totals, requester } = t;
        const out = await gateStep({ taskId, seq, intent, plan: plan!, totals, step, requester, caller: callerOf({ credential, as }) }).catch(
          (err: unknown) => {
            // Input the ledger refuses for good ends the task; any other failure is the caller's to retry.
            const bad = dataError(err);
            if (bad !== null && t.fatal === null)
              t.fatal = { code: 'DATA_ERROR', message: `step ${seq}: ${bad}`, limit: null, requested: null, policy: 'ledger' };
            throw err;
          },
        );
        const a = applyGate(t, out, seq, step, null);
        // The last step, finishing the task: only a step that may run, on a task still running.
        if (finish === true && (a.answer === 'allow' || a.answer === 'degrade') && t.state === GovState.Running) {
          return { ...a, finished: await finishTask({ credential, as }) };
        }
        return a;
      });
    },
    {
      validator: (step) => {
        parseOrRefuse(StepRequestSchema, step, TaskErrors.InvalidStep);
        if (t.plan !== null && t.plan.placement !== 'hosted') {
          throw ApplicationFailure.nonRetryable(
            `task ${taskId} runs on the cluster; only hosted agent/inference tasks take steps`,
            TaskErrors.NotAcceptingSteps,
          );
        }
        if (FINAL_STATES.includes(t.state) || t.state === GovState.NeedsOperator || t.state === GovState.Settling) {
          throw ApplicationFailure.nonRetryable(`task ${taskId} is ${t.state} and takes no more steps`, TaskErrors.NotAcceptingSteps);
        }
      },
    },
  );
}
