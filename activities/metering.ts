import { type RollupRun, rollUp } from '../ledger/rollups';
import type { ActivityContext } from './context';

/** The meteringRollup schedule's activity (workflows/metering-rollup.ts). */
export function createMeteringActivities({ db, config }: ActivityContext) {
  return {
    /** The meteringRollup schedule's one step: hourly and daily rollups up to date (idempotent). */
    async rollupUsage(): Promise<RollupRun[]> {
      return rollUp(db, { lateArrivalSeconds: config.policies.metering.lateArrivalSeconds });
    },
  };
}
