/**
 * Admission: rejected, admitted, or queued until the team's quota frees up (again after a
 * preemption): a task that releases GPUs wakes the queued tasks they can go to (the requeue signal). Quota taken by borrowers or lower-priority work: the victims are told to make
 * room. Safe to import from workflow code.
 */
import { condition, getExternalWorkflowHandle } from '@temporalio/workflow';
import { hasPatch } from '../patches';
import { queuedWaitMillis } from '../../config/task-queues';
import { GovState, preemptSignal } from '../messages';
import type { Ledger } from './calls';
import type { Continuation } from './continue';
import type { TaskState } from './state';

/** Admitted and reserved: null; refused before admission ('refused'); else the final state to finish with. */
export type AdmissionEnd = GovState | null | 'refused';

export async function admission(t: TaskState, ledger: Ledger, continuation: Continuation): Promise<AdmissionEnd> {
  const { taskId, intent, input } = t;
  for (;;) {
    // A wake from here on is for this attempt's answer: one that comes while it is being decided
    // is kept and ends the wait below at once.
    t.requeued = false;
    // Queued in the ledger before this ask (and, if it answers queued, all through it): a release
    // meanwhile wakes it. Otherwise admitTask says whether a release passed it by (passedBy).
    const wasQueued = t.state === GovState.Queued || t.state === GovState.Preempted;
    // Admission reserves in the same local activity (issue 13); histories from before ask twice.
    const together = hasPatch('admission-reserves');
    const admitted = await ledger.admitTask({
      taskId,
      intent,
      requester: input.requester,
      attempt: ++t.attempt,
      ...(input.credential ? { credential: input.credential } : {}),
      ...(wasQueued ? { queuedBefore: true } : {}),
      ...(together ? { reserve: t.preemptions > 0 ? { requeued: true } : {} } : {}),
    });
    t.timing = admitted.timing;
    const result = admitted.result;
    t.reasons = result.reasons;
    if (admitted.requester !== undefined) t.requester = admitted.requester;
    // No identity, no right to submit here, or another run's task id: nothing of this run is in
    // the ledger, so it ends without settling (settle would touch the other run's row).
    if (admitted.refused) {
      t.decision = 'rejected';
      return 'refused';
    }
    if (result.decision === 'rejected') {
      t.decision = 'rejected';
      return GovState.Rejected;
    }
    const plan = result.plan;
    t.plan = plan;
    // Quota is taken by borrowers or lower-priority work: tell the victims to make room, then wait for it.
    if (admitted.preempt && hasPatch('preemption')) {
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
    // Reserved by admitTask already, unless it had victims to tell first (or the history is older).
    const reserved = admitted.reserved ?? (await ledger.reserveBudget({ taskId, intent, plan, ...(t.preemptions > 0 ? { requeued: true } : {}) }));
    if (reserved.ok) {
      t.decision = 'admitted';
      t.reasons = [];
      return null;
    }
    t.reasons = reserved.reasons;
    if (!reserved.retry) {
      t.decision = 'rejected';
      return GovState.Rejected;
    }
    if (result.decision === 'queued' || reserved.retry) {
      t.decision = 'queued';
      t.setState(GovState.Queued);
      // admitTask recorded it with its reservation's answer; a reservation asked apart is recorded here.
      if (!admitted.reserved) await ledger.recordState({ taskId, state: GovState.Queued, reasons: t.reasons });
      await continuation.continueIfLong('admission');
      // Woken when GPUs this task could take are released; otherwise it asks again after a recheck
      // that grows with its place in the queue (config/task-queues.ts queuedWaitMillis).
      const visible = result.decision === 'queued' && (wasQueued || admitted.passedBy === false);
      const wait = queuedWaitMillis(t.timing, t.reasons, visible, admitted.queuePosition);
      if (await condition(() => t.cancelled !== null || t.requeued, wait)) {
        if (t.cancelled !== null) return GovState.Cancelled;
      }
    }
  }
}
