/**
 * The Kubernetes implementation of `ClusterBackend`: one batch/v1 Job per task, created suspended
 * and unsuspended when govloop admits it (the way Kueue admits Jobs), suspended again to preempt,
 * deleted with foreground propagation to cancel. The manifests and the Job → phase mapping are
 * pure functions in `./manifests.ts`; this file only talks to the API server.
 *
 * Accounting lives on the Job itself, so any dispatch worker (or a restarted one) reads the same
 * numbers: `resume()` stamps `govloop.io/resumed-at`, `suspend()` folds the open run segment into
 * `govloop.io/settled-seconds`, and `status()` reports settled + open segment × GPUs as
 * `gpuSeconds`. That is GPU *allocation* time from admission, the same thing the simulated cluster
 * meters (docs/decisions/0012-kubernetes-backend.md). Every read-modify-write sends the
 * `resourceVersion` it read, so a concurrent change makes the API server answer 409 and the
 * operation is retried on a fresh read instead of overwriting it.
 *
 * Preemption follows the simulated cluster (`SimulatedCluster.settleProgress`): `checkpoint()`
 * stamps `govloop.io/checkpoint-requested-at` on the Job and its pods (the checkpoint protocol of
 * docs/decisions/0012), the trainer answers with `govloop.io/checkpoint-seconds` on the Job, and
 * `suspend()` sets the progress back to that checkpoint and counts the rest as lost. A multi-pod
 * gang gets a headless Service (owned by its Job) for torchrun's rendezvous. `capacity()` and the
 * govloop placement (`placement: 'govloop'`) read Nodes, govloop Jobs and pods (`./placement.ts`).
 */
import { ApplicationFailure } from '@temporalio/common';
import {
  ApiException,
  BatchV1Api,
  CoordinationV1Api,
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type BatchV1ApiCreateNamespacedJobRequest,
  type BatchV1ApiDeleteNamespacedJobRequest,
  type BatchV1ApiListNamespacedJobRequest,
  type BatchV1ApiPatchNamespacedJobRequest,
  type BatchV1ApiPatchNamespacedJobStatusRequest,
  type BatchV1ApiReadNamespacedJobRequest,
  type ConfigurationOptions,
  type CoreV1ApiCreateNamespacedServiceRequest,
  type CoreV1ApiDeleteNamespacedServiceRequest,
  type CoreV1ApiListNamespacedPodRequest,
  type CoreV1ApiListNodeRequest,
  type CoreV1ApiListPodForAllNamespacesRequest,
  type CoreV1ApiPatchNamespacedPodRequest,
  type CoreV1ApiPatchNamespacedServiceRequest,
  type CoreV1ApiReadNamespacedServiceRequest,
  type V1Job,
  type V1JobList,
  type V1Node,
  type V1NodeList,
  type V1Pod,
  type V1PodList,
  type V1Service,
  type V1Status,
} from '@kubernetes/client-node';
import {
  type ClusterBackend,
  type ClusterCapacity,
  ClusterErrorType,
  type CreateResult,
  type JobPhase,
  type JobSpec,
  type JobStatus,
  type RunLimit,
} from '../backend';
import { ReasonCode, type Reason, reason } from '../../governance/reasons';
import {
  Annotation,
  LABEL_JOB_NAME,
  LABEL_MANAGED_BY,
  LABEL_TASK,
  MANAGED_BY,
  type ManifestOptions,
  type Placement,
  activeDeadlineFor,
  gangServiceManifest,
  isGang,
  jobAccounting,
  sinceResumed,
  jobManifest,
  jobPhase,
  nodesOf,
  suspendAnnotations,
  taskIdOf,
} from './manifests';
import { type LeasesApi, PlacementLease, type PlacementLeaseOptions } from './lease';
import {
  type GpuAsk,
  type HeldGpus,
  type NodeLabelOptions,
  type TopologyReading,
  decidePlacement,
  heldByJobs,
  heldByPods,
  holdsNodes,
  readTopology,
  usedGpus,
} from './placement';

/** The BatchV1Api calls the backend makes (client-node's object-parameter API); tests may inject their own. */
export interface JobsApi {
  createNamespacedJob(param: BatchV1ApiCreateNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Job>;
  readNamespacedJob(param: BatchV1ApiReadNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Job>;
  patchNamespacedJob(param: BatchV1ApiPatchNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Job>;
  patchNamespacedJobStatus(param: BatchV1ApiPatchNamespacedJobStatusRequest, options?: ConfigurationOptions): Promise<V1Job>;
  deleteNamespacedJob(param: BatchV1ApiDeleteNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Status>;
  listNamespacedJob(param: BatchV1ApiListNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1JobList>;
}

/** The CoreV1Api calls: the gang's Service, the Job's pods (checkpoint), Nodes and pods (capacity, placement). */
export interface CoreApi {
  createNamespacedService(param: CoreV1ApiCreateNamespacedServiceRequest, options?: ConfigurationOptions): Promise<V1Service>;
  readNamespacedService(param: CoreV1ApiReadNamespacedServiceRequest, options?: ConfigurationOptions): Promise<V1Service>;
  patchNamespacedService(param: CoreV1ApiPatchNamespacedServiceRequest, options?: ConfigurationOptions): Promise<V1Service>;
  deleteNamespacedService(param: CoreV1ApiDeleteNamespacedServiceRequest, options?: ConfigurationOptions): Promise<unknown>;
  listNamespacedPod(param: CoreV1ApiListNamespacedPodRequest, options?: ConfigurationOptions): Promise<V1PodList>;
  patchNamespacedPod(param: CoreV1ApiPatchNamespacedPodRequest, options?: ConfigurationOptions): Promise<V1Pod>;
  listPodForAllNamespaces(param?: CoreV1ApiListPodForAllNamespacesRequest, options?: ConfigurationOptions): Promise<V1PodList>;
  listNode(param?: CoreV1ApiListNodeRequest, options?: ConfigurationOptions): Promise<V1NodeList>;
}

export interface KubernetesApis {
  jobs: JobsApi;
  core: CoreApi;
  /** The placement lease (govloop placement across worker processes); without it, placement is serialized in this process only. */
  leases?: LeasesApi;
}

/** What a placement hook answers: where the job goes (with why, for the dispatch audit), or why it cannot go now (the task queues). */
export type PlaceResult = (Placement & { explanation?: string }) | { kind: 'none'; reason: Reason };

/** Pods that may hold GPUs: not finished. */
const ACTIVE_PODS = 'status.phase!=Succeeded,status.phase!=Failed';

export interface KubernetesClusterOptions extends Omit<ManifestOptions, 'namespace' | 'cluster'> {
  /** govloop's name for the cluster; the dispatch task queue is `govloop-cluster-<cluster>`. */
  cluster: string;
  namespace: string;
  /**
   * A placement hook for a job (nodes or a topology domain); when given it decides, whatever
   * `placement` says.
   */
  place?: (spec: JobSpec) => PlaceResult | Promise<PlaceResult>;
  /**
   * Without a hook: `govloop` places with governance/placement.ts over the Nodes' topology labels
   * and pins the Job to the chosen nodes (`./placement.ts`; it falls back to the kube-scheduler,
   * saying why through `onPlacementNote`, when the Nodes carry no GPU-type label); `scheduler`
   * (default) leaves the nodes to the kube-scheduler (and Kueue, if installed).
   */
  placement?: 'govloop' | 'scheduler';
  /** Topology labels of the Nodes (defaults in ./placement.ts `NodeLabel`). */
  nodeLabels?: Omit<NodeLabelOptions, 'gpuTypeLabel' | 'sharedGpuResource'>;
  /**
   * Count GPUs held by pods that are not govloop's (any namespace) in capacity and placement.
   * Default true; needs `list pods` cluster-wide. False: only govloop's own pods in the namespace.
   */
  countOtherPods?: boolean;
  /** Why govloop placement fell back to the kube-scheduler, or held GPUs it could not count (each said at most every 10 minutes). */
  onPlacementNote?: (note: string) => void;
  clock?: () => Date;
  /** `fieldManager` on every write. Default `govloop`. */
  fieldManager?: string;
  /** Attempts of a read-modify-write that keeps meeting 409 Conflict. Default 5. */
  conflictRetries?: number;
  /**
   * The least preemption grace period (ms) between the checkpoint signal and suspend: the kubelet
   * refreshes the downward-API file the pods read the signal from within about a minute, and the
   * trainer then has to save. Default 90 s; the workflow waits the longer of this and
   * policies.preemption.graceMillis.
   */
  checkpointGraceMillis?: number;
  /**
   * How late after its run limit a Job may still be metered (`ClusterBackend.stopMarginSeconds`);
   * the run limit is this much shorter than what the caps leave. Default
   * `DEFAULT_STOP_MARGIN_SECONDS` (20; where it comes from is said there). Raise it for a
   * controller-manager that is slow to sync Jobs or fails over slowly.
   */
  stopMarginSeconds?: number;
  /**
   * govloop placement holds the Lease `govloop-placement-<cluster>` in the namespace while it
   * places and creates a Job, so several worker processes on one cluster never book a GPU twice
   * (./lease.ts). Options, or false to rely on one worker per cluster.
   */
  placementLease?: PlacementLeaseOptions | false;
}

/** Error types (Temporal `ApplicationFailure.type`) the backend throws. */
export const KubernetesErrorType = {
  /** The API server refused the request as malformed (400, 422): retrying cannot help. */
  Invalid: 'KubernetesInvalid',
  /** Any other API failure (401, 403, 429, 5xx, network): retried, an operator may need to act. */
  Api: 'KubernetesApiError',
  /** A Job (or gang Service) with the task's deterministic name exists but belongs to another task: the backend-neutral type. */
  NameTaken: ClusterErrorType.JobNameTaken,
} as const;

/** HTTP status of an API failure, or null when the error is not one (a network error, a bug). */
export function apiStatusCode(err: unknown): number | null {
  if (err instanceof ApiException) return err.code;
  // Another copy of client-node (a different version in node_modules) throws its own ApiException class.
  const e = err as { name?: unknown; code?: unknown; body?: unknown } | null;
  return e && typeof e.code === 'number' && 'body' in e && 'headers' in e ? e.code : null;
}

/** The API server's `Status` object from an error body (a JSON string or an object), if there is one. */
function statusBody(err: unknown): Partial<V1Status> | null {
  const body = (err as { body?: unknown })?.body;
  if (body && typeof body === 'object') return body as Partial<V1Status>;
  if (typeof body === 'string') {
    try {
      const v: unknown = JSON.parse(body);
      return v && typeof v === 'object' ? (v as Partial<V1Status>) : null;
    } catch {
      return null;
    }
  }
  return null;
}

/** Turns an API failure into an ApplicationFailure whose message says what was asked and what the server said. */
export function kubernetesFailure(what: string, err: unknown, need = 'create/get/patch/delete on jobs.batch in this namespace'): ApplicationFailure {
  const code = apiStatusCode(err);
  if (code === null) {
    return ApplicationFailure.create({
      type: KubernetesErrorType.Api,
      message: `kubernetes: ${what}: ${(err as Error)?.message ?? String(err)}`,
      cause: err instanceof Error ? err : undefined,
    });
  }
  const s = statusBody(err);
  const said = [s?.reason, s?.message].filter(Boolean).join(': ') || (code === 401 ? 'Unauthorized' : 'no Status in the answer');
  const hint =
    code === 401 ? ' (check the kubeconfig credentials)' : code === 403 ? ` (the service account needs ${need}; deploy/rbac.yaml has all govloop needs)` : '';
  return ApplicationFailure.create({
    type: code === 400 || code === 422 ? KubernetesErrorType.Invalid : KubernetesErrorType.Api,
    message: `kubernetes: ${what}: HTTP ${code}: ${said}${hint}`,
    nonRetryable: code === 400 || code === 422,
    details: [{ code, reason: s?.reason ?? null }],
  });
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** A job event from the watch, in govloop's terms: what a dispatch worker would signal to the task's workflow. */
export interface JobEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  taskId: string;
  job: string;
  phase: JobPhase;
  message: string | null;
}

/**
 * How late the Job controller's DeadlineExceeded condition may come after the run limit, as govloop
 * meters it. `resume()` stamps govloop.io/resumed-at (R, govloop's clock) and sets
 * `activeDeadlineSeconds` = L (the run limit rounded down); the metered segment ends at the
 * `FailureTarget`/`Failed` condition's time D (`runSeconds`). The Job controller
 * (pkg/controller/job/job_controller.go, Kubernetes 1.34) sets `status.startTime` S when it syncs
 * the resumed Job (a spec change is synced at once from its watch) and re-queues the Job for
 * S + L, so D − R = L + (S − R) + (D − S − L), plus any skew between govloop's clock and the
 * controller-manager's:
 * - S − R and D − S − L: a watch event and a work-queue pass each, well under a second normally;
 *   a failed sync is retried after 1 s, doubling;
 * - a controller-manager failover in between: nothing syncs until the new leader has the lease
 *   (kube-controller-manager --leader-elect-lease-duration, 15 s by default) and syncs every Job;
 * - clock skew (NTP): under a second.
 * 15 s (one failover) + 2 × 2 s (the two syncs) + 1 s (skew) = 20 s. Times are stored in whole
 * seconds, rounded down, which only shortens the metered segment. The pods' termination grace
 * after the condition is not metered (as after suspend or delete), so it is not in the margin.
 * Without a Job controller (a bare API server) nothing stops the Job at all: the workflow's cap
 * check at each poll is then the only line.
 */
export const DEFAULT_STOP_MARGIN_SECONDS = 20;

export class KubernetesCluster implements ClusterBackend {
  /** How late after its run limit a Job may still be metered: `opts.stopMarginSeconds`, default DEFAULT_STOP_MARGIN_SECONDS. */
  readonly stopMarginSeconds: number;
  readonly cluster: string;
  readonly namespace: string;
  readonly checkpointGraceMillis: number;
  private readonly jobs: JobsApi;
  private readonly core: CoreApi;
  private readonly kubeConfig: KubeConfig | null;
  private readonly clock: () => Date;
  /** Last status of jobs this process deleted, answered once the Job is gone (404). */
  private readonly tombstones = new Map<string, JobStatus>();
  /** Placement and the create that books it run one at a time in this process, so no GPU is booked twice. */
  private booking: Promise<unknown> = Promise.resolve();
  private readonly notesSaid = new Map<string, number>();
  /** Held around placement and create when govloop places (null: this process only). */
  private readonly lease: PlacementLease | null;

  /** `source`: a KubeConfig (e.g. `kc.loadFromDefault()`: $KUBECONFIG, ~/.kube/config, or in-cluster), or injected APIs. */
  constructor(
    source: KubeConfig | KubernetesApis,
    private readonly opts: KubernetesClusterOptions,
  ) {
    this.cluster = opts.cluster;
    this.namespace = opts.namespace;
    this.kubeConfig = source instanceof KubeConfig ? source : null;
    this.jobs = source instanceof KubeConfig ? source.makeApiClient(BatchV1Api) : source.jobs;
    this.core = source instanceof KubeConfig ? source.makeApiClient(CoreV1Api) : source.core;
    this.clock = opts.clock ?? (() => new Date());
    this.checkpointGraceMillis = opts.checkpointGraceMillis ?? 90_000;
    const margin = opts.stopMarginSeconds ?? DEFAULT_STOP_MARGIN_SECONDS;
    if (!Number.isFinite(margin) || margin < 0)
      throw new Error(`kubernetes cluster ${opts.cluster}: stopMarginSeconds must be a number of seconds ≥ 0, got ${margin}`);
    this.stopMarginSeconds = margin;
    const leases = source instanceof KubeConfig ? source.makeApiClient(CoordinationV1Api) : source.leases;
    this.lease =
      leases && opts.placementLease !== false
        ? new PlacementLease(leases, this.namespace, `govloop-placement-${this.cluster}`.slice(0, 253), opts.placementLease || {})
        : null;
  }

  private manifestOptions(): ManifestOptions {
    const {
      place: _p,
      clock: _c,
      fieldManager: _f,
      conflictRetries: _r,
      placement: _pl,
      nodeLabels: _n,
      countOtherPods: _o,
      onPlacementNote: _on,
      placementLease: _l,
      checkpointGraceMillis: _g,
      stopMarginSeconds: _s,
      ...rest
    } = this.opts;
    return { ...rest, namespace: this.namespace, cluster: this.cluster };
  }

  private get fieldManager(): string {
    return this.opts.fieldManager ?? 'govloop';
  }

  private get gpuTypeLabel(): string | null {
    return this.opts.gpuTypeLabel === undefined ? 'govloop.io/gpu-type' : this.opts.gpuTypeLabel;
  }

  private serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.booking.then(fn, fn);
    this.booking = run.catch(() => undefined);
    return run;
  }

  /**
   * Places and creates the Job suspended. Idempotent: 409 AlreadyExists reads the existing Job
   * instead (it keeps the placement it has). A Job preempted earlier (suspended, its nodes given
   * up) is placed again: its pod template's node affinity is rewritten to the new placement, which
   * Kubernetes allows while the Job is suspended and `status.startTime` is unset (reset first, as
   * Kueue does). A multi-pod gang gets its headless Service.
   */
  async create(spec: JobSpec): Promise<CreateResult> {
    // Only govloop's own placement reads free GPUs and pins to them; the kube-scheduler and a hook need no lease.
    const across = this.lease !== null && !this.opts.place && this.opts.placement === 'govloop' ? this.lease : null;
    return this.serially(() => (across ? across.hold(() => this.createHere(spec)) : this.createHere(spec)));
  }

  private async createHere(spec: JobSpec): Promise<CreateResult> {
    const placed = await this.decide(spec);
    if (placed.kind === 'none') {
      // No room now; but a Job created earlier (a retried activity) already has its place.
      const existing = await this.read(spec.name, 'read existing job');
      if (existing && taskIdOf(existing) === spec.taskId && !needsPlacement(existing)) return this.created(existing);
      return { ok: false, reason: placed.reason };
    }
    const { explanation, ...placement } = placed;
    const body = jobManifest(spec, placement, this.manifestOptions());
    let job: V1Job;
    let applied = true;
    try {
      job = await this.jobs.createNamespacedJob({ namespace: this.namespace, body, fieldManager: this.fieldManager });
    } catch (err) {
      if (apiStatusCode(err) !== 409) throw kubernetesFailure(`create job ${spec.name} in namespace ${this.namespace}`, err);
      const existing = await this.read(spec.name, 'read existing job');
      // Created and deleted in between: the next attempt creates it again.
      if (!existing) throw kubernetesFailure(`create job ${spec.name} in namespace ${this.namespace}`, err);
      const owner = taskIdOf(existing);
      if (owner !== spec.taskId) {
        throw ApplicationFailure.create({
          type: KubernetesErrorType.NameTaken,
          nonRetryable: true,
          message: `kubernetes: job ${spec.name} in namespace ${this.namespace} belongs to task ${owner ?? '(no govloop annotation)'}, not ${spec.taskId}`,
        });
      }
      if (needsPlacement(existing)) {
        const again = await this.placeAgain(spec, placement, body);
        if (!again.ok) return again;
        job = again.job;
      } else {
        job = existing;
        applied = false;
      }
    }
    return this.created(job, applied ? explanation : undefined);
  }

  private async created(job: V1Job, explanation?: string): Promise<CreateResult> {
    await this.ensureService(job);
    return { ok: true, nodes: nodesOf(job), ...(explanation ? { explanation } : {}) };
  }

  /** Where a job goes: the hook, govloop's placement, or the kube-scheduler. */
  private async decide(spec: JobSpec): Promise<PlaceResult> {
    if (this.opts.place) return this.opts.place(spec);
    if (this.opts.placement === 'govloop') return this.placeByGovloop(spec);
    return { kind: 'any' };
  }

  /**
   * govloop's placement (governance/placement.ts `place()`) over the Nodes' topology and what the
   * govloop Jobs and other pods hold now; `{kind: 'any'}` (the kube-scheduler chooses) when the
   * Nodes carry no GPU-type label or no node advertises the MIG profile asked for.
   */
  async placeByGovloop(spec: GpuAsk): Promise<PlaceResult> {
    const view = await this.view();
    const { decision, note, stateNotes } = decidePlacement(view.reading, view.held, spec, this.cluster);
    if (note) this.note(`govloop placement: the kube-scheduler places ${spec.gpus} ${spec.gpuType} (${spec.sharing}): ${note}`);
    for (const n of [...view.reading.notes, ...stateNotes]) this.note(`govloop placement: ${n}`);
    return decision;
  }

  private note(text: string): void {
    const now = Date.now();
    const last = this.notesSaid.get(text);
    if (last !== undefined && now - last < 600_000) return;
    this.notesSaid.set(text, now);
    if (this.notesSaid.size > 500) this.notesSaid.delete(this.notesSaid.keys().next().value!);
    this.opts.onPlacementNote?.(text);
  }

  /**
   * Places a preempted Job again: the new placement must give the same pods (Kubernetes keeps a
   * Job's pod count and resources), else the task waits; the node affinity is rewritten when it
   * changed (after resetting `status.startTime`, which Kubernetes requires for it) and the Job
   * takes its nodes again.
   */
  private async placeAgain(spec: JobSpec, placement: Placement, want: V1Job): Promise<{ ok: true; job: V1Job } | { ok: false; reason: Reason }> {
    const attempts = this.opts.conflictRetries ?? 5;
    for (let attempt = 1; ; attempt++) {
      const job = await this.read(spec.name, 'read job to place it again');
      if (!job)
        throw ApplicationFailure.create({
          type: KubernetesErrorType.Api,
          message: `kubernetes: place job ${spec.name} again: not found in namespace ${this.namespace}`,
        });
      if (!needsPlacement(job)) return { ok: true, job };
      const had = podShape(job);
      const gets = podShape(want);
      if (canonical(had) !== canonical(gets)) {
        return {
          ok: false,
          reason: reason(
            ReasonCode.GpuCapacityBusy,
            `job ${spec.name} runs ${had.pods} pod(s) with ${canonical(had.limits)} each; the placement now would give ${gets.pods} pod(s) with ${canonical(gets.limits)}, and a Job's pods cannot change: waiting until that shape fits`,
            null,
            spec.gpus,
            `cluster/${this.cluster}`,
          ),
        };
      }
      const affinity = want.spec?.template.spec?.affinity ?? null;
      const changed = canonical(job.spec?.template.spec?.affinity ?? null) !== canonical(affinity);
      if (changed && job.status?.startTime) {
        await this.resetStartTime(spec.name);
        continue; // read again: the status write changed the resourceVersion
      }
      const annotations: Record<string, string | null> = {
        [Annotation.nodes]: placement.kind === 'nodes' ? placement.nodes.join(',') : null,
        [Annotation.preemptedAt]: null,
      };
      const body = {
        metadata: { annotations, resourceVersion: job.metadata?.resourceVersion },
        ...(changed ? { spec: { template: { spec: { affinity } } } } : {}),
      };
      try {
        const patched = await this.jobs.patchNamespacedJob({ name: spec.name, namespace: this.namespace, body, fieldManager: this.fieldManager }, mergePatch);
        return { ok: true, job: patched };
      } catch (err) {
        if (apiStatusCode(err) === 409 && attempt < attempts) continue;
        throw kubernetesFailure(`place job ${spec.name} again in namespace ${this.namespace}`, err);
      }
    }
  }

  /**
   * The headless Service of a multi-pod gang (torchrun rendezvous), owned by the Job. Idempotent:
   * an existing one is kept, and adopted by this Job if an earlier Job of the same name owned it.
   */
  private async ensureService(job: V1Job): Promise<void> {
    if (!isGang(job)) return;
    const name = job.metadata!.name!;
    const body = gangServiceManifest(job, {
      namespace: this.namespace,
      ...(this.opts.rendezvousPort !== undefined ? { rendezvousPort: this.opts.rendezvousPort } : {}),
    });
    const what = `create service ${name} in namespace ${this.namespace}`;
    const need = 'create/get/patch/delete on services in this namespace';
    try {
      await this.core.createNamespacedService({ namespace: this.namespace, body, fieldManager: this.fieldManager });
      return;
    } catch (err) {
      if (apiStatusCode(err) !== 409) throw kubernetesFailure(what, err, need);
    }
    let existing: V1Service;
    try {
      existing = await this.core.readNamespacedService({ name, namespace: this.namespace });
    } catch (err) {
      throw kubernetesFailure(`read existing service ${name} in namespace ${this.namespace}`, err, need);
    }
    const owner = existing.metadata?.annotations?.[Annotation.taskId];
    if (existing.metadata?.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY || owner !== taskIdOf(job)) {
      throw ApplicationFailure.create({
        type: KubernetesErrorType.NameTaken,
        nonRetryable: true,
        message: `kubernetes: service ${name} in namespace ${this.namespace} is not the rendezvous Service of task ${taskIdOf(job)} (${owner ? `task ${owner}` : "not govloop's"}); delete it or rename`,
      });
    }
    if (existing.metadata?.ownerReferences?.some((r) => r.uid === job.metadata?.uid)) return;
    try {
      await this.core.patchNamespacedService(
        {
          name,
          namespace: this.namespace,
          body: { metadata: { ownerReferences: body.metadata!.ownerReferences, resourceVersion: existing.metadata?.resourceVersion } },
          fieldManager: this.fieldManager,
        },
        mergePatch,
      );
    } catch (err) {
      throw kubernetesFailure(`adopt service ${name} in namespace ${this.namespace}`, err, need);
    }
  }

  /**
   * Unsuspends a suspended Job and opens a run segment. A running, finished or deleting Job is left
   * alone. With `limit`, the same patch sets `spec.activeDeadlineSeconds` to the limit in whole
   * seconds (rounded down): the Job controller fails the Job (reason DeadlineExceeded) once it has
   * been active that long since it resumed, deleting its pods. The deadline counts from
   * `status.startTime`, which the controller sets when it syncs the resumed Job; but that sync
   * checks the deadline against the *old* startTime first (Kubernetes 1.34 keeps it over a
   * suspension), so a Job that ran before would fail at once: the backend clears `status.startTime`
   * first (allowed while the Job is suspended; Kueue does the same on stop). A second resume after
   * a suspend sets the new limit the same way.
   *
   * Under 1 s left: the Job is not unsuspended (it must not run at all, and Kubernetes needs a
   * deadline of at least 1 s); `govloop.io/run-limit-exhausted` records it and `status()` reads
   * Failed with `deadlineExceeded`. Without a limit, a deadline left from an earlier resume is
   * removed: it was computed for that run segment, and would stop this one at a limit nobody set.
   */
  async resume(name: string, limit?: RunLimit): Promise<void> {
    let deadline: number | undefined;
    try {
      deadline = activeDeadlineFor(limit);
    } catch (err) {
      throw ApplicationFailure.create({
        type: KubernetesErrorType.Invalid,
        nonRetryable: true,
        message: `kubernetes: resume job ${name}: ${(err as Error).message}`,
      });
    }
    await this.readModifyWrite(
      name,
      'resume',
      (job) => {
        const reading = jobPhase(job);
        if (reading.phase !== 'Suspended' && !reading.notResumed) return null;
        const a = job.metadata?.annotations ?? {};
        if (deadline === 0) {
          const left = String(Math.round(limit!.maxRunSeconds * 1000) / 1000);
          return a[Annotation.runLimitExhausted] === left ? null : { metadata: { annotations: { [Annotation.runLimitExhausted]: left } } };
        }
        const annotations: Record<string, string | null> = { [Annotation.resumedAt]: this.clock().toISOString() };
        if (a[Annotation.runLimitExhausted] !== undefined) annotations[Annotation.runLimitExhausted] = null;
        const spec: JobSpecPatch = { suspend: false };
        if (deadline !== undefined) spec.activeDeadlineSeconds = deadline;
        else if (job.spec?.activeDeadlineSeconds != null) spec.activeDeadlineSeconds = null;
        return { metadata: { annotations }, spec };
      },
      // A deadline counts from status.startTime: clear the one left from an earlier run first.
      async (job) => {
        if (deadline === undefined || deadline === 0 || !job.status?.startTime || !job.spec?.suspend) return false;
        const reading = jobPhase(job);
        if (reading.phase !== 'Suspended' && !reading.notResumed) return false;
        await this.resetStartTime(name);
        return true;
      },
    );
  }

  /** Clears `status.startTime` of a suspended Job through the status subresource. */
  private async resetStartTime(name: string): Promise<void> {
    try {
      await this.jobs.patchNamespacedJobStatus(
        { name, namespace: this.namespace, body: { status: { startTime: null } }, fieldManager: this.fieldManager },
        mergePatch,
      );
    } catch (err) {
      throw kubernetesFailure(`reset status.startTime of job ${name} in namespace ${this.namespace}`, err, 'patch on jobs.batch/status in this namespace');
    }
  }

  /**
   * Preemption: suspends a running Job (the Job controller deletes its pods; the Job and its
   * accounting stay). The open run segment is folded into the settled seconds; with a checkpoint
   * reported, progress goes back to it and the work after it counts as lost; the Job gives up its
   * nodes until it is placed again (`create`).
   */
  async suspend(name: string): Promise<void> {
    await this.readModifyWrite(name, 'suspend', (job) => {
      if (jobPhase(job).phase !== 'Running') return null;
      return { metadata: { annotations: suspendAnnotations(job, this.clock()) }, spec: { suspend: true } };
    });
  }

  /**
   * The preemption checkpoint signal: stamps `govloop.io/checkpoint-requested-at` on the running
   * Job and on each of its pods that is not finished (they see it in
   * /etc/govloop/podinfo/annotations). The trainer saves and reports `govloop.io/checkpoint-seconds`
   * on the Job. A Job that is not running is left alone.
   */
  async checkpoint(name: string): Promise<void> {
    const job = await this.read(name, 'read job to checkpoint');
    if (!job || jobPhase(job).phase !== 'Running') return;
    const stamp = { metadata: { annotations: { [Annotation.checkpointRequestedAt]: this.clock().toISOString() } } };
    try {
      await this.jobs.patchNamespacedJob({ name, namespace: this.namespace, body: stamp, fieldManager: this.fieldManager }, mergePatch);
    } catch (err) {
      if (apiStatusCode(err) === 404) return;
      throw kubernetesFailure(`checkpoint job ${name} in namespace ${this.namespace}`, err);
    }
    const need = 'list/patch on pods in this namespace';
    let pods: V1Pod[];
    try {
      pods = (await this.core.listNamespacedPod({ namespace: this.namespace, labelSelector: `${LABEL_JOB_NAME}=${name}` })).items;
    } catch (err) {
      throw kubernetesFailure(`list pods of job ${name} in namespace ${this.namespace}`, err, need);
    }
    for (const pod of pods) {
      const phase = pod.status?.phase;
      if (phase === 'Succeeded' || phase === 'Failed' || pod.metadata?.deletionTimestamp || !pod.metadata?.name) continue;
      try {
        await this.core.patchNamespacedPod({ name: pod.metadata.name, namespace: this.namespace, body: stamp, fieldManager: this.fieldManager }, mergePatch);
      } catch (err) {
        if (apiStatusCode(err) === 404) continue; // gone in between
        throw kubernetesFailure(`checkpoint pod ${pod.metadata.name} of job ${name} in namespace ${this.namespace}`, err, need);
      }
    }
  }

  /**
   * GPU nodes of a type (Nodes labelled with it, cordoned and NotReady ones left out) with the GPUs
   * in use on each (held by govloop Jobs that hold their nodes, by their annotations, or by other
   * pods, by their GPU limits; a GPU with a share on it is in use, as the simulated cluster counts),
   * and the running govloop Jobs of the type with their GPUs and the work suspending each would
   * lose (all of it when it never reported a checkpoint). With `request` and govloop placement, `fits`
   * answers whether the request could be placed once some tasks' Jobs are gone.
   */
  async capacity(gpuType: string, request?: GpuAsk): Promise<ClusterCapacity> {
    const view = await this.view();
    const now = this.clock();
    const used = usedGpus(view.reading, view.held);
    const anyType = this.gpuTypeLabel === null;
    const nodes = view.reading.nodes.filter((n) => anyType || n.gpuType === gpuType).map((n) => ({ name: n.name, gpus: n.gpus, used: used.get(n.name) ?? 0 }));
    const podNode = new Map<string, string>();
    for (const p of view.pods) {
      const job = p.metadata?.labels?.[LABEL_JOB_NAME];
      if (job && p.spec?.nodeName && p.metadata?.namespace === this.namespace && !podNode.has(job)) podNode.set(job, p.spec.nodeName);
    }
    const jobs = view.jobs
      .filter((j) => (anyType || this.gpuTypeOf(j) === gpuType) && jobPhase(j).phase === 'Running' && taskIdOf(j) !== null)
      .map((j) => {
        const acc = jobAccounting(j, now);
        return {
          taskId: taskIdOf(j)!,
          node: nodesOf(j)[0] ?? podNode.get(j.metadata?.name ?? '') ?? null,
          gpus: Number(j.metadata?.annotations?.[Annotation.gpus] ?? 0) || 0,
          lostSecondsIfSuspended: Math.max(0, acc.progressSeconds - (acc.checkpointSeconds ?? 0)),
          ...sinceResumed(j, now),
        };
      });
    const cap: ClusterCapacity = { nodes, jobs };
    if (request && !this.opts.place && this.opts.placement === 'govloop' && view.reading.index !== null) {
      const { reading, held } = view;
      const cluster = this.cluster;
      cap.fits = (freed) => {
        const gone = new Set(freed);
        return (
          decidePlacement(
            reading,
            held.filter((h) => h.taskId === null || !gone.has(h.taskId)),
            request,
            cluster,
          ).decision.kind !== 'none'
        );
      };
    }
    return cap;
  }

  /** The GPU type of a govloop Job: its annotation, or (Jobs from before it) its node affinity. */
  private gpuTypeOf(job: V1Job): string | null {
    const a = job.metadata?.annotations?.[Annotation.gpuType];
    if (a) return a;
    const key = this.gpuTypeLabel;
    const terms = job.spec?.template.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms ?? [];
    for (const t of terms) for (const e of t.matchExpressions ?? []) if (e.key === key && e.values?.length) return e.values[0]!;
    return null;
  }

  /** Nodes, govloop Jobs and active pods, read together, as the placement sees them. */
  private async view(): Promise<{ reading: TopologyReading; held: HeldGpus[]; jobs: V1Job[]; pods: V1Pod[] }> {
    const typeLabel = this.gpuTypeLabel;
    const others = this.opts.countOtherPods ?? true;
    // All three at once; a failure is reported in this order, whichever came back first.
    const [n, j, p] = await Promise.allSettled([
      this.core.listNode(typeLabel ? { labelSelector: typeLabel } : {}),
      this.jobs.listNamespacedJob({ namespace: this.namespace, labelSelector: LABEL_TASK }),
      others
        ? this.core.listPodForAllNamespaces({ fieldSelector: ACTIVE_PODS })
        : this.core.listNamespacedPod({ namespace: this.namespace, labelSelector: `${LABEL_MANAGED_BY}=${MANAGED_BY}`, fieldSelector: ACTIVE_PODS }),
    ]);
    if (n.status === 'rejected')
      throw kubernetesFailure(`list nodes${typeLabel ? ` labelled ${typeLabel}` : ''}`, n.reason, 'get/list on nodes (a ClusterRole)');
    if (j.status === 'rejected') throw kubernetesFailure(`list jobs in namespace ${this.namespace}`, j.reason, 'list on jobs.batch in this namespace');
    if (p.status === 'rejected') {
      throw kubernetesFailure(
        others ? 'list pods in all namespaces' : `list pods in namespace ${this.namespace}`,
        p.reason,
        others ? 'list on pods in all namespaces (a ClusterRole), or countOtherPods: false' : 'list on pods in this namespace',
      );
    }
    const nodes: V1Node[] = n.value.items;
    const jobs = j.value.items;
    const pods = p.value.items;
    const reading = readTopology(nodes, this.cluster, { ...this.opts.nodeLabels, gpuTypeLabel: typeLabel });
    const counted = new Set(jobs.filter(holdsNodes).map((j) => `${j.metadata?.namespace ?? this.namespace}/${j.metadata?.name ?? ''}`));
    const held = [
      ...heldByJobs(jobs),
      ...heldByPods(pods, counted, reading.nodes, { ...(this.opts.sharedGpuResource ? { sharedGpuResource: this.opts.sharedGpuResource } : {}) }),
    ];
    return { reading, held, jobs, pods };
  }

  /**
   * The Job as govloop sees it. A Job that is gone (404) reads as Deleted, with the usage this
   * process saw last if it deleted it, so the workflow ends the task instead of retrying forever.
   */
  async status(name: string): Promise<JobStatus | null> {
    const job = await this.read(name, 'read job');
    if (!job) {
      const last = this.tombstones.get(name);
      return (
        last ?? {
          name,
          phase: 'Deleted',
          nodes: [],
          progressSeconds: 0,
          gpuSeconds: 0,
          tokens: 0,
          message: `job ${name} not found in namespace ${this.namespace}`,
        }
      );
    }
    return this.statusOf(job);
  }

  /**
   * Deletes the Job and its pods (foreground propagation), then a gang's headless Service. The
   * Service is owned by the Job, so the garbage collector would delete it too; deleting it here
   * does not wait for the collector (and works where none runs). A Job already gone is success
   * (its Service, if one is left, is the collector's).
   */
  async delete(name: string): Promise<void> {
    const job = await this.read(name, 'read job before delete');
    if (!job) return;
    this.remember(name, { ...this.statusOf(job), phase: 'Deleted', message: `job ${name} deleted` });
    try {
      await this.jobs.deleteNamespacedJob({ name, namespace: this.namespace, propagationPolicy: 'Foreground' });
    } catch (err) {
      if (apiStatusCode(err) !== 404) throw kubernetesFailure(`delete job ${name} in namespace ${this.namespace}`, err);
    }
    if (!isGang(job)) return;
    try {
      await this.core.deleteNamespacedService({ name, namespace: this.namespace });
    } catch (err) {
      if (apiStatusCode(err) !== 404)
        throw kubernetesFailure(`delete service ${name} in namespace ${this.namespace}`, err, 'delete on services in this namespace');
    }
  }
  /**
   * Watches the namespace's govloop Jobs and reports each change as a `JobEvent`. A dispatch worker
   * turns these into signals to the task workflows (`job` → workflow id = task id); the workflow's
   * `observeJob` poll stays the source of truth for metering, so a missed event only delays it.
   * Reconnects after the server closes the stream (from the last resourceVersion; from now after
   * 410 Gone). Needs a KubeConfig (not an injected API). Returns `stop()`.
   */
  watchJobs(onEvent: (e: JobEvent) => void, onError: (err: unknown) => void = () => {}, reconnectMillis = 1000): { stop: () => void } {
    if (!this.kubeConfig) throw new Error('watchJobs needs a KubeConfig');
    const watch = new Watch(this.kubeConfig);
    let stopped = false;
    let controller: AbortController | null = null;
    let resourceVersion: string | undefined;
    let timer: NodeJS.Timeout | null = null;
    const start = () => {
      if (stopped) return;
      const path = `/apis/batch/v1/namespaces/${encodeURIComponent(this.namespace)}/jobs`;
      watch
        .watch(
          path,
          { labelSelector: LABEL_TASK, allowWatchBookmarks: true, ...(resourceVersion ? { resourceVersion } : {}) },
          (type: string, obj: V1Job & { code?: number }) => {
            if (type === 'ERROR') {
              if (obj.code === 410) resourceVersion = undefined;
              return;
            }
            if (obj?.metadata?.resourceVersion) resourceVersion = obj.metadata.resourceVersion;
            if (type !== 'ADDED' && type !== 'MODIFIED' && type !== 'DELETED') return;
            const taskId = taskIdOf(obj);
            if (!taskId || !obj.metadata?.name) return;
            const r = type === 'DELETED' ? { phase: 'Deleted' as const, message: 'job deleted' } : jobPhase(obj);
            onEvent({ type, taskId, job: obj.metadata.name, phase: r.phase, message: r.message });
          },
          (err: unknown) => {
            controller = null;
            if (stopped) return;
            if (err && (err as { name?: string }).name !== 'AbortError') onError(err);
            timer = setTimeout(start, reconnectMillis);
          },
        )
        .then((c) => {
          controller = c;
          if (stopped) c.abort();
        })
        .catch((err: unknown) => {
          if (stopped) return;
          onError(err);
          timer = setTimeout(start, reconnectMillis);
        });
    };
    start();
    return {
      stop: () => {
        stopped = true;
        if (timer) clearTimeout(timer);
        controller?.abort();
      },
    };
  }

  private statusOf(job: V1Job): JobStatus {
    const name = job.metadata?.name ?? '';
    const { phase, message, deadlineExceeded } = jobPhase(job);
    const a = job.metadata?.annotations ?? {};
    const acc = jobAccounting(job, this.clock());
    const gpus = Number(a[Annotation.gpus] ?? 0) || 0;
    const st: JobStatus = {
      name,
      phase,
      nodes: nodesOf(job),
      progressSeconds: acc.progressSeconds,
      // Known only once the trainer reported a checkpoint (the checkpoint protocol); absent otherwise.
      ...(acc.checkpointSeconds !== null ? { checkpointSeconds: acc.checkpointSeconds } : {}),
      ...(acc.lostSeconds !== null ? { lostSeconds: acc.lostSeconds } : {}),
      gpuSeconds: acc.ranSeconds * gpus,
      tokens: Math.max(0, Math.floor(Number(a[Annotation.tokens] ?? 0) || 0)),
      message,
      ...(deadlineExceeded ? { deadlineExceeded: true } : {}),
    };
    if (phase === 'Deleted') this.remember(name, st);
    return st;
  }

  private remember(name: string, st: JobStatus): void {
    this.tombstones.delete(name);
    this.tombstones.set(name, st);
    if (this.tombstones.size > 1000) this.tombstones.delete(this.tombstones.keys().next().value!);
  }

  /** Reads a Job; null when it does not exist. */
  private async read(name: string, what: string): Promise<V1Job | null> {
    try {
      return await this.jobs.readNamespacedJob({ name, namespace: this.namespace });
    } catch (err) {
      if (apiStatusCode(err) === 404) return null;
      throw kubernetesFailure(`${what} ${name} in namespace ${this.namespace}`, err);
    }
  }

  /**
   * Reads the Job, asks `change` for a merge patch (null: nothing to do), and sends it with the
   * resourceVersion it read; 409 Conflict means someone else wrote in between, so it reads again.
   * `prepare`, when given, runs on each read first; true: it wrote something (the status), read again.
   */
  private async readModifyWrite(
    name: string,
    verb: string,
    change: (job: V1Job) => { metadata: { annotations: Record<string, string | null> }; spec?: JobSpecPatch } | null,
    prepare?: (job: V1Job) => Promise<boolean>,
  ): Promise<void> {
    const attempts = this.opts.conflictRetries ?? 5;
    for (let attempt = 1; ; attempt++) {
      const job = await this.read(name, `read job to ${verb}`);
      if (!job)
        throw ApplicationFailure.create({
          type: KubernetesErrorType.Api,
          message: `kubernetes: ${verb} job ${name}: not found in namespace ${this.namespace}`,
        });
      if (prepare && (await prepare(job))) {
        if (attempt < attempts) continue;
        throw ApplicationFailure.create({
          type: KubernetesErrorType.Api,
          message: `kubernetes: ${verb} job ${name} in namespace ${this.namespace}: its status kept changing (${attempts} attempts)`,
        });
      }
      const patch = change(job);
      if (patch === null) return;
      const body = { ...patch, metadata: { ...patch.metadata, resourceVersion: job.metadata?.resourceVersion } };
      try {
        await this.jobs.patchNamespacedJob({ name, namespace: this.namespace, body, fieldManager: this.fieldManager }, mergePatch);
        return;
      } catch (err) {
        if (apiStatusCode(err) === 409 && attempt < attempts) continue;
        throw kubernetesFailure(`${verb} job ${name} in namespace ${this.namespace}`, err);
      }
    }
  }
}

/** The part of a Job's spec `resume` and `suspend` merge-patch (null removes the field). */
interface JobSpecPatch {
  suspend: boolean;
  activeDeadlineSeconds?: number | null;
}

/** A Job preempted earlier: suspended, its nodes given up, waiting to be placed again. */
function needsPlacement(job: V1Job): boolean {
  return jobPhase(job).phase === 'Suspended' && !!job.metadata?.annotations?.[Annotation.preemptedAt] && nodesOf(job).length === 0;
}

/** What Kubernetes does not let a Job change: how many pods, and each pod's resources. */
function podShape(job: V1Job): { pods: number; indexed: boolean; limits: Record<string, string> } {
  return {
    pods: job.spec?.completions ?? 1,
    indexed: job.spec?.completionMode === 'Indexed',
    limits: Object.fromEntries(Object.entries(job.spec?.template.spec?.containers[0]?.resources?.limits ?? {}).map(([k, v]) => [k, String(v)])),
  };
}

/** JSON with sorted keys, to compare objects the API server may have re-ordered. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
      : x,
  );
}
