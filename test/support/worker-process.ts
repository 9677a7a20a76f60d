import { type ChildProcess, spawn } from 'node:child_process';
import type { Queryable } from '../../ledger/db';
import { FINAL_STATES } from '../../workflows/messages';
import { govloopBin, repoRoot } from './cli';

/**
 * `govloop worker` as its own process, the way an operator runs it: the tests that kill it with
 * SIGKILL need a process to kill. Its stderr is read all the time (an unread pipe fills, and a
 * Node process writing to a full pipe blocks), and the tail is kept for failure messages.
 */
export interface WorkerProcess {
  readonly child: ChildProcess;
  /** Resolves once the worker says it is running (its workflows bundled, its queues polled next). */
  readonly ready: Promise<void>;
  /** Resolves with the exit code or signal once the process is gone. */
  readonly exited: Promise<string>;
  /** The last few kB the worker wrote to stderr. */
  tail(): string;
  /** SIGKILL, and wait until the process is gone. */
  kill(): Promise<string>;
  /** SIGTERM (graceful), and wait until the process is gone. */
  stop(): Promise<string>;
}

export interface WorkerProcessOptions {
  taskQueue: string;
  /** Name of the simulated cluster (its jobs are rows of sim_jobs under this name). */
  cluster: string;
  temporalAddress: string;
  databaseUrl: string;
  /** Simulated seconds per real second (GOVLOOP_SIM_SPEEDUP). */
  speedup: number;
  env?: Record<string, string>;
}

const TAIL_CHARS = 8000;

export function startWorkerProcess(o: WorkerProcessOptions): WorkerProcess {
  const child = spawn(process.execPath, [govloopBin, 'worker', '--task-queue', o.taskQueue, '--cluster', o.cluster, '--no-controllers'], {
    cwd: repoRoot,
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: o.temporalAddress,
      DATABASE_URL: o.databaseUrl,
      GOVLOOP_SIM_SPEEDUP: String(o.speedup),
      GOVLOOP_LOG_LEVEL: 'warn',
      ...o.env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? `exit ${code}`)));
  const ready = new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + String(d)).slice(-TAIL_CHARS);
      if (stderr.includes('worker running:')) resolve();
    });
    void exited.then((how) => reject(new Error(`govloop worker ended (${how}) before it was running: ${stderr}`)));
  });
  // A worker killed before it was ready is not an error of its own: whoever awaits `ready` sees it.
  ready.catch(() => undefined);
  const end = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  return { child, ready, exited, tail: () => stderr, kill: () => end('SIGKILL'), stop: () => end('SIGTERM') };
}

/** A task as the ledger has it, with its simulated job(s) and what was metered for it. */
export interface LedgerTask {
  taskId: string;
  state: string;
  final: boolean;
  /** Simulated jobs of the task on the cluster (more than one would be a duplicated Job). */
  jobs: number;
  jobPhase: string | null;
  /** GPU-seconds metered into usage_events. */
  gpuSeconds: number;
}

/**
 * The tasks' rows in the ledger, the source of truth for what a task has done: its state, its
 * jobs on the simulated cluster and its metered GPU-seconds. Unlike the status query, reading it
 * needs no worker, so it answers the same on a loaded machine and while no worker runs.
 */
export async function ledgerTasks(q: Queryable, cluster: string, taskIds: readonly string[]): Promise<LedgerTask[]> {
  const { rows } = await q.query<{ task_id: string; state: string; jobs: number; job_phase: string | null; gpu_seconds: number }>(
    `SELECT t.task_id, t.state,
            (SELECT count(*)::int FROM sim_jobs j WHERE j.cluster = $2 AND j.task_id = t.task_id) AS jobs,
            (SELECT min(j.phase) FROM sim_jobs j WHERE j.cluster = $2 AND j.task_id = t.task_id) AS job_phase,
            (SELECT COALESCE(sum(u.quantity), 0)::float8 FROM usage_events u WHERE u.task_id = t.task_id AND u.meter = 'gpu_seconds') AS gpu_seconds
       FROM tasks t WHERE t.task_id = ANY($1::text[]) ORDER BY t.task_id`,
    [taskIds, cluster],
  );
  return rows.map((r) => ({
    taskId: r.task_id,
    state: r.state,
    final: (FINAL_STATES as string[]).includes(r.state),
    jobs: r.jobs,
    jobPhase: r.job_phase,
    gpuSeconds: Number(r.gpu_seconds),
  }));
}

export const describeTasks = (ts: LedgerTask[]): string => ts.map((t) => `${t.taskId} ${t.state} job=${t.jobPhase ?? '-'} ${t.gpuSeconds} GPU-s`).join('; ');

/**
 * Polls `fn` until it returns a value. The bound is generous on purpose: it only turns a hang into
 * a failure that says what was last seen, and a loaded machine must not reach it.
 */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number, last?: () => string): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last()}` : ''}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
