import type { Timing } from '../config/task-queues';
import { createAdmissionActivities } from './admission';
import { createAgentStepActivities, stepCallerCheck } from './agent-steps';
import { createApprovalActivities } from './approvals';
import { createAuditActivities } from './audit';
import { createBudgetControlActivities } from './budget-control';
import { createClusterActivities } from './cluster';
import { createCompensationActivities } from './compensation';
import { type ActivityDeps, activityContext } from './context';
import { createLeaseActivities } from './leases';
import { createLeasedStepActivities } from './leased-steps';
import { createMeteringActivities } from './metering';
import { notify } from './notify';
import { createProgramActivities } from './program';
import { createReconcileActivities } from './reconcile';
import { createReservationActivities } from './reservation';
import { createTaskCallActivities } from './task-calls';

export type { Timing, ActivityDeps };
export type { GateOutcome } from './agent-steps';
export type { Observation } from './cluster';
export { notify };

/**
 * Side effects of the governance loop, one factory per mechanism (activities/*.ts), each thin
 * over governance/ (decisions), ledger/ and cluster/. Every write is idempotent by task id plus a
 * step or sequence number (design principle 2). The names are the activity types recorded in
 * workflow histories: they, their inputs and their answers stay as they are.
 */
export function createActivities(deps: ActivityDeps) {
  const ctx = activityContext(deps);
  const { db, config, backend, clock, auth } = ctx;
  return {
    ...createAuditActivities({ db, config, ...(deps.dataDir ? { dataDir: deps.dataDir } : {}) }),
    ...createReconcileActivities({ db, config, cluster: backend.cluster, dispatchQueue: deps.dispatchQueue, clock }),
    ...createProgramActivities({ db, config, auth, notify, clock }),
    ...createAdmissionActivities(ctx),
    ...createReservationActivities(ctx),
    ...createClusterActivities(ctx),
    ...createAgentStepActivities(ctx),
    ...createApprovalActivities(ctx),
    ...createCompensationActivities(ctx),
    ...createTaskCallActivities(ctx),
    ...createMeteringActivities(ctx),
    ...createBudgetControlActivities(ctx),
    ...createLeaseActivities(ctx),
    ...createLeasedStepActivities({ db, config, clock, stepCallerRefused: stepCallerCheck(ctx) }),
  };
}

export type Activities = ReturnType<typeof createActivities>;
