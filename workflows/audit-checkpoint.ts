import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';

/** One checkpoint reads the rows since the last one and appends a line: retried until the ledger answers. */
const audit = proxyActivities<Activities>({
  startToCloseTimeout: '5 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', nonRetryableErrorTypes: ['AuditCheckpointRefused'] },
});

/**
 * Started by the `govloop-audit-checkpoint` Temporal Schedule (runtime/schedules.ts): appends a
 * signed checkpoint of the audit chain's head to the checkpoint file outside the database
 * (decision 0019). Idempotent: a run when no row was appended writes nothing.
 */
export async function auditCheckpoint(): Promise<Awaited<ReturnType<Activities['checkpointAudit']>>> {
  return audit.checkpointAudit();
}
