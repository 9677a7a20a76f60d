import type { ClusterCapacity } from '../cluster/backend';
import { gpuQuotaFor } from '../governance/flat-quota';
import type { Intent } from '../governance/intent';
import { own } from '../governance/own';
import { quotaGpus } from '../governance/plan';
import { type QuotaDecision, admitQuota } from '../governance/quota';
import type { Queryable } from '../ledger/db';
import { quotaState } from '../ledger/quota';
import { taskCreatedAt } from '../ledger/task-lookups';
import { type ActivityContext, gpuRequest } from './context';

/**
 * The quota decision (governance/quota.ts admitQuota) over a ledger snapshot and the cluster's
 * nodes, for a GPU intent whose type the cluster has; null otherwise (admission then rejects or
 * needs none). Admission calls it optimistically; the reservation calls it again under the quota
 * lock (cohorts, and a task back from preemption). `q`: the transaction to read the quota state
 * in. `capacity`: the cluster's capacity, read before that transaction — the backend reads through
 * its own connections, and the embedded ledger has one session: a read on another connection
 * inside the transaction would wait for it forever.
 */
export async function decideQuota(
  { db, config, backend, clock }: ActivityContext,
  taskId: string,
  intent: Intent,
  q: Queryable = db,
  known?: { capacity: ClusterCapacity | undefined },
): Promise<QuotaDecision | null> {
  const { gpuType } = intent.resources;
  const gpus = quotaGpus(intent.resources);
  if (gpus <= 0 || !gpuType || !config.cluster.gpuTypes[gpuType]) return null;
  const a = intent.attribution;
  const capacity = known ? known.capacity : backend.capacity ? await backend.capacity(gpuType, gpuRequest(intent)) : undefined;
  const staleAfterMs = config.policies.preemption.graceMillis + 60_000;
  const state = await quotaState(
    q,
    config.policies,
    { taskId, tenant: a.tenant, team: a.team, gpuType },
    gpuQuotaFor(config.policies, a, gpuType),
    capacity,
    staleAfterMs,
  );
  const created = await taskCreatedAt(q, taskId);
  return admitQuota(state, {
    taskId,
    tenant: a.tenant,
    team: a.team,
    gpus,
    priority: own(config.policies.priorities, intent.priority) ?? 0,
    queuedAt: (created ?? clock()).toISOString(),
  });
}
