/**
 * Pure translation between govloop's cluster contract (`JobSpec`, `JobPhase`) and Kubernetes
 * batch/v1 Jobs. No I/O and no wall clock here: the backend (`./backend.ts`) reads and writes the
 * objects, these functions only build and read them, so the whole mapping is table-testable.
 *
 * The Job is the Kueue-style unit of admission (docs/decisions/0012-kubernetes-backend.md):
 * created with `spec.suspend: true`, so no pod exists until govloop admits it and flips
 * `spec.suspend` to false; preemption flips it back (the Job controller deletes the pods, the
 * Job and its accounting annotations stay).
 */
import type { V1Affinity, V1EnvVar, V1Job, V1NodeSelectorRequirement, V1ResourceRequirements, V1Service } from '@kubernetes/client-node';
import type { JobPhase, JobSpec, RunLimit } from '../backend';

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

/** Where the job must run, decided by govloop's placement (or nothing: the kube-scheduler decides). */
export type Placement =
  | { kind: 'any' }
  /** Exactly these nodes, one pod per node for a gang. */
  | { kind: 'nodes'; nodes: string[] }
  /** Any node inside one topology domain, e.g. `{ label: 'topology.govloop.io/rack', value: 'rack-1' }`. */
  | { kind: 'domain'; label: string; value: string };

export interface ManifestOptions {
  namespace: string;
  /** The govloop cluster name (annotation only). */
  cluster: string;
  /** Pod failures before the Job fails. Default 0: a failed training run is the task's failure. */
  backoffLimit?: number;
  /** Largest number of GPUs one pod gets when Kubernetes chooses the nodes. Default 8. */
  gpusPerNode?: number;
  /** Node label holding the node name. Default `kubernetes.io/hostname`. */
  hostnameLabel?: string;
  /**
   * Node label that holds the govloop GPU type (`H100`, `A100`…). Default `govloop.io/gpu-type`
   * (set by the operator: NVIDIA's own `nvidia.com/gpu.product` holds long product strings).
   * `null` leaves the GPU type out of the node affinity.
   */
  gpuTypeLabel?: string | null;
  /** Extended resource for MPS / time-sliced GPUs. Default `nvidia.com/gpu` (the device plugin's default). */
  sharedGpuResource?: string;
  /** Seconds a finished Job is kept before Kubernetes garbage-collects it. Default: not set (kept). */
  ttlSecondsAfterFinished?: number;
  /** MASTER_PORT of a multi-pod gang (torchrun's c10d/static rendezvous). Default 29500. */
  rendezvousPort?: number;
  /**
   * ServiceAccount the pods run as: one allowed to get/patch Jobs (deploy/rbac.yaml
   * `govloop-trainer`) lets the trainer report its checkpoint. Default: not set (the namespace's `default`).
   */
  serviceAccountName?: string;
}

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

/** A short, stable digest (FNV-1a, 32 bits, base 36) to keep sanitized label values distinct. */
function shortHash(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(36).padStart(7, '0');
}

/**
 * A value Kubernetes accepts as a label value: at most 63 characters of `[A-Za-z0-9_.-]`, starting
 * and ending alphanumeric. A valid value is kept as is; any other gets its bad characters replaced
 * by `-`, is cut, and ends with `-<hash of the original>` so that two different values never
 * collapse into one selector. The exact value is always in the annotations too.
 */
export function labelValue(value: string): string {
  if (value.length <= 63 && LABEL_VALUE.test(value)) return value;
  const suffix = shortHash(value);
  const body = value
    .replace(/[^A-Za-z0-9_.-]/g, '-')
    .slice(0, 63 - suffix.length - 1)
    .replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, '');
  return body ? `${body}-${suffix}` : suffix;
}

/** How the spec's GPUs become pods: `pods` pods of `perPod` resources each. */
export interface GangShape {
  pods: number;
  perPod: number;
  resource: string | null;
}

/**
 * The extended resource a sharing mode asks for, and how the Job's GPUs split into pods.
 * exclusive → `nvidia.com/gpu`; `mig:<p>` → `nvidia.com/mig-<p>` (one pod: a MIG instance never
 * spans nodes); mps / timeslice → the shared-GPU resource (one pod). A multi-node exclusive gang
 * has one pod per node with an equal share each; an uneven split cannot be one Job and is refused.
 */
export function gangShape(
  spec: Pick<JobSpec, 'gpus' | 'sharing'>,
  placement: Placement,
  opts: Pick<ManifestOptions, 'gpusPerNode' | 'sharedGpuResource'> = {},
): GangShape {
  if (spec.gpus === 0) return { pods: 1, perPod: 0, resource: null };
  if (spec.sharing.startsWith('mig:')) return { pods: 1, perPod: spec.gpus, resource: `nvidia.com/mig-${spec.sharing.slice(4)}` };
  if (spec.sharing === 'mps' || spec.sharing === 'timeslice') return { pods: 1, perPod: spec.gpus, resource: opts.sharedGpuResource ?? 'nvidia.com/gpu' };
  const pods = placement.kind === 'nodes' ? placement.nodes.length : Math.ceil(spec.gpus / (opts.gpusPerNode ?? 8));
  if (pods < 1) throw new Error(`job needs ${spec.gpus} GPUs but the placement names no node`);
  if (spec.gpus % pods !== 0) {
    throw new Error(`${spec.gpus} GPUs do not split evenly over ${pods} nodes; one Job gives every pod the same resources`);
  }
  return { pods, perPod: spec.gpus / pods, resource: 'nvidia.com/gpu' };
}

/** GPU Feature Discovery's label for how a node's GPUs are shared. */
const SHARING_STRATEGY_LABEL = 'nvidia.com/gpu.sharing-strategy';

/** The batch/v1 Job for a task: suspended, attributed, pinned to its placement. */
export function jobManifest(spec: JobSpec, placement: Placement, opts: ManifestOptions): V1Job {
  if (!DNS1123_LABEL.test(spec.name) || spec.name.length > 63) {
    throw new Error(`job name "${spec.name}" is not a DNS-1123 label of at most 63 characters (use jobName())`);
  }
  if (placement.kind === 'nodes' && new Set(placement.nodes).size !== placement.nodes.length) {
    throw new Error(`placement names a node twice: ${placement.nodes.join(', ')}`);
  }
  const shape = gangShape(spec, placement, opts);
  const labels: Record<string, string> = { [LABEL_MANAGED_BY]: MANAGED_BY };
  for (const [k, v] of Object.entries(spec.labels)) {
    if (!LABEL_KEY.test(k)) throw new Error(`label key "${k}" is not a valid Kubernetes label key`);
    labels[k] = labelValue(v);
  }
  labels[LABEL_TASK] = labelValue(spec.taskId);

  const annotations: Record<string, string> = {
    [Annotation.taskId]: spec.taskId,
    [Annotation.cluster]: opts.cluster,
    [Annotation.gpus]: String(spec.gpus),
    [Annotation.sharing]: spec.sharing,
    [Annotation.settledSeconds]: '0',
  };
  if (spec.gpuType) annotations[Annotation.gpuType] = spec.gpuType;
  const milli = gpuMilliOf(spec);
  if (milli !== undefined) annotations[Annotation.gpuMilli] = String(milli);
  if (placement.kind === 'nodes') annotations[Annotation.nodes] = placement.nodes.join(',');

  const resources: V1ResourceRequirements = {};
  if (shape.resource !== null) {
    // Extended resources cannot be overcommitted: requests equal limits, so limits alone suffice.
    resources.limits = { [shape.resource]: String(shape.perPod) };
  }

  const required: V1NodeSelectorRequirement[] = [];
  if (placement.kind === 'nodes') required.push({ key: opts.hostnameLabel ?? 'kubernetes.io/hostname', operator: 'In', values: [...placement.nodes] });
  if (placement.kind === 'domain') required.push({ key: placement.label, operator: 'In', values: [placement.value] });
  const gpuTypeLabel = opts.gpuTypeLabel === undefined ? 'govloop.io/gpu-type' : opts.gpuTypeLabel;
  if (gpuTypeLabel !== null && spec.gpus > 0 && spec.gpuType) required.push({ key: gpuTypeLabel, operator: 'In', values: [spec.gpuType] });
  if (spec.sharing === 'mps' || spec.sharing === 'timeslice') {
    required.push({ key: SHARING_STRATEGY_LABEL, operator: 'In', values: [spec.sharing === 'mps' ? 'mps' : 'time-slicing'] });
  }

  const affinity: V1Affinity = {};
  if (required.length) affinity.nodeAffinity = { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: required }] } };
  if (shape.pods > 1) {
    // One pod per node: no two pods of this Job on one host.
    affinity.podAntiAffinity = {
      requiredDuringSchedulingIgnoredDuringExecution: [
        { labelSelector: { matchLabels: { 'batch.kubernetes.io/job-name': spec.name } }, topologyKey: opts.hostnameLabel ?? 'kubernetes.io/hostname' },
      ],
    };
  }

  const gang = shape.pods > 1;
  const port = opts.rendezvousPort ?? DEFAULT_RENDEZVOUS_PORT;
  const userEnv = spec.runtime.env ?? {};
  const env: V1EnvVar[] = [
    ...Object.entries(userEnv).map(([name, value]) => ({ name, value })),
    { name: 'GOVLOOP_TASK_ID', value: spec.taskId },
    // The checkpoint protocol: the Job to report on, and where the pod sees the request.
    { name: 'GOVLOOP_JOB_NAME', value: spec.name },
    { name: 'GOVLOOP_NAMESPACE', value: opts.namespace },
    { name: 'GOVLOOP_PODINFO_DIR', value: PODINFO_DIR },
    // The torchrun template's command refers to $(NNODES) and $(GPUS_PER_NODE); Kubernetes expands them.
    { name: 'NNODES', value: String(shape.pods) },
    { name: 'GPUS_PER_NODE', value: String(shape.perPod) },
  ];
  if (gang) {
    // Rendezvous: pod i of an Indexed Job is host `<job>-<i>`; with `subdomain` = the headless
    // Service of the same name, `<job>-0.<job>` resolves to rank 0 inside the namespace.
    // torchrun reads --master-addr/--master-port/--node-rank from PET_* when not given as flags.
    const rank = { fieldRef: { fieldPath: `metadata.annotations['${ANNOTATION_COMPLETION_INDEX}']` } };
    const rendezvous: V1EnvVar[] = [
      { name: 'MASTER_ADDR', value: `${spec.name}-0.${spec.name}` },
      { name: 'MASTER_PORT', value: String(port) },
      { name: 'NODE_RANK', valueFrom: rank },
      { name: 'PET_MASTER_ADDR', value: `${spec.name}-0.${spec.name}` },
      { name: 'PET_MASTER_PORT', value: String(port) },
      { name: 'PET_NODE_RANK', valueFrom: rank },
    ];
    // The template's own values win.
    env.push(...rendezvous.filter((e) => !(e.name in userEnv)));
  }

  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: { name: spec.name, namespace: opts.namespace, labels, annotations },
    spec: {
      suspend: true,
      backoffLimit: opts.backoffLimit ?? 0,
      ...(gang ? { completionMode: 'Indexed', completions: shape.pods, parallelism: shape.pods } : { completions: 1, parallelism: 1 }),
      ...(opts.ttlSecondsAfterFinished !== undefined ? { ttlSecondsAfterFinished: opts.ttlSecondsAfterFinished } : {}),
      template: {
        metadata: { labels: { ...labels }, annotations: { [Annotation.taskId]: spec.taskId } },
        spec: {
          restartPolicy: 'Never',
          priorityClassName: spec.priorityClass,
          ...(opts.serviceAccountName ? { serviceAccountName: opts.serviceAccountName } : {}),
          ...(gang ? { subdomain: spec.name } : {}),
          ...(Object.keys(affinity).length ? { affinity } : {}),
          containers: [
            {
              name: 'task',
              image: spec.runtime.image,
              command: [...spec.runtime.command],
              env,
              resources,
              volumeMounts: [{ name: PODINFO_VOLUME, mountPath: PODINFO_DIR, readOnly: true }],
            },
          ],
          volumes: [
            {
              name: PODINFO_VOLUME,
              downwardAPI: {
                items: [
                  { path: 'annotations', fieldRef: { fieldPath: 'metadata.annotations' } },
                  { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } },
                ],
              },
            },
          ],
        },
      },
    },
  };
}

const PODINFO_VOLUME = 'govloop-podinfo';

/** The GPU share of a JobSpec (mps / timeslice), when the spec carries one. */
export function gpuMilliOf(spec: Pick<JobSpec, 'sharing'> & { gpuMilli?: number }): number | undefined {
  return (spec.sharing === 'mps' || spec.sharing === 'timeslice') && typeof spec.gpuMilli === 'number' ? spec.gpuMilli : undefined;
}

/** Does a Job (as built by `jobManifest`) run more than one pod, so that it needs its headless Service? */
export function isGang(job: V1Job): boolean {
  return (job.spec?.completions ?? 1) > 1 || !!job.spec?.template.spec?.subdomain;
}

/**
 * The headless Service of a multi-pod gang: same name as the Job, selecting its pods by the Job
 * controller's `batch.kubernetes.io/job-name` label, publishing addresses before the pods are
 * Ready (rank 0 must be resolvable while the others start), and owned by the Job (its uid), so
 * deleting the Job deletes the Service (`blockOwnerDeletion`: foreground deletion of the Job waits
 * for it). `job` must be the Job as stored (it needs `metadata.uid`).
 */
export function gangServiceManifest(job: V1Job, opts: Pick<ManifestOptions, 'namespace' | 'rendezvousPort'>): V1Service {
  const name = job.metadata?.name;
  const uid = job.metadata?.uid;
  if (!name || !uid) throw new Error('gangServiceManifest needs a stored Job (name and uid)');
  const port = opts.rendezvousPort ?? DEFAULT_RENDEZVOUS_PORT;
  const taskId = job.metadata?.annotations?.[Annotation.taskId];
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: {
      name,
      namespace: opts.namespace,
      labels: { ...(job.metadata?.labels ?? {}) },
      ...(taskId ? { annotations: { [Annotation.taskId]: taskId } } : {}),
      ownerReferences: [{ apiVersion: 'batch/v1', kind: 'Job', name, uid, controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      clusterIP: 'None',
      selector: { [LABEL_JOB_NAME]: name },
      publishNotReadyAddresses: true,
      ports: [{ name: 'rendezvous', port, targetPort: port, protocol: 'TCP' }],
    },
  };
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

/** Nodes a Job was pinned to (`govloop.io/nodes`); empty when Kubernetes chooses or it was preempted. */
export function nodesOf(job: V1Job): string[] {
  const v = job.metadata?.annotations?.[Annotation.nodes];
  return v ? v.split(',').filter(Boolean) : [];
}

/** The task a Job belongs to: the exact annotation, else the (possibly sanitized) label. */
export function taskIdOf(job: V1Job): string | null {
  return job.metadata?.annotations?.[Annotation.taskId] ?? job.metadata?.labels?.[LABEL_TASK] ?? null;
}
