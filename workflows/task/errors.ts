/**
 * How a governed task refuses a message and reads a failed call: its error types, the payload
 * check that refuses before history, and the failure classifiers. Safe to import from workflow code.
 */
import { ActivityFailure, ApplicationFailure, TimeoutFailure } from '@temporalio/workflow';
import type { z } from 'zod';
import { issuesList, issuesText } from '../schemas';

export const TaskErrors = {
  InvalidStep: 'InvalidStep',
  NotAcceptingSteps: 'NotAcceptingSteps',
  InvalidDecision: 'InvalidDecision',
  UnknownApproval: 'UnknownApproval',
  NotNeedingOperator: 'NotNeedingOperator',
  InvalidRequest: 'InvalidRequest',
  NotPreemptible: 'NotPreemptible',
  TaskEnded: 'TaskEnded',
} as const;

/** Parses an update's payload or refuses it before it reaches history, naming every bad field. */
export function parseOrRefuse<T>(schema: z.ZodType<T>, payload: unknown, errorType: string): T {
  const parsed = schema.safeParse(payload);
  if (!parsed.success) throw ApplicationFailure.nonRetryable(issuesText(parsed.error), errorType, issuesList(parsed.error));
  return parsed.data;
}
/** The caller part of a message, for the activity that authenticates it. */
export const callerOf = (m: { credential?: string | undefined; as?: string | undefined }) => ({
  ...(m.credential ? { credential: m.credential } : {}),
  ...(m.as !== undefined ? { as: m.as } : {}),
});

/** The error types an activity call is never retried on (TASK_LEDGER_ACTIVITY, TASK_CLUSTER_ACTIVITY). */
const NON_RETRYABLE_TYPES = ['DataError'];
/**
 * A call whose bounded retries ran out (as opposed to one refused for good: a data error, a
 * non-retryable failure). A queued activity's last failure comes wrapped in an ActivityFailure
 * that names its retry state. A local activity's comes bare (the activity's own ApplicationFailure,
 * or a TimeoutFailure), without a retry state: one that could have been retried ran out of attempts.
 */
export const retriesExhausted = (err: unknown): err is Error =>
  err instanceof ActivityFailure
    ? err.retryState === 'MAXIMUM_ATTEMPTS_REACHED' || err.retryState === 'TIMEOUT'
    : err instanceof TimeoutFailure || (err instanceof ApplicationFailure && !err.nonRetryable && !NON_RETRYABLE_TYPES.includes(err.type ?? ''));
/** A call refused because its input is wrong (activities/errors.ts): no retry can fix it. Queued (wrapped) or local (bare). */
export const dataError = (err: unknown): string | null => {
  const f = err instanceof ActivityFailure ? err.cause : err;
  return f instanceof ApplicationFailure && f.type === 'DataError' ? f.message : null;
};
export const causeText = (err: unknown): string =>
  err instanceof ActivityFailure && err.cause ? err.cause.message : err instanceof Error ? err.message : String(err);
