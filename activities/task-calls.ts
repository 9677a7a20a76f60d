import { actorName } from '../governance/authz';
import type { Reason } from '../governance/reasons';
import type { Caller } from '../identity/authenticate';
import { sameIdentity } from '../ledger/approvals';
import { appendAudit } from '../ledger/audit';
import { auditRefusal, checkAccess } from '../ledger/authz';
import { budgetPreemptOrdered, quotaPreemptionOpen } from '../ledger/task-lookups';
import { updateTask } from '../ledger/tasks';
import type { ActivityContext } from './context';
import { notify } from './notify';

/**
 * Calls on a task from outside its own loop (cancel, finish, preempt, resolve): who may make them,
 * an operator's resolution, the page when retries ran out, and a recorded state change.
 */
export function createTaskCallActivities({ db, config, whoIs }: ActivityContext) {
  return {
    /**
     * May this cancel, finish, preempt or resolve act on the task? A person's call by its credential
     * (the task's requester for its own cancel and finish, an operator of the tenant for the rest);
     * govloop's own signals by the ledger row that ordered them (a budget controller's preemption,
     * an open quota preemption naming the preemptor). Accepted and refused calls are both audited.
     */
    async authorizeTaskCall(input: {
      taskId: string;
      tenant: string;
      requester: string | null;
      action: 'cancel' | 'finish' | 'preempt' | 'resolve';
      reason?: string;
      caller?: Caller;
      system?: { kind: 'budget-preempt' } | { kind: 'preemptor'; preemptor: string };
    }): Promise<{ ok: true; by: string } | { ok: false; code: string; message: string }> {
      const { taskId, tenant, action } = input;
      if (input.system) {
        const sys = input.system;
        const found = sys.kind === 'budget-preempt' ? await budgetPreemptOrdered(db, taskId) : await quotaPreemptionOpen(db, taskId, sys.preemptor);
        const by = sys.kind === 'budget-preempt' ? 'budget-controller' : 'govloop';
        if (found) return { ok: true, by };
        const d = {
          code: 'FORBIDDEN',
          message: sys.kind === 'budget-preempt' ? `no budget controller ordered ${taskId} stopped` : `no open preemption of ${taskId} for ${sys.preemptor}`,
        };
        await auditRefusal(db, { subject: by, verified: false }, action, d, { tenant, system: sys.kind }, taskId);
        return { ok: false, ...d };
      }
      const who = await whoIs(db, input.caller ?? {});
      if (!who.ok) {
        await auditRefusal(db, null, action, who, { tenant, claimed: input.caller?.as ?? null }, taskId);
        return { ok: false, code: who.code, message: who.message };
      }
      const by = actorName(who.principal);
      const own = input.requester !== null && sameIdentity(by, input.requester) && (action === 'cancel' || action === 'finish');
      return db.tx(async (c) => {
        const d = await checkAccess(c, who.principal, own ? 'task.own' : 'operate', tenant, { taskId, detail: { attempted: action } });
        if (!d.allowed) return { ok: false as const, code: d.code, message: d.message };
        await appendAudit(c, {
          actor: by,
          taskId,
          action: `task.${action}`,
          decision: 'accepted',
          detail: { via: d.via, ...(input.reason ? { reason: input.reason } : {}) },
        });
        return { ok: true as const, by };
      });
    },

    /** An operator says the side effects a failed compensation left behind are dealt with. */
    async resolveTask(input: { taskId: string; by: string; reason: string; state: string; round?: number }): Promise<void> {
      await db.tx(async (c) => {
        await updateTask(c, input.taskId, { state: input.state });
        const key = input.round === undefined ? `${input.taskId}:resolve` : `${input.taskId}:resolve:escalation:${input.round}`;
        await appendAudit(c, {
          actor: input.by,
          taskId: input.taskId,
          action: 'operator.resolve',
          decision: input.state,
          detail: { reason: input.reason },
          dedupeKey: key,
        });
      });
    },

    /** A call of the task ran out of its bounded retries (decision 0020): page, then record it where the ledger answers. */
    async operatorNeeded(input: { taskId: string; activity: string; error: string; round: number }): Promise<void> {
      await notify(config, {
        event: 'task.needs-operator',
        taskId: input.taskId,
        activity: input.activity,
        error: input.error,
        runbook: 'runbooks/needsoperator.md',
      });
      await db.tx(async (c) => {
        await updateTask(c, input.taskId, { state: 'NeedsOperator' });
        await appendAudit(c, {
          actor: 'govloop',
          taskId: input.taskId,
          action: 'retries.exhausted',
          decision: 'needs-operator',
          detail: { activity: input.activity, error: input.error },
          dedupeKey: `${input.taskId}:escalation:${input.round}`,
        });
      });
    },

    async recordState(input: { taskId: string; state: string; reasons?: Reason[] }): Promise<void> {
      await updateTask(db, input.taskId, { state: input.state, ...(input.reasons ? { reasons: input.reasons } : {}) });
    },
  };
}
