import { createHash } from 'node:crypto';
import type { Template } from '../config/schema';
import type { GpuTopology, Sharing } from '../governance/intent';
import type { Reason } from '../governance/reasons';
import type { ClusterCapacity } from '../governance/quota';

/**
 * The execution plane's contract with a GPU cluster. The simulated backend and the Kubernetes
 * backend implement the same states and failures, so the workflow cannot tell them apart.
 *
 * Lifecycle (the Kueue way): create suspended → resume → Running → Succeeded | Failed;
 * suspend (preemption) returns a Running job to Suspended keeping its progress; delete is final.
 */
export type JobPhase = 'Suspended' | 'Running' | 'Succeeded' | 'Failed' | 'Deleted';

export interface JobSpec {
  /** Deterministic, DNS-safe name derived from the task id: re-creating is a no-op. */
  name: string;
  taskId: string;
  gpus: number;
  gpuType: string;
  sharing: Sharing;
  /** With sharing mps / timeslice: the share of the one GPU, in thousandths (1–999). */
  gpuMilli?: number;
  /** How far a gang may spread (absent: as close as it fits, anywhere). */
  topology?: GpuTopology;
  priorityClass: string;
  labels: Record<string, string>;
  runtime: Template['runtime'];
  /** How a simulated job behaves; ignored by real clusters. */
  simulation: { durationSeconds: number; tokensPerSecond: number; failAfterSeconds: number | null };
}

/** `explanation`: why the placement is where it is (domain chosen, why not smaller, fragmentation after), when the backend placed it. */
export type CreateResult = { ok: true; nodes: string[]; explanation?: string } | { ok: false; reason: Reason };

export interface JobStatus {
  name: string;
  phase: JobPhase;
  nodes: string[];
  /** Job-seconds of work done so far (a checkpointed job keeps this across suspend/resume). */
  progressSeconds: number;
  /** Job-seconds of work kept by the job's last checkpoint (a suspend goes back to it); absent: not known. */
  checkpointSeconds?: number;
  /** Job-seconds run and then lost to preemptions (they were metered, since they ran). */
  lostSeconds?: number;
  /** Cumulative usage since creation (every second that ran, lost work included). */
  gpuSeconds: number;
  tokens: number;
  message: string | null;
  /**
   * True when the cluster itself stopped the job at the run limit `resume` gave it (Kubernetes:
   * the Job failed with reason DeadlineExceeded). The phase is then Failed, and the task ends
   * CapExceeded with the cap that set the limit.
   */
  deadlineExceeded?: boolean;
}

/**
 * How long a job may still run from a resume: the lower of what the task's `maxGpuHours` and its
 * `maxUsd` (at the plan's price) leave, less the backend's `stopMarginSeconds`. Seconds of job run
 * time (simulated seconds on the simulated cluster). 0 or less: the job must not run at all.
 */
export interface RunLimit {
  maxRunSeconds: number;
}

export type { ClusterCapacity };

/** What a job asks the cluster for: the GPU part of a JobSpec. */
export type GpuRequest = Pick<JobSpec, 'gpus' | 'gpuType' | 'sharing' | 'gpuMilli' | 'topology'>;

export interface ClusterBackend {
  readonly cluster: string;
  /** Places and creates the job, suspended. Idempotent by name. Fails with a reason when no room. */
  create(spec: JobSpec): Promise<CreateResult>;
  /**
   * Unsuspends the job. With `limit`, the cluster stops the job itself once it has run
   * `limit.maxRunSeconds` from now (Kubernetes: `spec.activeDeadlineSeconds`, whose timer restarts
   * at each resume), and `status` then says `deadlineExceeded`. Absent: no limit (older callers).
   */
  resume(name: string, limit?: RunLimit): Promise<void>;
  /**
   * How late after its run limit this cluster may still be running (and metering) the job: the
   * simulated cluster stops it exactly (0); on Kubernetes, how late the Job controller can mark
   * the Job failed after its deadline (metering ends there). The run limit is this much shorter
   * than what the caps leave.
   */
  readonly stopMarginSeconds: number;
  /** Preemption: back to Suspended, frees its GPUs; a checkpointed job keeps its progress up to its checkpoint. */
  suspend(name: string): Promise<void>;
  /** The preemption checkpoint signal: the job saves its progress now. Optional: not every cluster can. */
  checkpoint?(name: string): Promise<void>;
  /**
   * The least grace period after `checkpoint` this cluster needs to deliver the signal and let a
   * job save (Kubernetes: the kubelet refreshes the downward-API file within about a minute). The
   * workflow waits the longer of this and policies.preemption.graceMillis. Absent: the policy's.
   */
  readonly checkpointGraceMillis?: number;
  /**
   * GPUs per node of a type and the jobs on them, for victim selection. With `request`, a cluster
   * that can place in memory also answers `fits`. Optional.
   */
  capacity?(gpuType: string, request?: GpuRequest): Promise<ClusterCapacity>;
  status(name: string): Promise<JobStatus | null>;
  /** Deletes the job and frees its GPUs. Idempotent. */
  delete(name: string): Promise<void>;
}

/** Error types (Temporal `ApplicationFailure.type`) every backend throws the same way. */
export const ClusterErrorType = {
  /** A job with the task's deterministic name exists but belongs to another task (non-retryable). */
  JobNameTaken: 'JobNameTaken',
} as const;

/**
 * The longest job name: a gang's pods get the hostname `<job>-<index>` (Indexed Jobs), which must
 * itself be a DNS-1123 label of at most 63 characters, so 6 are kept for `-<index>` up to 99999.
 */
export const JOB_NAME_MAX = 57;
/** Hex digits of sha256(task id) at the end of a job name: 64 bits. */
const JOB_NAME_HASH_HEX = 16;

/**
 * Deterministic job name: `gl-<slug>-<hash>`. The slug (the task id lowercased, anything outside
 * `[a-z0-9]` turned into `-`, cut to fit) is for people; the hash (sha256 of the exact task id)
 * keeps ids apart that the slug folds together: case, punctuation, a long shared prefix. A
 * DNS-1123 label of at most JOB_NAME_MAX characters. Backends still refuse a name that belongs to
 * another task (ClusterErrorType.JobNameTaken).
 */
export function jobName(taskId: string): string {
  const hash = createHash('sha256').update(taskId, 'utf8').digest('hex').slice(0, JOB_NAME_HASH_HEX);
  const room = JOB_NAME_MAX - 'gl-'.length - 1 - JOB_NAME_HASH_HEX;
  const slug = taskId
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .slice(0, room)
    .replace(/^-+|-+$/g, '');
  return slug ? `gl-${slug}-${hash}` : `gl-${hash}`;
}
