/**
 * Tool calls held for a human (agent tasks): the approve, reject and outcome updates, the hold
 * that escalates through the approver tiers and expires at the TTL, and the close of a request
 * nobody decided when the task ends. The ledger is the judge; the task only follows it. Safe to
 * import from workflow code.
 */
import { ApplicationFailure, condition, setHandler, upsertMemo } from '@temporalio/workflow';
import type { Reason } from '../../governance/reasons';
import {
  type ApprovalAnswer,
  type ApprovalDecision,
  FINAL_STATES,
  GovState,
  type HeldApproval,
  approvalOutcomeUpdate,
  approveUpdate,
  rejectUpdate,
} from '../messages';
import { ApprovalDecisionSchema, ApprovalOutcomeRequestSchema } from '../schemas';
import { answer, applyGate } from './agent-steps';
import { type Ledger, gateStep } from './calls';
import { TaskErrors, callerOf, parseOrRefuse } from './errors';
import { type TaskState, approvalView } from './state';

/** Applies a ledger decision to the held approval (the ledger is the judge; this only follows it). */
export const follow = (a: HeldApproval, r: { recorded: boolean; state: string | null; by?: string }) => {
  if (a.state !== 'pending') return;
  if (r.state === 'approved' || r.state === 'rejected' || r.state === 'expired') {
    a.state = r.state;
    a.decidedBy = r.recorded ? (r.by ?? null) : a.decidedBy;
    upsertMemo({ approval: approvalView(a) });
  }
};

/** The approve, reject and approval-outcome updates, in that order. */
export function installApprovals(t: TaskState, ledger: Ledger): void {
  const { taskId, approvals } = t;
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
      await condition(() => a.outcome !== null || FINAL_STATES.includes(t.state) || t.state === GovState.NeedsOperator);
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
}

/**
 * Holds a tool call until a human decides it: escalates to the next approver tier when nobody
 * answers in time, expires it at its TTL (through the ledger, so a racing approval and the
 * expiry are decided exactly once), then gates the approved step. Returns the reason the task
 * must stop (rejected or expired), or null to carry on.
 */
export async function holdForApproval(t: TaskState, ledger: Ledger, a: HeldApproval, deadlineAt: number | null): Promise<Reason | null> {
  while (a.state === 'pending') {
    const nextEscalation = a.tier + 1 < a.tiers ? a.requestedAtMs + (a.tier + 1) * a.escalateAfterMs : Infinity;
    const wakeAt = Math.min(nextEscalation, a.expiresAtMs, deadlineAt ?? Infinity);
    const stop = await condition(() => a.state !== 'pending' || t.finished || t.cancelled !== null, Math.max(1, wakeAt - Date.now()));
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
        t.setState(GovState.Escalated);
        upsertMemo({ approval: approvalView(a) });
      }
    }
  }
  if (a.state === 'approved') {
    await t.serial(async () => {
      const { taskId, intent, plan, totals, requester } = t;
      const out = await gateStep({ taskId, seq: a.seq, intent, plan: plan!, totals, step: a.step, requester, approved: a.approvalId });
      if (t.awaiting()) t.setState(GovState.Running);
      a.outcome = applyGate(t, out, a.seq, a.step, a.approvalId);
    });
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
  a.outcome = answer(t, 'deny', r, { approvalId: a.approvalId });
  return r;
}

/** A request nobody decided closes with the task. */
export async function closeUndecided(t: TaskState, ledger: Ledger, final: GovState): Promise<void> {
  if (t.approval !== null && t.approval.state === 'pending') {
    const a: HeldApproval = t.approval;
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
        t,
        'deny',
        { code: 'NOT_RUNNING', message: `task ended ${final}`, limit: null, requested: null, policy: 'task#state' },
        { approvalId: a.approvalId },
      );
  }
}
