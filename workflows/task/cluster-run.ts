/**
 * The cluster run: the job placed (queued while the cluster has no room), watched until it ends,
 * is cancelled, breaches a cap or is preempted; a preempted job goes back to admission and, once
 * readmitted, is placed again and resumes from its checkpoint. Safe to import from workflow code.
 */
import { ApplicationFailure, condition } from '@temporalio/workflow';
import { hasPatch } from '../patches';
import type { Reason } from '../../governance/reasons';
import { GovState, type PreemptRequest } from '../messages';
import { admission } from './admission';
import type { Cluster, Ledger } from './calls';
import type { Continuation } from './continue';
import type { Finish, Finished, TaskState } from './state';

/** Where the cluster loop starts: placing the job, watching it, or readmission after a preemption. */
export type ClusterStage = 'dispatch' | 'running' | 'readmission';

export interface ClusterRunDeps {
  ledger: Ledger;
  cluster: Cluster;
  continuation: Continuation;
  finish: Finish;
}

/** Runs a cluster task to its end (settling: see Finished); null once its plan is no longer a cluster one (hosted work follows). */
export async function runCluster(t: TaskState, start: ClusterStage, deps: ClusterRunDeps): Promise<Finished | null> {
  const { taskId, intent } = t;
  const { ledger, cluster, continuation, finish } = deps;
  let stage = start;
  // A preempted job comes back here once readmitted: placed again and resumed from its checkpoint.
  while (t.plan!.placement === 'cluster') {
    for (; stage === 'dispatch';) {
      t.requeued = false;
      // Not yet Queued: a dispatch that finds no room records it in the ledger itself, as recordState did.
      const d = await cluster.dispatchJob({ taskId, intent, plan: t.plan!, recordQueued: t.state !== GovState.Queued });
      t.job = d.job;
      if (d.ok) {
        t.nodes = d.nodes;
        t.reasons = [];
        t.setState(GovState.Running);
        stage = 'running';
        break;
      }
      t.reasons = [d.reason];
      if ((t.state as GovState) !== GovState.Queued) {
        t.setState(GovState.Queued);
        // Its answer is in the history: runs that recorded a dispatch from before recordQueued call recordState as they did.
        if (!d.recordedQueued) await ledger.recordState({ taskId, state: GovState.Queued, reasons: t.reasons });
      }
      await continuation.continueIfLong('dispatch');
      // Waiting for nodes, not quota: it asks again after queueRetryMillis, or sooner when a release wakes it.
      if (await condition(() => t.cancelled !== null || t.requeued, t.timing.queueRetryMillis)) {
        if (t.cancelled !== null) return finish(GovState.Cancelled);
      }
    }
    for (; stage === 'running';) {
      const job = t.job;
      if (job === null) throw ApplicationFailure.nonRetryable(`task ${taskId} runs on the cluster without a job`);
      await continuation.continueIfLong('running');
      await condition(() => t.cancelled !== null || t.preemptReq !== null || t.jobChanged, t.timing.pollMillis);
      t.jobChanged = false;
      const observed = await cluster.observeJob({ taskId, job, intent, plan: t.plan! });
      t.lastObservation = observed;
      t.usage = observed.usage;
      t.progress = observed.progress;
      if (t.cancelled) {
        await cluster.deleteJob({ job });
        await cluster.observeJob({ taskId, job, intent, plan: t.plan! });
        return finish(GovState.Cancelled);
      }
      if (observed.capBreach) {
        t.reasons = [observed.capBreach];
        await cluster.deleteJob({ job });
        return finish(GovState.CapExceeded);
      }
      // A preemption accepted for a job that then ended: the task ends as its job did, and says why nothing was suspended.
      const late = t.preemptReq !== null && jobEnded(observed.phase) && hasPatch('preempt-too-late') ? [preemptTooLate(t.preemptReq, observed.phase)] : [];
      if (observed.phase === 'Succeeded') {
        if (late.length > 0) t.reasons = late;
        return finish(GovState.Succeeded);
      }
      if (observed.phase === 'Failed' || observed.phase === 'Deleted') {
        t.reasons = [
          { code: 'NOT_RUNNING', message: observed.message ?? `job ${observed.phase}`, limit: null, requested: null, policy: `cluster/${job}` },
          ...late,
        ];
        await cluster.deleteJob({ job });
        return finish(GovState.Failed);
      }
      if (t.preemptReq !== null && hasPatch('preemption')) {
        if (await preempt(t, ledger, cluster, t.preemptReq, job)) stage = 'readmission';
      }
    }
    // Preempted: back to the queue, with the reservation kept and the quota checked again.
    const notReadmitted = await admission(t, ledger, continuation);
    if (notReadmitted === 'refused') throw ApplicationFailure.nonRetryable(`task ${taskId} lost its claim to the ledger row while preempted`);
    if (notReadmitted) {
      if (t.job !== null) await cluster.deleteJob({ job: t.job }); // the suspended job will not run again
      return finish(notReadmitted);
    }
    t.setState(GovState.Reserved);
    stage = 'dispatch';
  }
  return null;
}

/**
 * Preemption of the running job: the checkpoint signal, the grace period, suspend (the job frees
 * its GPUs and keeps its progress up to the checkpoint), the last metering of what ran, then the
 * ledger record — lost GPU-seconds against the preemptor's team, the audit row naming the
 * preemptor — and GovState Preempted. False when a cancel came during the grace period, or the job
 * ended during it (the request is kept: the caller's next look ends the task, PREEMPT_TOO_LATE).
 */
async function preempt(t: TaskState, ledger: Ledger, cluster: Cluster, p: PreemptRequest, job: string): Promise<boolean> {
  const { taskId, intent } = t;
  const checkpointed = await cluster.checkpointJob({ job });
  // The policy's grace, or longer where the cluster needs longer to deliver the signal.
  const grace = Math.max(t.timing.preemptGraceMillis ?? 30_000, checkpointed?.graceMillis ?? 0);
  if (await condition(() => t.cancelled !== null, grace)) {
    t.preemptReq = null;
    return false;
  }
  const plan = t.plan!;
  const suspended = await cluster.suspendJob({ job, gpus: plan.gpu.count });
  t.lastObservation = await cluster.observeJob({ taskId, job, intent, plan });
  t.usage = t.lastObservation.usage;
  t.progress = t.lastObservation.progress;
  // The job ended during the grace period (suspend leaves an ended job as it is): nothing to
  // preempt. The request stays, so the running loop looks at once and ends the task as its job did.
  if (jobEnded(t.lastObservation.phase) && hasPatch('preempt-too-late')) return false;
  t.preemptions++;
  const r = await ledger.recordPreemption({
    taskId,
    round: t.preemptions,
    by: p.by,
    reason: p.reason,
    preemptor: p.preemptor,
    lostGpuSecondsTotal: suspended.lostGpuSecondsTotal,
    gpuType: plan.gpu.type,
    gpus: plan.gpu.count,
  });
  t.reasons = [
    {
      code: 'PREEMPTED',
      message: `preempted by ${p.preemptor ?? p.by} (${p.reason}); ${r.lostGpuSeconds} GPU-seconds since the checkpoint lost`,
      limit: null,
      requested: null,
      policy: p.preemptor ? `task/${p.preemptor}` : 'operator',
    },
  ];
  t.nodes = [];
  t.preemptReq = null;
  t.decision = 'queued';
  t.setState(GovState.Preempted);
  return true;
}

/** The job ran to its end (succeeded or failed): there is nothing left to suspend. */
const jobEnded = (phase: string): boolean => phase === 'Succeeded' || phase === 'Failed';

/** Why a task whose preemption was accepted ended as its job did: the job got there first. */
function preemptTooLate(p: PreemptRequest, phase: string): Reason {
  return {
    code: 'PREEMPT_TOO_LATE',
    message: `preemption by ${p.preemptor ?? p.by} (${p.reason}) not carried out: the job ${phase.toLowerCase()} before it took effect`,
    limit: null,
    requested: null,
    policy: p.preemptor ? `task/${p.preemptor}` : 'operator',
  };
}
