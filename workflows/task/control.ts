/**
 * Who may cancel, finish, preempt or resolve a task, and the messages that ask it: the signals
 * govloop's own workflows send, the updates people send. Who may act is decided by an activity,
 * against the ledger (decision 0018): people by their credential, govloop's own workflows by the
 * ledger row that ordered the action. Safe to import from workflow code.
 */
import { ApplicationFailure, condition, log, setHandler } from '@temporalio/workflow';
import { z } from 'zod';
import { hasPatch } from '../patches';
import {
  FINAL_STATES,
  GovState,
  type TaskCallAnswer,
  type AdmissionRequest,
  admissionWithRequestUpdate,
  cancelSignal,
  cancelTaskUpdate,
  finishSignal,
  finishTaskUpdate,
  jobChangedSignal,
  preemptSignal,
  preemptTaskUpdate,
  requeueSignal,
  resolveUpdate,
} from '../messages';
import {
  CancelRequestSchema,
  CancelSignalSchema,
  FinishRequestSchema,
  FinishSignalSchema,
  PreemptRequestSchema,
  PreemptSignalSchema,
  RequeueSignalSchema,
  ResolveRequestSchema,
  issuesText,
} from '../schemas';
import { SyncReasons } from '../../governance/step-lease';
import { type StepLeaseAnswer, type StepLeaseRequest, StepLeaseRequestSchema } from '../leased-steps';
import type { Ledger } from './calls';
import { TaskErrors, callerOf, parseOrRefuse } from './errors';
import type { TaskState } from './state';

type TaskAction = 'cancel' | 'finish' | 'preempt' | 'resolve';

/** The admission update's optional request (AdmissionRequest). */
const AdmissionRequestSchema = z.strictObject({ stepLease: StepLeaseRequestSchema.optional() });
type Authorize = ReturnType<typeof authorizer>;

const authorizer =
  (t: TaskState, rawLedger: () => Ledger) =>
  (
    action: TaskAction,
    m: { credential?: string | undefined; as?: string | undefined; reason?: string },
    system?: { kind: 'budget-preempt' } | { kind: 'preemptor'; preemptor: string },
  ) =>
    rawLedger().authorizeTaskCall({
      taskId: t.taskId,
      tenant: t.intent.attribution.tenant,
      requester: t.requester,
      action,
      ...(m.reason ? { reason: m.reason } : {}),
      ...(system ? { system } : { caller: callerOf(m) }),
    });
const refusedCall = (r: { code: string; message: string }): TaskCallAnswer => ({ accepted: false, code: r.code, message: r.message });

/**
 * The cancel, finish, job-changed, requeue and preempt signals, the cancel, finish and preempt updates and
 * the admission update, in that order. Returns what `installResolve` needs.
 */
export function installControl(t: TaskState, rawLedger: () => Ledger, grantLease: (r: StepLeaseRequest) => Promise<StepLeaseAnswer>): Authorize {
  const { taskId } = t;
  const authorize = authorizer(t, rawLedger);
  const preemptible = () => {
    // Only a cluster job that holds GPUs can be preempted; one preemption at a time.
    const holding = t.state === GovState.Reserved || t.state === GovState.Dispatched || t.state === GovState.Running;
    return t.preemptReq === null && holding && t.plan?.placement === 'cluster' && t.cancelled === null;
  };

  setHandler(cancelSignal, async (c) => {
    if (!hasPatch('identity-v1')) {
      if (!t.cancelled) t.cancelled = { by: c.by ?? 'unknown', reason: c.reason };
      return;
    }
    const m = CancelSignalSchema.safeParse(c);
    if (!m.success) return log.warn('cancel signal ignored: invalid payload', { taskId, errors: issuesText(m.error) });
    const system = m.data.by === 'budget-controller' && !m.data.credential ? ({ kind: 'budget-preempt' } as const) : undefined;
    const ok = await authorize('cancel', m.data, system);
    if (ok.ok && !t.cancelled) t.cancelled = { by: ok.by, reason: m.data.reason };
  });
  setHandler(finishSignal, async (f) => {
    if (!hasPatch('identity-v1')) {
      t.finished = true;
      return;
    }
    const m = FinishSignalSchema.safeParse(f);
    if (!m.success) return log.warn('finish signal ignored: invalid payload', { taskId, errors: issuesText(m.error) });
    if ((await authorize('finish', m.data)).ok) t.finished = true;
  });
  setHandler(jobChangedSignal, () => {
    t.jobChanged = true;
  });
  setHandler(requeueSignal, (r) => {
    const m = RequeueSignalSchema.safeParse(r);
    if (!m.success) return log.warn('requeue signal ignored: invalid payload', { taskId, errors: issuesText(m.error) });
    t.requeued = true;
  });
  setHandler(preemptSignal, async (p) => {
    if (!hasPatch('identity-v1')) {
      if (preemptible()) t.preemptReq = p;
      return;
    }
    const m = PreemptSignalSchema.safeParse(p);
    if (!m.success) return log.warn('preempt signal ignored: invalid payload', { taskId, errors: issuesText(m.error) });
    if (!preemptible()) return;
    const system = m.data.preemptor !== null && !m.data.credential ? ({ kind: 'preemptor', preemptor: m.data.preemptor } as const) : undefined;
    const ok = await authorize('preempt', m.data, system);
    if (ok.ok && preemptible()) t.preemptReq = { by: ok.by, reason: m.data.reason, preemptor: m.data.preemptor };
  });

  // People cancel, finish and preempt through updates: refused before history when malformed,
  // answered with the refusal's code when their credential may not.
  const notEnded = () => {
    if (FINAL_STATES.includes(t.state) || t.state === GovState.Settling)
      throw ApplicationFailure.nonRetryable(`task ${taskId} is ${t.state}`, TaskErrors.TaskEnded);
  };
  setHandler(
    cancelTaskUpdate,
    async (c): Promise<TaskCallAnswer> => {
      const ok = await authorize('cancel', c);
      if (!ok.ok) return refusedCall(ok);
      if (!t.cancelled) t.cancelled = { by: ok.by, reason: c.reason };
      return { accepted: true, by: ok.by, state: t.state };
    },
    { validator: (c) => (parseOrRefuse(CancelRequestSchema, c, TaskErrors.InvalidRequest), notEnded()) },
  );
  setHandler(
    finishTaskUpdate,
    async (f): Promise<TaskCallAnswer> => {
      const ok = await authorize('finish', f);
      if (!ok.ok) return refusedCall(ok);
      t.finished = true;
      return { accepted: true, by: ok.by, state: t.state };
    },
    { validator: (f) => (parseOrRefuse(FinishRequestSchema, f, TaskErrors.InvalidRequest), notEnded()) },
  );
  setHandler(
    preemptTaskUpdate,
    async (p): Promise<TaskCallAnswer> => {
      const ok = await authorize('preempt', p);
      if (!ok.ok) return refusedCall(ok);
      if (!preemptible()) return { accepted: false, code: TaskErrors.NotPreemptible, message: `task ${taskId} is ${t.state} and holds no GPUs to give back` };
      t.preemptReq = { by: ok.by, reason: p.reason, preemptor: null };
      return { accepted: true, by: ok.by, state: t.state };
    },
    {
      validator: (p) => {
        parseOrRefuse(PreemptRequestSchema, p, TaskErrors.InvalidRequest);
        if (!preemptible()) throw ApplicationFailure.nonRetryable(`task ${taskId} is ${t.state} and holds no GPUs to give back`, TaskErrors.NotPreemptible);
      },
    },
  );
  setHandler(
    admissionWithRequestUpdate,
    async (req: AdmissionRequest | undefined) => {
      await condition(() => t.decision !== 'pending' || FINAL_STATES.includes(t.state));
      const answer = { taskId, decision: t.decision, reasons: t.reasons, state: t.state };
      if (req?.stepLease === undefined) return answer;
      // A step lease asked for at submit: granted once the admitted task runs, in this same update.
      const notGranted = (why: string, message: string) => ({
        ...answer,
        stepLease: { granted: false as const, leaseId: req.stepLease!.leaseId, why, message },
      });
      if (t.decision !== 'admitted') return notGranted(SyncReasons.NotRunning, `task ${taskId} was ${t.decision}`);
      if (t.plan !== null && t.plan.placement !== 'hosted')
        return notGranted(SyncReasons.NotRunning, `task ${taskId} runs on the cluster; only hosted tasks take steps`);
      await condition(() => t.state === GovState.Running || t.awaiting() || FINAL_STATES.includes(t.state));
      return { ...answer, stepLease: await grantLease(req.stepLease) };
    },
    { validator: (req) => void (req === undefined || parseOrRefuse(AdmissionRequestSchema, req, TaskErrors.InvalidRequest)) },
  );
  return authorize;
}

/** An operator resolves a task that waits for one (NeedsOperator); the update answers once it moved on. */
export function installResolve(t: TaskState, authorize: Authorize): void {
  setHandler(
    resolveUpdate,
    async (r) => {
      if (hasPatch('identity-v1')) {
        const ok = await authorize('resolve', r);
        if (!ok.ok) return refusedCall(ok) as { accepted: false; code: string; message: string };
        t.resolution = { by: ok.by, reason: r.reason };
      } else {
        t.resolution = { by: (r as { by?: string }).by ?? 'unknown', reason: r.reason };
      }
      await condition(() => t.state !== GovState.NeedsOperator);
      return { state: t.state };
    },
    {
      validator: (r) => {
        parseOrRefuse(ResolveRequestSchema, r, TaskErrors.InvalidDecision);
        if (t.state !== GovState.NeedsOperator)
          throw ApplicationFailure.nonRetryable(`task ${t.taskId} is ${t.state}, not NeedsOperator`, TaskErrors.NotNeedingOperator);
      },
    },
  );
}
