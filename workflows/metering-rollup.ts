import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';

/** A rollup recomputes whole buckets in one transaction: retried until the ledger answers. */
const rollups = proxyActivities<Activities>({
  startToCloseTimeout: '5 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute' },
});

/**
 * Started by the `govloop-metering-rollup` Temporal Schedule (runtime/schedules.ts): brings the
 * hourly and daily usage rollups up to date with the ledger's usage events. The work is one
 * idempotent activity, so a run that overlaps or repeats another changes nothing.
 */
export async function meteringRollup(): Promise<Awaited<ReturnType<Activities['rollupUsage']>>> {
  return rollups.rollupUsage();
}
