/** What a Job's object says about it (phase, run time, progress, checkpoint), and the run deadline it is given (cluster/kubernetes/manifests.ts). */
import type { V1Job } from '@kubernetes/client-node';
import type { JobPhase, RunLimit } from '../backend';
import { Annotation, REASON_DEADLINE_EXCEEDED } from './annotations';

/**
 * `spec.activeDeadlineSeconds` for a run limit: whole seconds, rounded down, so the Job controller
 * stops the Job no later than the limit. 0: under 1 s is left and the Job must not run at all
 * (Kubernetes needs a positive deadline). undefined: no limit (none given, or +Infinity: no cap
 * bounds the run). Throws on NaN or -Infinity: a caller's bug, not a limit.
 */
export function activeDeadlineFor(limit: RunLimit | undefined): number | undefined {
  if (limit === undefined || limit.maxRunSeconds === Number.POSITIVE_INFINITY) return undefined;
  const s = limit.maxRunSeconds;
  if (typeof s !== 'number' || Number.isNaN(s) || s === Number.NEGATIVE_INFINITY) {
    throw new Error(`run limit maxRunSeconds must be a number of seconds, got ${String(s)}`);
  }
  return s < 1 ? 0 : Math.min(Math.floor(s), Number.MAX_SAFE_INTEGER);
}

/** What a Job's object says about it, in govloop's terms. */
export interface PhaseReading {
  phase: JobPhase;
  message: string | null;
  /** Stopped at its run limit: the Job controller's DeadlineExceeded, or not resumed at all (under 1 s left). */
  deadlineExceeded?: true;
  /** Failed only because `resume()` found under 1 s left and left it suspended: a later resume with more may still start it. */
  notResumed?: true;
}

const conditionTrue = (job: V1Job, type: string) => job.status?.conditions?.find((c) => c.type === type && c.status === 'True');
const toDate = (d: Date | string | undefined | null): Date | null => (d == null ? null : d instanceof Date ? d : new Date(d));

/**
 * JobPhase from a Job object, first match wins:
 * 1. `metadata.deletionTimestamp` set → Deleted (foreground deletion keeps the Job until its pods are gone);
 * 2. condition `Failed` or `FailureTarget` True → Failed, with the condition's reason and message
 *    (reason `DeadlineExceeded`: the Job controller stopped it at `spec.activeDeadlineSeconds`,
 *    the run limit `resume()` set, so `deadlineExceeded`);
 * 3. condition `Complete` or `SuccessCriteriaMet` True → Succeeded;
 * 4. `spec.suspend` true and `govloop.io/run-limit-exhausted` set → Failed with
 *    `deadlineExceeded` (`resume()` found under 1 s left and did not start it);
 * 5. `spec.suspend` true → Suspended (also while the Job controller is still deleting the pods
 *    and before the `Suspended` condition appears);
 * 6. otherwise → Running (resumed; pods pending, active or ready, or a `Suspended` condition the
 *    controller has not flipped yet).
 */
export function jobPhase(job: V1Job): PhaseReading {
  if (job.metadata?.deletionTimestamp) return { phase: 'Deleted', message: 'job is being deleted' };
  const failed = conditionTrue(job, 'Failed') ?? conditionTrue(job, 'FailureTarget');
  if (failed) {
    const why = [failed.reason, failed.message].filter(Boolean).join(': ');
    return { phase: 'Failed', message: why || 'job failed', ...(failed.reason === REASON_DEADLINE_EXCEEDED ? { deadlineExceeded: true as const } : {}) };
  }
  const done = conditionTrue(job, 'Complete') ?? conditionTrue(job, 'SuccessCriteriaMet');
  if (done) return { phase: 'Succeeded', message: null };
  const left = job.spec?.suspend ? job.metadata?.annotations?.[Annotation.runLimitExhausted] : undefined;
  if (left !== undefined) {
    return {
      phase: 'Failed',
      message: `RunLimitExhausted: the task's caps left ${left} s of run time (under 1 s), so govloop did not resume the Job`,
      deadlineExceeded: true,
      notResumed: true,
    };
  }
  if (job.spec?.suspend) {
    const s = conditionTrue(job, 'Suspended');
    return { phase: 'Suspended', message: s?.message ?? null };
  }
  return { phase: 'Running', message: null };
}

/**
 * Run-time seconds of a Job: earlier segments (folded into an annotation by `suspend()`) plus the
 * open one, from the last `resume()` to the first of: completion, failure, a suspension govloop did
 * not make (Kueue, kubectl), deletion, or `now`.
 *
 * A Job stopped at its run limit ends at the Job controller's `FailureTarget` (or `Failed`)
 * condition with reason DeadlineExceeded, however late the controller writes it: it held its GPUs
 * until then, so that is metered (not capped at resumed-at + the deadline; the ledger bounds what
 * is charged). The pods' termination grace after the condition is not metered, as after a suspend
 * or a delete (allocation ends when govloop or Kubernetes ends it, decision 0012).
 */
export function runSeconds(job: V1Job, now: Date): number {
  const a = job.metadata?.annotations ?? {};
  const settled = Number(a[Annotation.settledSeconds] ?? 0) || 0;
  const resumedRaw = a[Annotation.resumedAt];
  const resumedAt = resumedRaw ? new Date(resumedRaw) : null;
  if (!resumedAt || Number.isNaN(resumedAt.getTime())) return settled;
  const ends = [
    toDate(job.status?.completionTime),
    toDate(conditionTrue(job, 'Complete')?.lastTransitionTime),
    toDate(conditionTrue(job, 'SuccessCriteriaMet')?.lastTransitionTime),
    toDate(conditionTrue(job, 'Failed')?.lastTransitionTime),
    toDate(conditionTrue(job, 'FailureTarget')?.lastTransitionTime),
    toDate(conditionTrue(job, 'Suspended')?.lastTransitionTime),
    toDate(job.metadata?.deletionTimestamp),
  ].filter((d): d is Date => d !== null && d.getTime() >= resumedAt.getTime());
  const end = ends.reduce((m, d) => (d.getTime() < m.getTime() ? d : m), now);
  return settled + Math.max(0, (end.getTime() - resumedAt.getTime()) / 1000);
}

/** A non-negative decimal from an annotation, or null when absent or not a number. */
function seconds(v: string | undefined): number | null {
  if (v === undefined || v.trim() === '') return null;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? n : null;
}

/** What a Job has done, in the terms of `JobStatus` (the simulated cluster's `settleProgress` on annotations). */
export interface JobAccounting {
  /** Every second the Job ran, lost work included: what GPU-seconds meter. */
  ranSeconds: number;
  /** Work done: the progress the current run segment started from, plus the segment. */
  progressSeconds: number;
  /** Work the trainer's latest checkpoint holds (at most `progressSeconds`); null: it never reported one. */
  checkpointSeconds: number | null;
  /** Work lost to preemptions so far; null while the Job never reported a checkpoint (nothing is known to be lost). */
  lostSeconds: number | null;
}

/**
 * The accounting of a Job at `now`, from its annotations: run-seconds as `runSeconds`, progress =
 * `govloop.io/progress-seconds` (the settled seconds when absent: never preempted) + the open
 * segment, the checkpoint the trainer reported (`govloop.io/checkpoint-seconds`, capped at the
 * progress: a checkpoint cannot hold work not done), and the lost seconds `suspend()` folded in.
 */
/** Seconds since `resume()` last unsuspended the Job (its govloop.io/resumed-at), when it says. */
export function sinceResumed(job: V1Job, now: Date): { runSeconds?: number } {
  const raw = job.metadata?.annotations?.[Annotation.resumedAt];
  const at = raw ? new Date(raw).getTime() : Number.NaN;
  return Number.isNaN(at) ? {} : { runSeconds: Math.max(0, (now.getTime() - at) / 1000) };
}

export function jobAccounting(job: V1Job, now: Date): JobAccounting {
  const a = job.metadata?.annotations ?? {};
  const ran = runSeconds(job, now);
  const settled = seconds(a[Annotation.settledSeconds]) ?? 0;
  const base = seconds(a[Annotation.progressSeconds]) ?? settled;
  const progress = base + Math.max(0, ran - settled);
  const reported = seconds(a[Annotation.checkpointSeconds]);
  const checkpoint = reported === null ? null : Math.min(reported, progress);
  const lost = seconds(a[Annotation.lostSeconds]);
  return { ranSeconds: ran, progressSeconds: progress, checkpointSeconds: checkpoint, lostSeconds: lost ?? (checkpoint === null ? null : 0) };
}

/**
 * The annotations `suspend()` writes when it preempts a running Job at `now`: the open segment
 * folded into the settled seconds; with a reported checkpoint, progress set back to it and the
 * work after it added to the lost seconds (exactly `SimulatedCluster.settleProgress`); without
 * one, progress kept (nothing is known to be lost). The Job gives up its nodes: it holds no GPUs
 * until it is placed again.
 */
export function suspendAnnotations(job: V1Job, now: Date): Record<string, string | null> {
  const acc = jobAccounting(job, now);
  const a = job.metadata?.annotations ?? {};
  const out: Record<string, string | null> = {
    [Annotation.settledSeconds]: String(acc.ranSeconds),
    [Annotation.resumedAt]: null,
    [Annotation.preemptedAt]: now.toISOString(),
    [Annotation.nodes]: null,
    [Annotation.preemptedFrom]: a[Annotation.nodes] ?? null,
  };
  if (acc.checkpointSeconds === null) {
    out[Annotation.progressSeconds] = String(acc.progressSeconds);
  } else {
    out[Annotation.lostSeconds] = String((acc.lostSeconds ?? 0) + Math.max(0, acc.progressSeconds - acc.checkpointSeconds));
    out[Annotation.progressSeconds] = String(Math.min(acc.progressSeconds, acc.checkpointSeconds));
  }
  return out;
}
