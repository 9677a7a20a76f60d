import { Context, log } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type { GovConfig } from '../config/load';
import type { ClusterBackend, GpuRequest } from '../cluster/backend';
import type { Intent } from '../governance/intent';
import type { Principal } from '../governance/authz';
import { type Authenticator, type Caller, createAuthenticator } from '../identity/authenticate';
import { IdentityError } from '../identity/errors';
import type { SigningKey } from '../identity/signing';
import type { Db, Queryable } from '../ledger/db';
import { tasksToWake } from '../ledger/quota';
import type { Timing } from '../config/task-queues';

export interface ActivityDeps {
  db: Db;
  config: GovConfig;
  /** Derives principals from credentials (default: from config.auth). */
  auth?: Authenticator;
  /** Signs approval tokens (absent: approved steps carry none, and tool executors that require one refuse). */
  signingKey?: SigningKey;
  backend: ClusterBackend;
  /** The task queue the cluster's dispatch activities are served on. */
  dispatchQueue: string;
  clock?: () => Date;
  /** The data dir the audit checkpoint's paths are resolved against (the worker passes runtime/environment.ts dataDir). */
  dataDir?: () => string;
  /**
   * Signals the controllers of budgets an attribution's usage pushed past a threshold (the worker
   * passes runtime/schedules.ts nudgeCrossed; absent, controllers catch up at their next poll).
   * Injected so activities do not import the client layer (issue 14).
   */
  nudgeBudgets?: (client: Client, a: Pick<Intent['attribution'], 'tenant' | 'team' | 'project'>, now: Date) => Promise<unknown>;
  /**
   * Signals the given queued tasks that GPUs were released (the worker passes runtime/schedules.ts
   * wakeQueued; absent, queued tasks find out at their next recheck). Injected like nudgeBudgets.
   */
  wakeQueued?: (client: Client, taskIds: readonly string[], releasedBy: string) => Promise<unknown>;
}

/** The principal of a call, or why there is none (the identity error's code). */
export type WhoIs = { ok: true; principal: Principal } | { ok: false; code: string; message: string };

/**
 * What every per-mechanism activity factory (activities/*.ts) is built from: the worker's
 * dependencies with their defaults filled in, and the few helpers more than one mechanism uses.
 */
export interface ActivityContext {
  deps: ActivityDeps;
  db: Db;
  config: GovConfig;
  backend: ClusterBackend;
  clock: () => Date;
  auth: Authenticator;
  /** The workflow's timing, answered by admission (config read at each worker start). */
  timing: Timing;
  /** Usage or a reservation may have pushed a budget past a threshold: its controller looks now (best effort). */
  nudgeBudgets: (a: Pick<Intent['attribution'], 'tenant' | 'team' | 'project'>) => Promise<void>;
  /** A task gave back its GPUs (it ended, or was suspended): the queued tasks they can go to ask again now (best effort). */
  wakeQueued: (releasedTaskId: string) => Promise<void>;
  /** Wakes the named queued tasks (best effort): a fair-share wait wakes the request that goes first. */
  wakeTasks: (taskIds: readonly string[], by: string) => Promise<void>;
  whoIs: (q: Queryable, caller: Caller) => Promise<WhoIs>;
}

export function activityContext(deps: ActivityDeps): ActivityContext {
  const { db, config, backend, dispatchQueue, clock = () => new Date(), auth = createAuthenticator(deps.config.auth) } = deps;
  const timing: Timing = {
    pollMillis: config.simulation.pollMillis,
    queueRetryMillis: config.simulation.queueRetryMillis,
    queueRecheckMillis: config.simulation.queueRecheckMillis,
    dispatchQueue,
    compensation: config.policies.compensation,
    preemptGraceMillis: config.policies.preemption.graceMillis,
    retries: config.policies.retries,
    continueAsNewEvents: config.policies.history.continueAsNewEvents,
  };
  const nudgeBudgets = async (a: Pick<Intent['attribution'], 'tenant' | 'team' | 'project'>) => {
    try {
      await deps.nudgeBudgets?.(Context.current().client, a, clock());
    } catch (err) {
      log.warn('budget controller nudge failed (its next poll catches up)', { error: String(err) });
    }
  };
  const wakeTasks = async (taskIds: readonly string[], by: string) => {
    if (!deps.wakeQueued || taskIds.length === 0) return;
    try {
      await deps.wakeQueued(Context.current().client, taskIds, by);
    } catch (err) {
      log.warn('waking queued tasks failed (their next recheck catches up)', { by, taskIds, error: String(err) });
    }
  };
  const wakeQueued = async (releasedTaskId: string) => {
    if (!deps.wakeQueued) return;
    try {
      await wakeTasks(await tasksToWake(db, config.policies, releasedTaskId), releasedTaskId);
    } catch (err) {
      log.warn('finding queued tasks to wake failed (their next recheck catches up)', { releasedTaskId, error: String(err) });
    }
  };
  async function whoIs(q: Queryable, caller: Caller): Promise<WhoIs> {
    try {
      return { ok: true, principal: await auth.authenticate(q, caller) };
    } catch (err) {
      if (err instanceof IdentityError) return { ok: false, code: err.code, message: err.message };
      throw err;
    }
  }
  return { deps, db, config, backend, clock, auth, timing, nudgeBudgets, wakeQueued, wakeTasks, whoIs };
}

/** The GPU part of an intent (translate() copies it into the plan unchanged), as the cluster places it. */
export function gpuRequest(intent: Intent): GpuRequest {
  const r = intent.resources;
  return {
    gpus: r.gpus,
    gpuType: r.gpuType ?? '',
    sharing: r.sharing,
    ...(r.gpuMilli !== undefined ? { gpuMilli: r.gpuMilli } : {}),
    ...(r.topology ? { topology: r.topology } : {}),
  };
}

/** The run id of the workflow execution calling the current activity. */
export const callingRunId = (): string => Context.current().info.workflowExecution?.runId ?? '';
