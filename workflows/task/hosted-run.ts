/**
 * The hosted run (agent steps, hosted inference): the task stays Running, taking steps through its
 * update handlers, until it is finished, cancelled, capped or out of time, holding tool calls for
 * their approvers on the way. Safe to import from workflow code.
 */
import { condition } from '@temporalio/workflow';
import type { Reason } from '../../governance/reasons';
import { GovState } from '../messages';
import { holdForApproval } from './approvals';
import type { Ledger } from './calls';
import type { Continuation } from './continue';
import type { Finish, Finished, TaskState } from './state';

/** Hosted work (agent steps, hosted inference): runs until finished, cancelled, a cap, or its deadline. */
export async function runHosted(t: TaskState, deps: { ledger: Ledger; continuation: Continuation; finish: Finish }): Promise<Finished> {
  const { continuation, finish } = deps;
  const plan = t.plan!;
  t.setState(GovState.Running);
  const deadlineAt = plan.caps.deadline === null ? null : Date.parse(plan.caps.deadline);
  const ended = () => t.finished || t.cancelled !== null || t.fatal !== null || !(t.state === GovState.Running || t.awaiting());
  let inTime = true;
  let approvalEnd: Reason | null = null;
  for (;;) {
    const waitMs = deadlineAt === null ? undefined : Math.max(0, deadlineAt - Date.now());
    const wake = () => ended() || t.held() || continuation.longHistory();
    inTime = waitMs === undefined ? (await condition(wake), true) : await condition(wake, waitMs);
    if (!inTime || ended()) break;
    if (!t.held()) {
      await continuation.continueIfLong('hosted', () => !ended());
      continue;
    }
    approvalEnd = await holdForApproval(t, deps.ledger, t.approval!, deadlineAt);
    if (approvalEnd !== null) break;
    if (deadlineAt !== null && Date.now() >= deadlineAt) {
      inTime = false;
      break;
    }
  }
  await t.gate;
  if (t.cancelled) return finish(GovState.Cancelled);
  if (t.fatal !== null) {
    t.reasons = [t.fatal];
    return finish(GovState.Failed);
  }
  if ((t.state as GovState) === GovState.CapExceeded) return finish(GovState.CapExceeded);
  if (approvalEnd !== null) {
    t.reasons = [approvalEnd];
    return finish(GovState.Rejected);
  }
  if (!inTime) {
    t.reasons = [
      { code: 'CAP_DEADLINE', message: `deadline ${plan.caps.deadline} passed`, limit: plan.caps.deadline, requested: null, policy: 'task#caps.deadline' },
    ];
    return finish(GovState.CapExceeded);
  }
  return finish(GovState.Succeeded);
}
