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
 */
import { ApplicationFailure } from '@temporalio/common';
import {
  ApiException,
  BatchV1Api,
  KubeConfig,
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type BatchV1ApiCreateNamespacedJobRequest,
  type BatchV1ApiDeleteNamespacedJobRequest,
  type BatchV1ApiPatchNamespacedJobRequest,
  type BatchV1ApiReadNamespacedJobRequest,
  type ConfigurationOptions,
  type V1Job,
  type V1Status,
} from '@kubernetes/client-node';
import type { ClusterBackend, CreateResult, JobPhase, JobSpec, JobStatus } from '../backend';
import type { Reason } from '../../governance/reasons';
import { Annotation, LABEL_TASK, type ManifestOptions, type Placement, jobManifest, jobPhase, runSeconds, taskIdOf } from './manifests';

/** The four BatchV1Api calls the backend makes (client-node's object-parameter API); tests inject their own. */
export interface JobsApi {
  createNamespacedJob(param: BatchV1ApiCreateNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Job>;
  readNamespacedJob(param: BatchV1ApiReadNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Job>;
  patchNamespacedJob(param: BatchV1ApiPatchNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Job>;
  deleteNamespacedJob(param: BatchV1ApiDeleteNamespacedJobRequest, options?: ConfigurationOptions): Promise<V1Status>;
}

/** What a placement hook answers: where the job goes, or why it cannot go now (the task queues). */
export type PlaceResult = Placement | { kind: 'none'; reason: Reason };

export interface KubernetesClusterOptions extends Omit<ManifestOptions, 'namespace' | 'cluster'> {
  /** govloop's name for the cluster; the dispatch task queue is `govloop-cluster-<cluster>`. */
  cluster: string;
  namespace: string;
  /**
   * govloop's placement for a job (nodes or a topology domain). Default: `{ kind: 'any' }`, the
   * kube-scheduler chooses (and Kueue, if installed, may hold the Job further).
   */
  place?: (spec: JobSpec) => PlaceResult | Promise<PlaceResult>;
  clock?: () => Date;
  /** `fieldManager` on every write. Default `govloop`. */
  fieldManager?: string;
  /** Attempts of a read-modify-write that keeps meeting 409 Conflict. Default 5. */
  conflictRetries?: number;
}

/** Error types (Temporal `ApplicationFailure.type`) the backend throws. */
export const KubernetesErrorType = {
  /** The API server refused the request as malformed (400, 422): retrying cannot help. */
  Invalid: 'KubernetesInvalid',
  /** Any other API failure (401, 403, 429, 5xx, network): retried, an operator may need to act. */
  Api: 'KubernetesApiError',
  /** A Job with the task's deterministic name exists but belongs to another task. */
  NameTaken: 'KubernetesJobNameTaken',
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
export function kubernetesFailure(what: string, err: unknown): ApplicationFailure {
  const code = apiStatusCode(err);
  if (code === null) {
    return ApplicationFailure.create({ type: KubernetesErrorType.Api, message: `kubernetes: ${what}: ${(err as Error)?.message ?? String(err)}`, cause: err instanceof Error ? err : undefined });
  }
  const s = statusBody(err);
  const said = [s?.reason, s?.message].filter(Boolean).join(': ') || (code === 401 ? 'Unauthorized' : 'no Status in the answer');
  const hint = code === 401 ? ' (check the kubeconfig credentials)' : code === 403 ? ' (the service account needs create/get/patch/delete on jobs.batch in this namespace)' : '';
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

export class KubernetesCluster implements ClusterBackend {
  readonly cluster: string;
  readonly namespace: string;
  private readonly api: JobsApi;
  private readonly kubeConfig: KubeConfig | null;
  private readonly clock: () => Date;
  /** Last status of jobs this process deleted, answered once the Job is gone (404). */
  private readonly tombstones = new Map<string, JobStatus>();

  /** `source`: a KubeConfig (e.g. `kc.loadFromDefault()`: $KUBECONFIG, ~/.kube/config, or in-cluster), or an injected API. */
  constructor(
    source: KubeConfig | JobsApi,
    private readonly opts: KubernetesClusterOptions,
  ) {
    this.cluster = opts.cluster;
    this.namespace = opts.namespace;
    this.kubeConfig = source instanceof KubeConfig ? source : null;
    this.api = source instanceof KubeConfig ? source.makeApiClient(BatchV1Api) : source;
    this.clock = opts.clock ?? (() => new Date());
  }

  private manifestOptions(): ManifestOptions {
    const { place: _p, clock: _c, fieldManager: _f, conflictRetries: _r, ...rest } = this.opts;
    return { ...rest, namespace: this.namespace, cluster: this.cluster };
  }

  private get fieldManager(): string {
    return this.opts.fieldManager ?? 'govloop';
  }

  /** Creates the Job suspended. Idempotent: 409 AlreadyExists reads the existing Job instead. */
  async create(spec: JobSpec): Promise<CreateResult> {
    const placed = this.opts.place ? await this.opts.place(spec) : ({ kind: 'any' } as const);
    if (placed.kind === 'none') return { ok: false, reason: placed.reason };
    const body = jobManifest(spec, placed, this.manifestOptions());
    let job: V1Job;
    try {
      job = await this.api.createNamespacedJob({ namespace: this.namespace, body, fieldManager: this.fieldManager });
    } catch (err) {
      if (apiStatusCode(err) !== 409) throw kubernetesFailure(`create job ${spec.name} in namespace ${this.namespace}`, err);
      const existing = await this.read(spec.name, 'read existing job');
      // Created and deleted in between: the next attempt creates it again.
      if (!existing) throw kubernetesFailure(`create job ${spec.name} in namespace ${this.namespace}`, err);
      job = existing;
      const owner = taskIdOf(job);
      if (owner !== spec.taskId) {
        throw ApplicationFailure.create({
          type: KubernetesErrorType.NameTaken,
          nonRetryable: true,
          message: `kubernetes: job ${spec.name} in namespace ${this.namespace} belongs to task ${owner ?? '(no govloop annotation)'}, not ${spec.taskId}`,
        });
      }
    }
    return { ok: true, nodes: nodesOf(job) };
  }

  /** Unsuspends a suspended Job and opens a run segment. A running, finished or deleting Job is left alone. */
  async resume(name: string): Promise<void> {
    await this.readModifyWrite(name, 'resume', (job) => {
      if (jobPhase(job).phase !== 'Suspended') return null;
      return { metadata: { annotations: { [Annotation.resumedAt]: this.clock().toISOString() } }, spec: { suspend: false } };
    });
  }

  /**
   * Preemption: suspends a running Job (the Job controller deletes its pods; the Job, its progress
   * and its accounting stay) and folds the open run segment into the settled seconds.
   */
  async suspend(name: string): Promise<void> {
    await this.readModifyWrite(name, 'suspend', (job) => {
      if (jobPhase(job).phase !== 'Running') return null;
      const seconds = runSeconds(job, this.clock());
      return { metadata: { annotations: { [Annotation.settledSeconds]: String(seconds), [Annotation.resumedAt]: null } }, spec: { suspend: true } };
    });
  }

  /**
   * The Job as govloop sees it. A Job that is gone (404) reads as Deleted, with the usage this
   * process saw last if it deleted it, so the workflow ends the task instead of retrying forever.
   */
  async status(name: string): Promise<JobStatus | null> {
    const job = await this.read(name, 'read job');
    if (!job) {
      const last = this.tombstones.get(name);
      return last ?? { name, phase: 'Deleted', nodes: [], progressSeconds: 0, gpuSeconds: 0, tokens: 0, message: `job ${name} not found in namespace ${this.namespace}` };
    }
    return this.statusOf(job);
  }

  /** Deletes the Job and its pods (foreground propagation). A Job already gone is success. */
  async delete(name: string): Promise<void> {
    const job = await this.read(name, 'read job before delete');
    if (!job) return;
    this.remember(name, { ...this.statusOf(job), phase: 'Deleted', message: `job ${name} deleted` });
    try {
      await this.api.deleteNamespacedJob({ name, namespace: this.namespace, propagationPolicy: 'Foreground' });
    } catch (err) {
      if (apiStatusCode(err) !== 404) throw kubernetesFailure(`delete job ${name} in namespace ${this.namespace}`, err);
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
    const { phase, message } = jobPhase(job);
    const a = job.metadata?.annotations ?? {};
    const seconds = runSeconds(job, this.clock());
    const gpus = Number(a[Annotation.gpus] ?? 0) || 0;
    const st: JobStatus = {
      name,
      phase,
      nodes: nodesOf(job),
      progressSeconds: seconds,
      gpuSeconds: seconds * gpus,
      tokens: Math.max(0, Math.floor(Number(a[Annotation.tokens] ?? 0) || 0)),
      message,
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
      return await this.api.readNamespacedJob({ name, namespace: this.namespace });
    } catch (err) {
      if (apiStatusCode(err) === 404) return null;
      throw kubernetesFailure(`${what} ${name} in namespace ${this.namespace}`, err);
    }
  }

  /**
   * Reads the Job, asks `change` for a merge patch (null: nothing to do), and sends it with the
   * resourceVersion it read; 409 Conflict means someone else wrote in between, so it reads again.
   */
  private async readModifyWrite(name: string, verb: string, change: (job: V1Job) => { metadata: { annotations: Record<string, string | null> }; spec: { suspend: boolean } } | null): Promise<void> {
    const attempts = this.opts.conflictRetries ?? 5;
    for (let attempt = 1; ; attempt++) {
      const job = await this.read(name, `read job to ${verb}`);
      if (!job) throw ApplicationFailure.create({ type: KubernetesErrorType.Api, message: `kubernetes: ${verb} job ${name}: not found in namespace ${this.namespace}` });
      const patch = change(job);
      if (patch === null) return;
      const body = { ...patch, metadata: { ...patch.metadata, resourceVersion: job.metadata?.resourceVersion } };
      try {
        await this.api.patchNamespacedJob({ name, namespace: this.namespace, body, fieldManager: this.fieldManager }, mergePatch);
        return;
      } catch (err) {
        if (apiStatusCode(err) === 409 && attempt < attempts) continue;
        throw kubernetesFailure(`${verb} job ${name} in namespace ${this.namespace}`, err);
      }
    }
  }
}

function nodesOf(job: V1Job): string[] {
  const v = job.metadata?.annotations?.[Annotation.nodes];
  return v ? v.split(',').filter(Boolean) : [];
}
