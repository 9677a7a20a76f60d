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
 *
 * The class holds the job lifecycle (create, place again, status, delete); its parts live beside it:
 * `./api.ts` (API calls, errors, read-modify-write), `./options.ts`, `./suspension.ts` (resume with
 * its deadline, checkpoint), `./capacity.ts` (the cluster view and capacity), `./gang-service.ts`,
 * `./watch.ts` and `./job-shape.ts`.
 */
import { ApplicationFailure } from '@temporalio/common';
import { BatchV1Api, CoordinationV1Api, CoreV1Api, KubeConfig, type V1Job } from '@kubernetes/client-node';
import type { ClusterBackend, JobStatus, ClusterCapacity, CreateResult, JobSpec, RunLimit } from '../backend';
import { type Reason, ReasonCode, reason } from '../../governance/reasons';
import {
  Annotation,
  type ManifestOptions,
  type Placement,
  isGang,
  jobAccounting,
  jobManifest,
  jobPhase,
  nodesOf,
  suspendAnnotations,
  taskIdOf,
} from './manifests';
import { PlacementLease } from './lease';
import { type GpuAsk, decidePlacement } from './placement';
import {
  type JobsApi,
  type CoreApi,
  type KubernetesApis,
  type KubeClient,
  KubernetesErrorType,
  apiStatusCode,
  kubernetesFailure,
  mergePatch,
  readJob,
  readModifyWrite,
} from './api';
import { type PlaceResult, type KubernetesClusterOptions, DEFAULT_STOP_MARGIN_SECONDS } from './options';
import { type JobEvent, watchNamespaceJobs } from './watch';
import { needsPlacement, podShape, canonical } from './job-shape';
import { ensureGangService } from './gang-service';
import { checkpointJob, resetStartTime, resumeJob } from './suspension';
import { type ClusterView, capacityOf, readClusterView } from './capacity';

export { type JobsApi, type CoreApi, type KubernetesApis, KubernetesErrorType, apiStatusCode, kubernetesFailure } from './api';
export { type PlaceResult, type KubernetesClusterOptions, DEFAULT_STOP_MARGIN_SECONDS } from './options';
export type { JobEvent } from './watch';

export class KubernetesCluster implements ClusterBackend {
  /** How late after its run limit a Job may still be metered: `opts.stopMarginSeconds`, default DEFAULT_STOP_MARGIN_SECONDS. */
  readonly stopMarginSeconds: number;
  readonly cluster: string;
  readonly namespace: string;
  readonly checkpointGraceMillis: number;
  private readonly jobs: JobsApi;
  private readonly core: CoreApi;
  /** The clients, namespace and write settings the parts in ./api.ts, ./suspension.ts, ./capacity.ts … work with. */
  private readonly client: KubeClient;
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
    this.client = {
      jobs: this.jobs,
      core: this.core,
      namespace: this.namespace,
      fieldManager: opts.fieldManager ?? 'govloop',
      conflictRetries: opts.conflictRetries ?? 5,
    };
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
    await ensureGangService(this.client, job, this.opts.rendezvousPort);
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
        await resetStartTime(this.client, spec.name);
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
    await resumeJob(this.client, this.clock, name, limit);
  }

  /**
   * Preemption: suspends a running Job (the Job controller deletes its pods; the Job and its
   * accounting stay). The open run segment is folded into the settled seconds; with a checkpoint
   * reported, progress goes back to it and the work after it counts as lost; the Job gives up its
   * nodes until it is placed again (`create`).
   */
  async suspend(name: string): Promise<void> {
    await readModifyWrite(this.client, name, 'suspend', (job) => {
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
    await checkpointJob(this.client, this.clock, name);
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
    const on = { namespace: this.namespace, cluster: this.cluster, opts: this.opts, gpuTypeLabel: this.gpuTypeLabel, now: this.clock() };
    return capacityOf(view, gpuType, request, on);
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
    return watchNamespaceJobs(this.kubeConfig, this.namespace, onEvent, onError, reconnectMillis);
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

  /** Nodes, govloop Jobs and active pods, read together, as the placement sees them (./capacity.ts). */
  private view(): Promise<ClusterView> {
    return readClusterView(this.client, this.cluster, this.opts, this.gpuTypeLabel);
  }

  /** Reads a Job; null when it does not exist. */
  private read(name: string, what: string): Promise<V1Job | null> {
    return readJob(this.client, name, what);
  }
}
