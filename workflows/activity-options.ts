import type { ActivityOptions } from '@temporalio/workflow';

/**
 * Ledger and policy calls: quick, retried until the ledger answers (it is the source of truth).
 * Shared by every workflow that reads or writes the ledger, as a local or a normal activity.
 */
export const LEDGER_ACTIVITY: ActivityOptions = {
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '200 milliseconds', backoffCoefficient: 2, maximumInterval: '10 seconds' },
};
