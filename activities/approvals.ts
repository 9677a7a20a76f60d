import { log } from '@temporalio/activity';
import { type Principal, actorName } from '../governance/authz';
import { own } from '../governance/own';
import type { Caller } from '../identity/authenticate';
import { type DecideResult, decideApproval, escalateApproval, getApproval } from '../ledger/approvals';
import { auditRefusal } from '../ledger/authz';
import type { ActivityContext } from './context';
import { notify } from './notify';

/** Approvals of risky tool calls (decision by a person or the TTL, escalation to the next tier). */
export function createApprovalActivities({ db, config, clock, whoIs }: ActivityContext) {
  return {
    /** An approver's (or the TTL's) decision on a tool call, recorded exactly once in the ledger. */
    async decideApproval(input: {
      approvalId: string;
      tool: string;
      decision: 'approve' | 'reject' | 'expire';
      by?: string;
      caller?: Caller;
      reason: string;
      force?: boolean;
    }): Promise<DecideResult> {
      const entry = own(config.tools.tools, input.tool);
      // A person's decision names its decider by credential; only govloop's own expiry passes `by`.
      let principal: Principal | undefined;
      if (input.decision !== 'expire' || input.caller) {
        const who = await whoIs(db, input.caller ?? (input.by !== undefined ? { as: input.by } : {}));
        if (!who.ok) {
          const row = await getApproval(db, input.approvalId);
          await auditRefusal(
            db,
            null,
            input.decision,
            who,
            { approvalId: input.approvalId, claimed: input.caller?.as ?? input.by ?? null },
            row?.taskId ?? null,
          );
          return {
            recorded: false,
            approvalId: input.approvalId,
            taskId: row?.taskId ?? null,
            state: row?.state ?? null,
            code: who.code,
            message: who.message,
          };
        }
        principal = who.principal;
      }
      const { caller: _caller, ...rest } = input;
      const r = await decideApproval(db, {
        ...rest,
        by: principal ? actorName(principal) : (input.by ?? 'govloop'),
        ...(principal ? { principal } : {}),
        tiers: entry ? entry.approvers.map((t) => t.roles) : [],
        now: clock(),
      });
      log.info('approval decision', {
        approvalId: input.approvalId,
        decision: input.decision,
        by: r.recorded ? r.by : principal ? actorName(principal) : input.by,
        recorded: r.recorded,
        ...(r.recorded ? {} : { code: r.code }),
      });
      return r;
    },

    /** No answer in time: the request moves to the next approver tier, who is notified. */
    async escalateApproval(input: { approvalId: string; tool: string; fromTier: number }): Promise<{ escalated: boolean; tier: number; state: string }> {
      const entry = own(config.tools.tools, input.tool);
      const roles = entry?.approvers[input.fromTier + 1]?.roles ?? [];
      const { escalated, row } = await escalateApproval(db, { approvalId: input.approvalId, fromTier: input.fromTier, roles, now: clock() });
      if (escalated && row) {
        await notify(config, {
          event: 'approval.escalated',
          approvalId: row.approvalId,
          taskId: row.taskId,
          tenant: row.tenant,
          tool: row.tool,
          tier: row.tier,
          notifyRoles: roles,
          expiresAt: row.expiresAt.toISOString(),
          runbook: 'runbooks/escalated.md',
        });
      }
      return { escalated, tier: row?.tier ?? input.fromTier, state: row?.state ?? 'pending' };
    },
  };
}
