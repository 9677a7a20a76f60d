/** The Kubernetes API calls the backend makes, and how their failures become Temporal ApplicationFailures (cluster/kubernetes/backend.ts). */
import { ApplicationFailure } from '@temporalio/common';
import {
  ApiException,
  PatchStrategy,
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
  type V1NodeList,
  type V1Pod,
  type V1PodList,
  type V1Service,
  type V1Status,
} from '@kubernetes/client-node';
import { ClusterErrorType } from '../backend';
import type { LeasesApi } from './lease';
import type { JobSpecPatch } from './job-shape';

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

export const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** What each part of the backend talks to the API server with: the clients, the namespace, and how it writes. */
export interface KubeClient {
  readonly jobs: JobsApi;
  readonly core: CoreApi;
  readonly namespace: string;
  /** `fieldManager` on every write (`KubernetesClusterOptions.fieldManager`). */
  readonly fieldManager: string;
  /** Attempts of a read-modify-write that keeps meeting 409 Conflict (`KubernetesClusterOptions.conflictRetries`). */
  readonly conflictRetries: number;
}

/** Reads a Job; null when it does not exist. */
export async function readJob(c: KubeClient, name: string, what: string): Promise<V1Job | null> {
  try {
    return await c.jobs.readNamespacedJob({ name, namespace: c.namespace });
  } catch (err) {
    if (apiStatusCode(err) === 404) return null;
    throw kubernetesFailure(`${what} ${name} in namespace ${c.namespace}`, err);
  }
}

/**
 * Reads the Job, asks `change` for a merge patch (null: nothing to do), and sends it with the
 * resourceVersion it read; 409 Conflict means someone else wrote in between, so it reads again.
 * `prepare`, when given, runs on each read first; true: it wrote something (the status), read again.
 */
export async function readModifyWrite(
  c: KubeClient,
  name: string,
  verb: string,
  change: (job: V1Job) => { metadata: { annotations: Record<string, string | null> }; spec?: JobSpecPatch } | null,
  prepare?: (job: V1Job) => Promise<boolean>,
): Promise<void> {
  const attempts = c.conflictRetries;
  for (let attempt = 1; ; attempt++) {
    const job = await readJob(c, name, `read job to ${verb}`);
    if (!job)
      throw ApplicationFailure.create({
        type: KubernetesErrorType.Api,
        message: `kubernetes: ${verb} job ${name}: not found in namespace ${c.namespace}`,
      });
    if (prepare && (await prepare(job))) {
      if (attempt < attempts) continue;
      throw ApplicationFailure.create({
        type: KubernetesErrorType.Api,
        message: `kubernetes: ${verb} job ${name} in namespace ${c.namespace}: its status kept changing (${attempts} attempts)`,
      });
    }
    const patch = change(job);
    if (patch === null) return;
    const body = { ...patch, metadata: { ...patch.metadata, resourceVersion: job.metadata?.resourceVersion } };
    try {
      await c.jobs.patchNamespacedJob({ name, namespace: c.namespace, body, fieldManager: c.fieldManager }, mergePatch);
      return;
    } catch (err) {
      if (apiStatusCode(err) === 409 && attempt < attempts) continue;
      throw kubernetesFailure(`${verb} job ${name} in namespace ${c.namespace}`, err);
    }
  }
}
