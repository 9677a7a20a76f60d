import type { SearchAttributeUpdatePair } from '@temporalio/common';
import { ApplicationFailure, ContinueAsNew, allHandlersFinished, condition, log, setHandler, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import { type CarriedPhase, GovState, type TaskInput, type TaskStatus, statusQuery } from './messages';
import { hasPatch } from './patches';
import * as SA from './search-attributes';
import { type StepLeaseAnswer, type StepLeaseRequest, installLeasedSteps } from './leased-steps';
import { type AdmissionEnd, admission } from './task/admission';
import { type FinishTask, installStepUpdate } from './task/agent-steps';
import { closeUndecided, installApprovals } from './task/approvals';
import { clusterActivities } from './task/calls';
import { type ClusterStage, runCluster } from './task/cluster-run';
import { continuation as continuationOf } from './task/continue';
import { installControl, installResolve } from './task/control';
import { dataError, causeText } from './task/errors';
import { runHosted } from './task/hosted-run';
import { installEscalation } from './task/operator';
import { rollBack } from './task/rollback';
import { TaskState } from './task/state';

export { TaskErrors } from './task/errors';

/**
 * One governed workload: admission → translation → reservation → dispatch → run → settle → audit.
 * Decisions are made in activities over pure functions; this function only orchestrates: the
 * task's memory is one TaskState (workflows/task/state.ts), each part lives in its own file under
 * workflows/task/, and this wires them in the order their handlers and commands must keep.
 */
export async function governedTask(input: TaskInput): Promise<TaskStatus> {
  // Tasks started before continue-as-new existed never hand over: their replay has no such command.
  const mayContinue = hasPatch('continue-as-new');
  // The ledger calls as local activities (decision 0032): runs started before replay with the queued ones they recorded.
  const localLedgerCalls = hasPatch('task-ledger-local-activities');
  const t = new TaskState(input);
  const { taskId, intent, carried } = t;

  // The task's own ledger and cluster calls retry within a bound; past it the task asks an
  // operator and waits (NeedsOperator), then tries again once resolved (decision 0020).
  const { rawLedger, escalating, ledger } = installEscalation(t, localLedgerCalls);
  const continuation = continuationOf(t, mayContinue, () => leased.carry());

  // The handlers, in the order the task has always set them (buffered messages are delivered in it).
  setHandler(statusQuery, () => t.status());
  // The admission update grants a step lease asked for at submit; the leased gate is installed after it.
  let grant: ((r: StepLeaseRequest) => Promise<StepLeaseAnswer>) | null = null;
  const authorize = installControl(t, rawLedger, (r) => grant!(r));
  const finishTask: FinishTask = async (caller) => {
    const ok = await authorize('finish', caller);
    if (ok.ok) t.finished = true;
    return ok.ok ? true : { refused: { code: ok.code, message: ok.message } };
  };
  installStepUpdate(t, finishTask);
  // Step leases (decision 0030): low-risk steps decided in the agent's process, reported in batches.
  const leased = installLeasedSteps({
    ...{ taskId, intent, ledger, carried: carried?.leased },
    view: () => ({ state: t.state, plan: t.plan, totals: t.totals, usage: t.usage, stepSeq: t.stepSeq, requester: t.requester, finished: t.finished }),
    set: (p) => void ({ totals: t.totals = t.totals, usage: t.usage = t.usage, stepSeq: t.stepSeq = t.stepSeq } = p),
    serial: (fn) => t.serial(fn),
    finish: finishTask,
  });
  grant = leased.grant;
  installApprovals(t, ledger);
  installResolve(t, authorize);

  const identity: SearchAttributeUpdatePair[] = [
    { key: SA.GovTenant, value: intent.attribution.tenant },
    { key: SA.GovTeam, value: intent.attribution.team },
    { key: SA.GovProject, value: intent.attribution.project },
    { key: SA.GovUseCase, value: intent.attribution.useCase },
    { key: SA.GovKind, value: intent.kind },
    { key: SA.GovPriority, value: intent.priority },
    { key: SA.GovRiskClass, value: intent.riskClass },
  ];
  // With the state, in one upsert (TaskState.mirror); runs recorded before wrote them apart.
  if (t.coalesced) t.mirror(identity);
  else upsertSearchAttributes(identity);
  if (!carried) t.setState(GovState.Admitting);

  async function finish(final: GovState): Promise<TaskStatus> {
    await leased.drain();
    if (t.cancelled) {
      const c: { by: string; reason: string } = t.cancelled;
      t.reasons = [{ code: 'CANCELLED', message: `cancelled by ${c.by}: ${c.reason}`, limit: null, requested: null, policy: 'operator' }];
    }
    await closeUndecided(t, ledger, final);
    if (final !== GovState.Succeeded && t.sideEffects.length > 0) await rollBack(t, ledger);
    t.state = GovState.Settling;
    const settled = await ledger.settleTask({ taskId, state: final, reasons: t.reasons });
    t.usage = settled;
    t.setState(final);
    // Let in-flight step updates answer before the run closes.
    await condition(allHandlersFinished);
    log.info('task settled', { taskId, state: final, costUsd: t.usage.costMicros / 1e6, workflowId: workflowInfo().workflowId });
    return t.status();
  }

  // A run that continues an earlier one goes back to where that one stopped (CarriedPhase).
  const resumeAt: CarriedPhase | null = carried?.phase ?? null;
  if (resumeAt === null || (resumeAt === 'admission' && t.preemptions === 0)) {
    let ended: AdmissionEnd;
    try {
      ended = await admission(t, ledger, continuation);
    } catch (err) {
      const bad = dataError(err);
      if (bad === null) throw err;
      // The ledger refused the task's own input: nothing was reserved; it ends Failed, settled and audited.
      t.decision = 'rejected';
      t.reasons = [{ code: 'DATA_ERROR', message: bad, limit: null, requested: null, policy: 'ledger' }];
      return finish(GovState.Failed);
    }
    if (ended === 'refused') {
      t.setState(GovState.Rejected);
      return t.status();
    }
    if (ended) return finish(ended);
    t.setState(GovState.Reserved);
  }
  if (t.plan === null) throw ApplicationFailure.nonRetryable(`task ${taskId} was admitted without a plan`);

  // From here on the task holds a reservation: every way out goes through settle.
  const cluster = escalating(() => clusterActivities(t.timing.dispatchQueue, t.timing.retries?.clusterMaxAttempts));
  const stage: ClusterStage = resumeAt === 'running' ? 'running' : resumeAt === 'admission' ? (t.preemptions > 0 ? 'readmission' : 'dispatch') : 'dispatch';
  const settle = (final: GovState) => ({ settled: finish(final) });
  try {
    const ended =
      (await runCluster(t, stage, { ledger, cluster, continuation, finish: settle })) ?? (await runHosted(t, { ledger, continuation, finish: settle }));
    return ended.settled; // not awaited here: a failure while settling is not the run's to compensate
  } catch (err) {
    if (err instanceof ContinueAsNew) throw err; // handing over to the next run, not failing
    // Compensate: nothing keeps running or stays reserved for a task that failed.
    log.error('task failed; compensating', { taskId, error: String(err) });
    if (t.job !== null) await cluster.deleteJob({ job: t.job });
    const bad = dataError(err);
    t.reasons = [
      bad !== null
        ? { code: 'DATA_ERROR', message: bad, limit: null, requested: null, policy: 'ledger' }
        : { code: 'NOT_RUNNING', message: `task failed: ${causeText(err)}`, limit: null, requested: null, policy: 'workflow' },
    ];
    return finish(GovState.Failed);
  }
}
