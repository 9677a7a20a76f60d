/** The names govloop writes on Jobs and pods: annotations, labels, and the Job controller's own (cluster/kubernetes/manifests.ts). */

/** Annotations govloop owns on a Job. Values are exact (labels may be sanitized, these are not). */
export const Annotation = {
  /** The task id, verbatim. */
  taskId: 'govloop.io/task-id',
  cluster: 'govloop.io/cluster',
  /** GPUs (or MIG instances, or shared-GPU replicas) the whole Job holds while it runs. */
  gpus: 'govloop.io/gpus',
  /** `exclusive`, `mps`, `timeslice` or `mig:<profile>`. */
  sharing: 'govloop.io/sharing',
  /** Comma-separated node names the placement chose; absent when Kubernetes chooses. */
  nodes: 'govloop.io/nodes',
  /** Seconds the Job ran in earlier run segments, folded in by `suspend()` (a decimal number). */
  settledSeconds: 'govloop.io/settled-seconds',
  /** ISO time of the last `resume()`: the start of the current run segment. */
  resumedAt: 'govloop.io/resumed-at',
  /** Cumulative tokens, written by the workload's runner if it reports them here (optional). */
  tokens: 'govloop.io/tokens',
  /** The govloop GPU type (`H100`): capacity() selects a type's Jobs by it. */
  gpuType: 'govloop.io/gpu-type',
  /** With sharing mps / timeslice: the share of the one GPU, in thousandths. */
  gpuMilli: 'govloop.io/gpu-milli',
  /**
   * Work done (run-seconds) at the start of the current run segment: `suspend()` sets it back to
   * the checkpoint. Absent on a Job never suspended: then it equals the settled seconds.
   */
  progressSeconds: 'govloop.io/progress-seconds',
  /** Run-seconds lost to preemptions so far (work after the checkpoint), cumulative. */
  lostSeconds: 'govloop.io/lost-seconds',
  /** ISO time of the last preemption (`suspend()`); removed when the Job is placed again. */
  preemptedAt: 'govloop.io/preempted-at',
  /** Nodes the Job held when it was last preempted (for people; placement ignores it). */
  preemptedFrom: 'govloop.io/preempted-from',
  /**
   * The checkpoint protocol (docs/decisions/0012): `checkpoint()` stamps this ISO time on the Job
   * and on its pods (the pods see it in /etc/govloop/podinfo/annotations).
   */
  checkpointRequestedAt: 'govloop.io/checkpoint-requested-at',
  /** Written by the trainer on the Job: run-seconds of work its latest saved checkpoint holds. */
  checkpointSeconds: 'govloop.io/checkpoint-seconds',
  /**
   * Written by `resume()` instead of unsuspending when the run limit the task's caps leave is under
   * 1 s (Kubernetes needs a deadline of at least 1 s): the seconds that were left (a decimal, may
   * be negative). While the Job stays suspended it reads as Failed with `deadlineExceeded`.
   */
  runLimitExhausted: 'govloop.io/run-limit-exhausted',
} as const;

/** The reason the Job controller gives a Job stopped at `spec.activeDeadlineSeconds`. */
export const REASON_DEADLINE_EXCEEDED = 'DeadlineExceeded';

/** Label the Job controller puts on a Job's pods (Kubernetes 1.27+). */
export const LABEL_JOB_NAME = 'batch.kubernetes.io/job-name';
/** Annotation the Job controller puts on an Indexed Job's pods: the pod's index. */
export const ANNOTATION_COMPLETION_INDEX = 'batch.kubernetes.io/job-completion-index';
/** Where every pod sees its own labels and annotations (a downward-API volume). */
export const PODINFO_DIR = '/etc/govloop/podinfo';
/** torchrun's default rendezvous port. */
export const DEFAULT_RENDEZVOUS_PORT = 29500;

export const LABEL_TASK = 'govloop.io/task';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const MANAGED_BY = 'govloop';
