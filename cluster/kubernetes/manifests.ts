/**
 * Pure translation between govloop's cluster contract (`JobSpec`, `JobPhase`) and Kubernetes
 * batch/v1 Jobs. No I/O and no wall clock here: the backend (`./backend.ts`) reads and writes the
 * objects, these functions only build and read them, so the whole mapping is table-testable.
 *
 * The Job is the Kueue-style unit of admission (docs/decisions/0012-kubernetes-backend.md):
 * created with `spec.suspend: true`, so no pod exists until govloop admits it and flips
 * `spec.suspend` to false; preemption flips it back (the Job controller deletes the pods, the
 * Job and its accounting annotations stay). *
 * The names govloop writes are in `./annotations.ts`; reading a Job back (phase, accounting, the
 * run deadline) is in `./accounting.ts`. This file re-exports both.
 */
import type { V1Affinity, V1EnvVar, V1Job, V1NodeSelectorRequirement, V1ResourceRequirements, V1Service } from '@kubernetes/client-node';
import type { JobSpec } from '../backend';
import {
  Annotation,
  LABEL_JOB_NAME,
  ANNOTATION_COMPLETION_INDEX,
  PODINFO_DIR,
  DEFAULT_RENDEZVOUS_PORT,
  LABEL_TASK,
  LABEL_MANAGED_BY,
  MANAGED_BY,
} from './annotations';

export {
  Annotation,
  REASON_DEADLINE_EXCEEDED,
  LABEL_JOB_NAME,
  ANNOTATION_COMPLETION_INDEX,
  PODINFO_DIR,
  DEFAULT_RENDEZVOUS_PORT,
  LABEL_TASK,
  LABEL_MANAGED_BY,
  MANAGED_BY,
} from './annotations';
export { activeDeadlineFor, type PhaseReading, jobPhase, runSeconds, type JobAccounting, sinceResumed, jobAccounting, suspendAnnotations } from './accounting';

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

/** Nodes a Job was pinned to (`govloop.io/nodes`); empty when Kubernetes chooses or it was preempted. */
export function nodesOf(job: V1Job): string[] {
  const v = job.metadata?.annotations?.[Annotation.nodes];
  return v ? v.split(',').filter(Boolean) : [];
}

/** The task a Job belongs to: the exact annotation, else the (possibly sanitized) label. */
export function taskIdOf(job: V1Job): string | null {
  return job.metadata?.annotations?.[Annotation.taskId] ?? job.metadata?.labels?.[LABEL_TASK] ?? null;
}
