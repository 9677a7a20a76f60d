import { fileURLToPath } from 'node:url';
import { NativeConnection, Worker, type WorkflowBundleOption, type WorkflowBundleWithSourceMap, bundleWorkflowCode } from '@temporalio/worker';
import { createActivities } from '../activities';
import { dataErrorInterceptors } from '../activities/errors';
import type { GovConfig } from '../config/load';
import type { ClusterBackend } from '../cluster/backend';
import type { Db } from '../ledger/db';
import { dataDir } from '../runtime/environment';
import { nudgeCrossed, wakeQueued } from '../runtime/schedules';
import { TASK_QUEUE_CONTROL, clusterTaskQueue } from '../workflows/messages';

export const workflowsPath = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));

/**
 * Modules evaluated once per worker thread and shared by every workflow in its reusable V8 context,
 * instead of once per workflow (decision 0032). Only libraries without per-workflow state: zod
 * (its classes and helpers; our schemas built from it are still made per workflow). As listed,
 * this preloads nothing: webpack drops a bare require of a package that declares no side effects
 * (decision 0032, update of session 24: a fix was measured and held back).
 */
export const PRELOADED_WORKFLOW_MODULES = ['zod'];

/** Bundles the workflow code once; workers reuse the bundle (tests: once per file). */
export async function bundleWorkflows(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({ workflowsPath, logger: quietBundlerLogger, preloadModules: PRELOADED_WORKFLOW_MODULES });
}

/** The bundler's logger: warnings and errors only. */
export const quietBundlerLogger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: (m: string, meta?: unknown) => console.warn(m, meta ?? ''),
  error: (m: string, meta?: unknown) => console.error(m, meta ?? ''),
};

export interface GovWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  db: Db;
  config: GovConfig;
  backend: ClusterBackend;
  /** Control queue name; tests use their own so files can run side by side. */
  controlQueue?: string;
  dispatchQueue?: string;
  /** Bundled code (tests bundle once per file) or a pre-built bundle's path; absent: bundled now. */
  bundle?: WorkflowBundleOption;
  /** The control worker's workflow threads and cache (absent: the SDK's defaults, 1 thread). */
  tuning?: WorkerTuning;
}

/** How the control worker runs its workflows: threads (each with its own reused V8 context) and how many it keeps cached. */
export interface WorkerTuning {
  workflowThreads?: number | undefined;
  maxCachedWorkflows?: number | undefined;
}

/**
 * The two workers of one govloop deployment: control (workflows + ledger/policy activities) and
 * dispatch for one cluster (the cluster's activities, next to its API server).
 */
export async function createWorkers(opts: GovWorkerOptions): Promise<Worker[]> {
  const controlQueue = opts.controlQueue ?? TASK_QUEUE_CONTROL;
  const dispatchQueue = opts.dispatchQueue ?? clusterTaskQueue(opts.backend.cluster);
  const activities = createActivities({
    db: opts.db,
    config: opts.config,
    backend: opts.backend,
    dispatchQueue,
    dataDir: () => dataDir(),
    nudgeBudgets: (client, a, now) => nudgeCrossed(client, opts.db, a, opts.config.policies.ladder, now),
    wakeQueued,
  });
  const bundle = opts.bundle ?? (await bundleWorkflows());
  const control = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: controlQueue,
    workflowBundle: bundle,
    activities,
    interceptors: { activity: [dataErrorInterceptors] },
    ...(opts.tuning?.workflowThreads !== undefined ? { workflowThreadPoolSize: opts.tuning.workflowThreads } : {}),
    ...(opts.tuning?.maxCachedWorkflows !== undefined ? { maxCachedWorkflows: opts.tuning.maxCachedWorkflows } : {}),
  });
  const dispatch = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: dispatchQueue,
    activities: {
      dispatchJob: activities.dispatchJob,
      observeJob: activities.observeJob,
      deleteJob: activities.deleteJob,
      checkpointJob: activities.checkpointJob,
      suspendJob: activities.suspendJob,
    },
    interceptors: { activity: [dataErrorInterceptors] },
  });
  return [control, dispatch];
}

/** Runs the workers until `signal` aborts, then shuts them down gracefully. */
export async function runWorkers(workers: Worker[], signal?: AbortSignal): Promise<void> {
  if (signal) signal.addEventListener('abort', () => workers.forEach((w) => w.getState() === 'RUNNING' && w.shutdown()), { once: true });
  await Promise.all(workers.map((w) => w.run()));
}
