/**
 * The activity proxies a governed task calls through: the ledger (bounded retries), the step gate
 * (a local activity), the cluster's own task queue. Safe to import from workflow code.
 */
import { proxyActivities, proxyLocalActivities } from '@temporalio/workflow';
import { hasPatch } from '../patches';
import type { Activities } from '../../activities';
import { TASK_CLUSTER_ACTIVITY, TASK_LEDGER_ACTIVITY } from '../activity-options';

/** The ledger calls' options with the default bound, or the config's bound once admission told it (timing.retries). */
const ledgerOptions = (maxAttempts?: number) =>
  maxAttempts === undefined ? TASK_LEDGER_ACTIVITY : { ...TASK_LEDGER_ACTIVITY, retry: { ...TASK_LEDGER_ACTIVITY.retry, maximumAttempts: maxAttempts } };
/** Ledger calls through the server's activity queue, with their bound. */
export const boundedLedger = (maxAttempts?: number) => proxyActivities<Activities>(ledgerOptions(maxAttempts));
export type Ledger = ReturnType<typeof boundedLedger>;
/**
 * The same ledger calls as local activities (decision 0032): each runs in the worker that holds
 * the task, inside the workflow task that asked for it, instead of a round trip through the
 * server's activity queue and a workflow task of its own. Same timeout and bounded retries (long
 * backoffs become timers). Every ledger activity is idempotent by task id (and step, round or
 * attempt), so the re-run a local activity gets after a worker crash is harmless.
 */
export const boundedLocalLedger = (maxAttempts?: number): Ledger => proxyLocalActivities<Activities>(ledgerOptions(maxAttempts));
/**
 * The step gate on the agent's hot path runs as a local activity: one ledger transaction inside
 * the workflow task that took the update, no round trip through the server's activity queue. It
 * is idempotent by (task, seq), so the re-run a local activity may get after a crash is harmless.
 */
const localLedger = boundedLocalLedger();
/** Histories from before the local step gate replay with the activity they recorded. */
export const gateStep: Activities['gateStep'] = (input) =>
  hasPatch('step-gate-local-activity') ? localLedger.gateStep(input) : boundedLedger().gateStep(input);

/**
 * Cluster calls go to the cluster's own task queue, where its dispatcher runs: a bit more time,
 * a longer bound; past it the task asks an operator (a cluster outage must not lose the task).
 */
export const clusterActivities = (taskQueue: string, maxAttempts?: number) =>
  proxyActivities<Activities>({
    ...TASK_CLUSTER_ACTIVITY,
    taskQueue,
    ...(maxAttempts === undefined ? {} : { retry: { ...TASK_CLUSTER_ACTIVITY.retry, maximumAttempts: maxAttempts } }),
  });
export type Cluster = ReturnType<typeof clusterActivities>;
