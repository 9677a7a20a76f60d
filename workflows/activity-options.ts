import type { ActivityOptions } from '@temporalio/workflow';

/**
 * Ledger and policy calls: quick, retried while the ledger is away (a PostgreSQL restart takes
 * seconds). Shared by the workflows that run for ever and must not fail on an outage (budget
 * controllers, schedules): there every round is retried until the ledger answers.
 */
export const LEDGER_ACTIVITY: ActivityOptions = {
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '200 milliseconds', backoffCoefficient: 2, maximumInterval: '10 seconds' },
};

/**
 * A governed task's ledger calls: the same, but bounded: 40 attempts, about six minutes with the
 * backoff. Past that the task asks an operator (NeedsOperator) instead of retrying for ever, and
 * goes on once resolved (decision 0020). A data error (DataError) is never retried at all.
 */
export const TASK_LEDGER_ACTIVITY: ActivityOptions = {
  startToCloseTimeout: '30 seconds',
  retry: {
    initialInterval: '200 milliseconds',
    backoffCoefficient: 2,
    maximumInterval: '10 seconds',
    maximumAttempts: 40,
    nonRetryableErrorTypes: ['DataError'],
  },
};

/** A governed task's cluster calls: a bit more time per try and a longer bound (about 20 minutes) before an operator is asked. */
export const TASK_CLUSTER_ACTIVITY: ActivityOptions = {
  startToCloseTimeout: '60 seconds',
  retry: {
    initialInterval: '500 milliseconds',
    backoffCoefficient: 2,
    maximumInterval: '30 seconds',
    maximumAttempts: 45,
    nonRetryableErrorTypes: ['DataError'],
  },
};
