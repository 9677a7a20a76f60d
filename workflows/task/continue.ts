/**
 * Continue-as-new (decision 0022): past the configured history length, or when the server
 * suggests it, the task hands over to a fresh run of itself at a safe point of its loop: nothing
 * held for a human, no cancel, finish or preemption waiting, every message handler done. The
 * ledger keeps the money; the next run gets the loop's own memory (CarriedTask). Safe to import
 * from workflow code.
 */
import { allHandlersFinished, condition, continueAsNew, log, workflowInfo } from '@temporalio/workflow';
import type { LeaseRecord } from '../../governance/step-lease';
import type { CarriedPhase, TaskInput, TaskStatus } from '../messages';
import type { TaskState } from './state';

/** History length at which a task continues as new when its config does not say (older histories' timing). */
const CONTINUE_AS_NEW_EVENTS = 4000;

export interface Continuation {
  /** The history is long enough to hand over (never for tasks from before continue-as-new). */
  longHistory: () => boolean;
  /** Hands over to the next run when the history is long and nothing needs this one; else returns. */
  continueIfLong: (phase: CarriedPhase, stillSafe?: () => boolean) => Promise<void>;
}

/** `mayContinue`: the task's `continue-as-new` patch; `leased`: the step leases' part of what is carried. */
export function continuation(t: TaskState, mayContinue: boolean, leased: () => { leased?: LeaseRecord[] }): Continuation {
  const longHistory = () => {
    if (!mayContinue) return false;
    const info = workflowInfo();
    return info.continueAsNewSuggested || info.historyLength >= (t.timing.continueAsNewEvents ?? CONTINUE_AS_NEW_EVENTS);
  };
  const mustAct = () => t.cancelled !== null || t.finished || t.preemptReq !== null || t.fatal !== null || t.held();
  async function continueIfLong(phase: CarriedPhase, stillSafe: () => boolean = () => true): Promise<void> {
    if (!longHistory() || mustAct()) return;
    await t.gate;
    await condition(allHandlersFinished);
    if (mustAct() || !stillSafe()) return;
    log.info('continuing as new', { taskId: t.taskId, phase, run: t.runs + 1, historyLength: workflowInfo().historyLength });
    await continueAsNew<(input: TaskInput) => Promise<TaskStatus>>({ ...t.input, carried: t.carry(phase, leased()) });
  }
  return { longHistory, continueIfLong };
}
