/**
 * The Kubernetes backend: manifests and phase mapping (pure, table-driven), then the backend's
 * calls through @kubernetes/client-node's real HTTP stack against a recorded API server
 * (./fake-apiserver.ts). The same lifecycle against a real kube-apiserver + etcd is in
 * ./kubernetes-apiserver.test.ts (skipped where those binaries are absent).
 */
import type { V1Job } from '@kubernetes/client-node';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { JobPhase, JobSpec } from '../../cluster/backend';
import { KubernetesCluster, KubernetesErrorType, type JobEvent } from '../../cluster/kubernetes/backend';
import { Annotation, type ManifestOptions, type Placement, jobManifest, jobPhase, labelValue, runSeconds } from '../../cluster/kubernetes/manifests';
import { FakeApiServer } from './fake-apiserver';
import { ManualClock, aJob, kubeConfigFor } from './support';

const NS = 'govloop';
const opts: ManifestOptions = { namespace: NS, cluster: 'gpu-east' };
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

const container = (job: V1Job) => job.spec!.template.spec!.containers[0]!;
const nodeTerms = (job: V1Job) => job.spec!.template.spec!.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms[0]?.matchExpressions ?? [];

describe('jobManifest', () => {
  const cases: {
    name: string;
    spec: JobSpec;
    placement: Placement;
    options?: Partial<ManifestOptions>;
    wantLimits: Record<string, string> | undefined;
    wantPods: number;
    wantIndexed: boolean;
    wantAffinity: { key: string; operator: string; values: string[] }[];
    wantAntiAffinity: boolean;
    wantEnv: Record<string, string>;
  }[] = [
    {
      name: 'exclusive 8 GPUs on one chosen node',
      spec: aJob().gpus(8).build(),
      placement: { kind: 'nodes', nodes: ['h100-03'] },
      wantLimits: { 'nvidia.com/gpu': '8' },
      wantPods: 1,
      wantIndexed: false,
      wantAffinity: [
        { key: 'kubernetes.io/hostname', operator: 'In', values: ['h100-03'] },
        { key: 'govloop.io/gpu-type', operator: 'In', values: ['H100'] },
      ],
      wantAntiAffinity: false,
      wantEnv: { NNODES: '1', GPUS_PER_NODE: '8' },
    },
    {
      name: 'MIG slice: one nvidia.com/mig-<profile>, anywhere',
      spec: aJob().gpus(1, 'mig:3g.40gb').build(),
      placement: { kind: 'any' },
      wantLimits: { 'nvidia.com/mig-3g.40gb': '1' },
      wantPods: 1,
      wantIndexed: false,
      wantAffinity: [{ key: 'govloop.io/gpu-type', operator: 'In', values: ['H100'] }],
      wantAntiAffinity: false,
      wantEnv: { NNODES: '1', GPUS_PER_NODE: '1' },
    },
    {
      name: 'MPS: a shared GPU on a node whose GPUs are shared by MPS',
      spec: aJob().gpus(1, 'mps').build(),
      placement: { kind: 'any' },
      wantLimits: { 'nvidia.com/gpu': '1' },
      wantPods: 1,
      wantIndexed: false,
      wantAffinity: [
        { key: 'govloop.io/gpu-type', operator: 'In', values: ['H100'] },
        { key: 'nvidia.com/gpu.sharing-strategy', operator: 'In', values: ['mps'] },
      ],
      wantAntiAffinity: false,
      wantEnv: { NNODES: '1', GPUS_PER_NODE: '1' },
    },
    {
      name: 'time-slicing with a renamed shared resource and no GPU-type label',
      spec: aJob().gpus(2, 'timeslice').build(),
      placement: { kind: 'any' },
      options: { sharedGpuResource: 'nvidia.com/gpu.shared', gpuTypeLabel: null },
      wantLimits: { 'nvidia.com/gpu.shared': '2' },
      wantPods: 1,
      wantIndexed: false,
      wantAffinity: [{ key: 'nvidia.com/gpu.sharing-strategy', operator: 'In', values: ['time-slicing'] }],
      wantAntiAffinity: false,
      wantEnv: { NNODES: '1', GPUS_PER_NODE: '2' },
    },
    {
      name: 'multi-node gang: 16 GPUs on two chosen nodes, one pod per node',
      spec: aJob().gpus(16).build(),
      placement: { kind: 'nodes', nodes: ['h100-04', 'h100-05'] },
      wantLimits: { 'nvidia.com/gpu': '8' },
      wantPods: 2,
      wantIndexed: true,
      wantAffinity: [
        { key: 'kubernetes.io/hostname', operator: 'In', values: ['h100-04', 'h100-05'] },
        { key: 'govloop.io/gpu-type', operator: 'In', values: ['H100'] },
      ],
      wantAntiAffinity: true,
      wantEnv: { NNODES: '2', GPUS_PER_NODE: '8' },
    },
    {
      name: 'gang inside one rack: 32 GPUs, 8 per node, any nodes of the domain',
      spec: aJob().gpus(32).build(),
      placement: { kind: 'domain', label: 'topology.govloop.io/rack', value: 'rack-1' },
      wantLimits: { 'nvidia.com/gpu': '8' },
      wantPods: 4,
      wantIndexed: true,
      wantAffinity: [
        { key: 'topology.govloop.io/rack', operator: 'In', values: ['rack-1'] },
        { key: 'govloop.io/gpu-type', operator: 'In', values: ['H100'] },
      ],
      wantAntiAffinity: true,
      wantEnv: { NNODES: '4', GPUS_PER_NODE: '8' },
    },
    {
      name: 'CPU-only job: no GPU resource, no GPU-type affinity',
      spec: aJob().gpus(0).build(),
      placement: { kind: 'any' },
      wantLimits: undefined,
      wantPods: 1,
      wantIndexed: false,
      wantAffinity: [],
      wantAntiAffinity: false,
      wantEnv: { NNODES: '1', GPUS_PER_NODE: '0' },
    },
  ];

  it.each(cases)('$name', (c) => {
    const job = jobManifest(c.spec, c.placement, { ...opts, ...c.options });
    expect(job.apiVersion).toBe('batch/v1');
    expect(job.kind).toBe('Job');
    expect(job.metadata!.name).toBe(c.spec.name);
    expect(job.metadata!.namespace).toBe(NS);
    expect(job.spec!.suspend).toBe(true);
    expect(job.spec!.backoffLimit).toBe(0);
    expect(job.spec!.completions).toBe(c.wantPods);
    expect(job.spec!.parallelism).toBe(c.wantPods);
    expect(job.spec!.completionMode).toBe(c.wantIndexed ? 'Indexed' : undefined);
    const pod = job.spec!.template.spec!;
    expect(pod.restartPolicy).toBe('Never');
    expect(pod.priorityClassName).toBe('govloop-normal');
    expect(container(job).image).toBe(c.spec.runtime.image);
    expect(container(job).command).toEqual(c.spec.runtime.command);
    expect(container(job).resources!.limits).toEqual(c.wantLimits);
    expect(nodeTerms(job)).toEqual(c.wantAffinity);
    expect(pod.affinity?.podAntiAffinity !== undefined).toBe(c.wantAntiAffinity);
    const env = Object.fromEntries(container(job).env!.map((e) => [e.name, e.value]));
    expect(env).toMatchObject({ ...c.wantEnv, GOVLOOP_TASK_ID: c.spec.taskId });
    expect(job.metadata!.labels).toMatchObject({ 'govloop.io/tenant': 'acme', 'govloop.io/team': 'search', 'govloop.io/project': 'ranker', 'govloop.io/task': c.spec.taskId, 'app.kubernetes.io/managed-by': 'govloop' });
    expect(job.spec!.template.metadata!.labels).toEqual(job.metadata!.labels);
    expect(job.metadata!.annotations).toMatchObject({ [Annotation.taskId]: c.spec.taskId, [Annotation.gpus]: String(c.spec.gpus), [Annotation.sharing]: c.spec.sharing, [Annotation.cluster]: 'gpu-east' });
  });

  it('is deterministic: the same spec and placement give the same manifest, named by jobName(taskId)', () => {
    const a = jobManifest(aJob('Train/ABC_42').build(), { kind: 'nodes', nodes: ['n1'] }, opts);
    const b = jobManifest(aJob('Train/ABC_42').build(), { kind: 'nodes', nodes: ['n1'] }, opts);
    expect(a).toEqual(b);
    expect(a.metadata!.name).toBe('gl-train-abc-42');
  });

  it('sanitizes label values and keeps the exact values in annotations', () => {
    const longTask = `t-${'x'.repeat(80)}`;
    const job = jobManifest(aJob(longTask).labels({ 'govloop.io/tenant': 'Acme Corp/EU', 'govloop.io/team': '-search-', 'govloop.io/project': 'ok.project_1' }).build(), { kind: 'any' }, opts);
    const labels = job.metadata!.labels!;
    for (const v of Object.values(labels)) {
      expect(v.length).toBeLessThanOrEqual(63);
      expect(v).toMatch(LABEL_VALUE);
    }
    expect(labels['govloop.io/project']).toBe('ok.project_1');
    expect(labels['govloop.io/tenant']).toMatch(/^Acme-Corp-EU-[0-9a-z]{7}$/);
    expect(labels['govloop.io/team']).toMatch(/^search-[0-9a-z]{7}$/);
    expect(job.metadata!.annotations![Annotation.taskId]).toBe(longTask);
    // Two values that sanitize alike stay distinct.
    expect(labelValue('a b')).not.toBe(labelValue('a/b'));
  });

  const bad: { name: string; spec: JobSpec; placement: Placement; wantError: RegExp }[] = [
    { name: 'uneven gang split', spec: aJob().gpus(12).build(), placement: { kind: 'nodes', nodes: ['a', 'b', 'c', 'd', 'e'] }, wantError: /do not split evenly/ },
    { name: 'a node named twice', spec: aJob().gpus(16).build(), placement: { kind: 'nodes', nodes: ['a', 'a'] }, wantError: /names a node twice/ },
    { name: 'a name that is not DNS-1123', spec: { ...aJob().build(), name: 'Not_A_Name' }, placement: { kind: 'any' }, wantError: /DNS-1123/ },
    { name: 'an invalid label key', spec: aJob().labels({ 'bad key!': 'x' }).build(), placement: { kind: 'any' }, wantError: /label key/ },
  ];
  it.each(bad)('refuses $name', ({ spec, placement, wantError }) => {
    expect(() => jobManifest(spec, placement, opts)).toThrow(wantError);
  });
});

describe('jobPhase', () => {
  const t0 = new Date('2026-01-01T00:00:00Z');
  const cond = (type: string, status = 'True', extra: Record<string, unknown> = {}) => ({ type, status, lastTransitionTime: t0, ...extra });
  const job = (suspend: boolean, status: V1Job['status'] = {}, deleting = false): V1Job => ({ metadata: { name: 'j', ...(deleting ? { deletionTimestamp: t0 } : {}) }, spec: { suspend, template: {} }, status });
  const cases: { name: string; job: V1Job; wantPhase: JobPhase; wantMessage: string | null }[] = [
    { name: 'just created suspended, no condition yet', job: job(true), wantPhase: 'Suspended', wantMessage: null },
    { name: 'Suspended condition True', job: job(true, { conditions: [cond('Suspended', 'True', { reason: 'JobSuspended', message: 'Job suspended' })] }), wantPhase: 'Suspended', wantMessage: 'Job suspended' },
    { name: 'resumed, controller not caught up (Suspended still True)', job: job(false, { conditions: [cond('Suspended')] }), wantPhase: 'Running', wantMessage: null },
    { name: 'resumed, Suspended False, pods active', job: job(false, { active: 2, ready: 1, conditions: [cond('Suspended', 'False')] }), wantPhase: 'Running', wantMessage: null },
    { name: 'Complete', job: job(false, { succeeded: 1, conditions: [cond('SuccessCriteriaMet'), cond('Complete')] }), wantPhase: 'Succeeded', wantMessage: null },
    { name: 'SuccessCriteriaMet before Complete', job: job(false, { conditions: [cond('SuccessCriteriaMet')] }), wantPhase: 'Succeeded', wantMessage: null },
    { name: 'Failed', job: job(false, { failed: 1, conditions: [cond('Failed', 'True', { reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit' })] }), wantPhase: 'Failed', wantMessage: 'BackoffLimitExceeded: Job has reached the specified backoff limit' },
    { name: 'FailureTarget before Failed', job: job(false, { conditions: [cond('FailureTarget', 'True', { reason: 'DeadlineExceeded' })] }), wantPhase: 'Failed', wantMessage: 'DeadlineExceeded' },
    { name: 'Failed while suspended', job: job(true, { conditions: [cond('Suspended'), cond('Failed')] }), wantPhase: 'Failed', wantMessage: 'job failed' },
    { name: 'Complete False is not done', job: job(false, { conditions: [cond('Complete', 'False')] }), wantPhase: 'Running', wantMessage: null },
    { name: 'being deleted (foreground)', job: job(false, { active: 1 }, true), wantPhase: 'Deleted', wantMessage: 'job is being deleted' },
  ];
  it.each(cases)('$name → $wantPhase', ({ job, wantPhase, wantMessage }) => {
    expect(jobPhase(job)).toEqual({ phase: wantPhase, message: wantMessage });
  });

  it('runSeconds: settled segments plus the open one, ending at completion, failure, suspension or deletion', () => {
    const at = (s: number) => new Date(t0.getTime() + s * 1000);
    const base = (annotations: Record<string, string>, status: V1Job['status'] = {}, suspend = false, deletionTimestamp?: Date): V1Job => ({
      metadata: { name: 'j', annotations, ...(deletionTimestamp ? { deletionTimestamp } : {}) },
      spec: { suspend, template: {} },
      status,
    });
    const now = at(1000);
    expect(runSeconds(base({ [Annotation.settledSeconds]: '40' }, {}, true), now)).toBe(40);
    expect(runSeconds(base({ [Annotation.settledSeconds]: '40', [Annotation.resumedAt]: at(900).toISOString() }), now)).toBe(140);
    expect(runSeconds(base({ [Annotation.resumedAt]: at(100).toISOString() }, { completionTime: at(400), conditions: [{ type: 'Complete', status: 'True', lastTransitionTime: at(401) }] }), now)).toBe(300);
    expect(runSeconds(base({ [Annotation.resumedAt]: at(100).toISOString() }, { conditions: [{ type: 'Failed', status: 'True', lastTransitionTime: at(150) }] }), now)).toBe(50);
    // Suspended by someone else (Kueue, kubectl): the segment ends when the controller says so.
    expect(runSeconds(base({ [Annotation.resumedAt]: at(100).toISOString() }, { conditions: [{ type: 'Suspended', status: 'True', lastTransitionTime: at(700) }] }, true), now)).toBe(600);
    // An old Suspended condition from before the resume does not end the new segment.
    expect(runSeconds(base({ [Annotation.resumedAt]: at(100).toISOString() }, { conditions: [{ type: 'Suspended', status: 'True', lastTransitionTime: at(50) }] }), now)).toBe(900);
    expect(runSeconds(base({ [Annotation.resumedAt]: at(100).toISOString() }, {}, false, at(200)), now)).toBe(100);
  });
});

describe('KubernetesCluster against a recorded API server', () => {
  const server = new FakeApiServer({ namespaces: [NS], token: 'test-token' });
  const clock = new ManualClock();
  let backend: KubernetesCluster;
  const path = (name?: string) => `/apis/batch/v1/namespaces/${NS}/jobs${name ? `/${name}` : ''}`;

  beforeAll(async () => {
    const url = await server.start();
    backend = new KubernetesCluster(kubeConfigFor(url, 'test-token'), { cluster: 'gpu-east', namespace: NS, clock: clock.fn, place: () => ({ kind: 'nodes', nodes: ['h100-03'] }) });
  });
  afterAll(() => server.stop());
  afterEach(() => {
    server.requests.length = 0;
  });

  it('create → resume → suspend → resume → delete: the exact calls and bodies', async () => {
    const spec = aJob('lifecycle-1').build();
    const name = spec.name;
    expect(await backend.create(spec)).toEqual({ ok: true, nodes: ['h100-03'] });
    expect(server.calls()).toEqual([`POST ${path()}?fieldManager=govloop`]);
    expect(server.requests[0]!.contentType).toBe('application/json');
    expect(server.requests[0]!.body).toEqual(JSON.parse(JSON.stringify(jobManifest(spec, { kind: 'nodes', nodes: ['h100-03'] }, opts))));
    expect((await backend.status(name))!.phase).toBe('Suspended');

    server.requests.length = 0;
    await backend.resume(name);
    const rv1 = server.jobs.get(`${NS}/${name}`)!.metadata.resourceVersion;
    clock.advance(100);
    await backend.suspend(name);
    clock.advance(1000); // suspended time is not charged
    await backend.resume(name);
    clock.advance(20);
    expect(await backend.status(name)).toEqual({ name, phase: 'Running', nodes: ['h100-03'], progressSeconds: 120, gpuSeconds: 960, tokens: 0, message: null });
    await backend.delete(name);

    expect(server.calls()).toEqual([
      `GET ${path(name)}`,
      `PATCH ${path(name)}?fieldManager=govloop`,
      `GET ${path(name)}`,
      `PATCH ${path(name)}?fieldManager=govloop`,
      `GET ${path(name)}`,
      `PATCH ${path(name)}?fieldManager=govloop`,
      `GET ${path(name)}`,
      `GET ${path(name)}`,
      `DELETE ${path(name)}?propagationPolicy=Foreground`,
    ]);
    const patches = server.requests.filter((r) => r.method === 'PATCH');
    expect(patches.map((p) => p.contentType)).toEqual(Array(3).fill('application/merge-patch+json'));
    expect(patches.map((p) => p.body)).toEqual([
      { metadata: { annotations: { [Annotation.resumedAt]: '2026-01-01T00:00:00.000Z' }, resourceVersion: expect.any(String) }, spec: { suspend: false } },
      { metadata: { annotations: { [Annotation.settledSeconds]: '100', [Annotation.resumedAt]: null }, resourceVersion: rv1 }, spec: { suspend: true } },
      { metadata: { annotations: { [Annotation.resumedAt]: '2026-01-01T00:18:20.000Z' }, resourceVersion: expect.any(String) }, spec: { suspend: false } },
    ]);

    // Foreground deletion: the Job stays, being deleted, until the garbage collector removes its pods.
    const deleting = await backend.status(name);
    expect(deleting).toMatchObject({ phase: 'Deleted', gpuSeconds: 960 });
    server.finishDeletion(NS, name);
    clock.advance(50);
    expect(await backend.status(name)).toMatchObject({ phase: 'Deleted', gpuSeconds: 960, progressSeconds: 120 });
  });

  it('resume and suspend are idempotent: nothing is written when the Job is already there', async () => {
    const { name } = aJob('idem-1').build();
    await backend.create(aJob('idem-1').build());
    await backend.resume(name);
    server.requests.length = 0;
    await backend.resume(name);
    expect(server.calls()).toEqual([`GET ${path(name)}`]);
    await backend.suspend(name);
    server.requests.length = 0;
    await backend.suspend(name);
    expect(server.calls()).toEqual([`GET ${path(name)}`]);
    // A finished Job is neither resumed nor suspended.
    server.setStatus(NS, name, { conditions: [{ type: 'Complete', status: 'True' }] });
    server.requests.length = 0;
    await backend.resume(name);
    expect(server.calls()).toEqual([`GET ${path(name)}`]);
  });

  it('create is idempotent: 409 AlreadyExists reads the Job that is there', async () => {
    const spec = aJob('idem-create').build();
    await backend.create(spec);
    server.requests.length = 0;
    expect(await backend.create(spec)).toEqual({ ok: true, nodes: ['h100-03'] });
    expect(server.calls()).toEqual([`POST ${path()}?fieldManager=govloop`, `GET ${path(spec.name)}`]);
    expect(server.jobs.size).toBeGreaterThan(0);
  });

  it('create refuses a Job of the same name that belongs to another task', async () => {
    // Two task ids that jobName() maps to the same name (case folds).
    await backend.create(aJob('Clash-1').build());
    const err = await backend.create(aJob('clash-1').build()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: KubernetesErrorType.NameTaken, nonRetryable: true });
    expect((err as Error).message).toMatch(/belongs to task Clash-1, not clash-1/);
  });

  it('create answers no room when the placement hook says so, without calling the API', async () => {
    const full = new KubernetesCluster(kubeConfigFor(server.url, 'test-token'), {
      cluster: 'gpu-east',
      namespace: NS,
      place: () => ({ kind: 'none', reason: { code: 'GPU_CAPACITY_BUSY', message: 'no room', limit: 0, requested: 8, policy: 'cluster/gpu-east' } }),
    });
    expect(await full.create(aJob('no-room').build())).toMatchObject({ ok: false, reason: { code: 'GPU_CAPACITY_BUSY' } });
    expect(server.requests).toEqual([]);
  });

  it('delete tolerates a Job that is already gone (404 on read, or on the DELETE itself)', async () => {
    await backend.delete('gl-never-created');
    expect(server.calls()).toEqual([`GET ${path('gl-never-created')}`]);
    const spec = aJob('race-delete').build();
    await backend.create(spec);
    server.failNext('DELETE', 404);
    await expect(backend.delete(spec.name)).resolves.toBeUndefined();
  });

  it('a Job that was never seen reads as Deleted (the workflow ends the task instead of retrying forever)', async () => {
    expect(await backend.status('gl-unknown')).toEqual({ name: 'gl-unknown', phase: 'Deleted', nodes: [], progressSeconds: 0, gpuSeconds: 0, tokens: 0, message: `job gl-unknown not found in namespace ${NS}` });
  });

  it('status follows the Job controller: each condition → its phase, usage stops at completion', async () => {
    const spec = aJob('status-1').gpus(2).build();
    const { name } = spec;
    await backend.create(spec);
    const resumedAt = clock.now;
    await backend.resume(name);
    const at = (s: number) => new Date(resumedAt.getTime() + s * 1000).toISOString();
    const steps: { status: Record<string, unknown>; advance: number; wantPhase: JobPhase; wantGpuSeconds: number; wantMessage?: string | null }[] = [
      { status: { startTime: at(0), conditions: [{ type: 'Suspended', status: 'False', reason: 'JobResumed', lastTransitionTime: at(0) }] }, advance: 10, wantPhase: 'Running', wantGpuSeconds: 20 },
      { status: { startTime: at(0), active: 1, ready: 1 }, advance: 20, wantPhase: 'Running', wantGpuSeconds: 60 },
      { status: { startTime: at(0), succeeded: 1, completionTime: at(40), conditions: [{ type: 'SuccessCriteriaMet', status: 'True', lastTransitionTime: at(40) }, { type: 'Complete', status: 'True', lastTransitionTime: at(40) }] }, advance: 30, wantPhase: 'Succeeded', wantGpuSeconds: 80 },
    ];
    for (const s of steps) {
      server.setStatus(NS, name, s.status);
      clock.advance(s.advance);
      expect(await backend.status(name)).toMatchObject({ phase: s.wantPhase, gpuSeconds: s.wantGpuSeconds });
    }
    const failed = aJob('status-2').gpus(1).build();
    await backend.create(failed);
    await backend.resume(failed.name);
    server.setStatus(NS, failed.name, { failed: 1, conditions: [{ type: 'Failed', status: 'True', reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit', lastTransitionTime: clock.now.toISOString() }] });
    expect(await backend.status(failed.name)).toMatchObject({ phase: 'Failed', message: 'BackoffLimitExceeded: Job has reached the specified backoff limit' });
    // Tokens, when the runner writes them on the Job.
    server.jobs.get(`${NS}/${name}`)!.metadata.annotations![Annotation.tokens] = '12345';
    expect((await backend.status(name))!.tokens).toBe(12345);
  });

  it('a concurrent write (409 Conflict) makes resume read again and retry', async () => {
    const spec = aJob('conflict-1').build();
    await backend.create(spec);
    server.requests.length = 0;
    server.failNext('PATCH', 409);
    await backend.resume(spec.name);
    expect(server.calls()).toEqual([`GET ${path(spec.name)}`, `PATCH ${path(spec.name)}?fieldManager=govloop`, `GET ${path(spec.name)}`, `PATCH ${path(spec.name)}?fieldManager=govloop`]);
    expect((await backend.status(spec.name))!.phase).toBe('Running');
  });

  const failures: { name: string; method: string; code: number; call: (b: KubernetesCluster) => Promise<unknown>; wantType: string; wantRetryable: boolean; wantMessage: RegExp }[] = [
    {
      name: '403 on create names the missing permission',
      method: 'POST',
      code: 403,
      call: (b) => b.create(aJob('forbidden-1').build()),
      wantType: KubernetesErrorType.Api,
      wantRetryable: true,
      wantMessage: /^kubernetes: create job gl-forbidden-1 in namespace govloop: HTTP 403: Forbidden: jobs\.batch is forbidden: User "system:serviceaccount:govloop:dispatcher" cannot create resource "jobs".*needs create\/get\/patch\/delete on jobs\.batch/,
    },
    {
      name: '500 on status is retryable and says what the server said',
      method: 'GET',
      code: 500,
      call: (b) => b.status('gl-any'),
      wantType: KubernetesErrorType.Api,
      wantRetryable: true,
      wantMessage: /^kubernetes: read job gl-any in namespace govloop: HTTP 500: InternalError: Internal error occurred: etcdserver: request timed out$/,
    },
    {
      name: '422 on create is not retryable',
      method: 'POST',
      code: 422,
      call: (b) => b.create(aJob('invalid-1').build()),
      wantType: KubernetesErrorType.Invalid,
      wantRetryable: false,
      wantMessage: /HTTP 422/,
    },
    {
      name: '500 on delete',
      method: 'DELETE',
      code: 500,
      call: async (b) => {
        await b.create(aJob('del-500').build());
        return b.delete('gl-del-500');
      },
      wantType: KubernetesErrorType.Api,
      wantRetryable: true,
      wantMessage: /^kubernetes: delete job gl-del-500 in namespace govloop: HTTP 500: InternalError/,
    },
  ];
  it.each(failures)('$name', async (c) => {
    server.failNext(c.method, c.code);
    const err = await c.call(backend).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: c.wantType, nonRetryable: !c.wantRetryable });
    expect((err as Error).message).toMatch(c.wantMessage);
  });

  it('a wrong token gets 401 with a hint about credentials', async () => {
    const b = new KubernetesCluster(kubeConfigFor(server.url, 'wrong'), { cluster: 'gpu-east', namespace: NS });
    const err = await b.status('gl-any').catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/HTTP 401: Unauthorized \(check the kubeconfig credentials\)/);
  });

  it('watchJobs reports each change of a govloop Job as (task, phase)', async () => {
    const events: JobEvent[] = [];
    const w = backend.watchJobs((e) => events.push(e));
    try {
      await expect.poll(() => server.watching).toBe(1);
      const spec = aJob('watched-1').build();
      await backend.create(spec);
      await backend.resume(spec.name);
      server.setStatus(NS, spec.name, { conditions: [{ type: 'Complete', status: 'True' }] });
      await backend.delete(spec.name);
      server.finishDeletion(NS, spec.name);
      await expect.poll(() => events.filter((e) => e.taskId === 'watched-1').map((e) => `${e.type}:${e.phase}`)).toEqual([
        'ADDED:Suspended',
        'MODIFIED:Running',
        'MODIFIED:Succeeded',
        'MODIFIED:Deleted',
        'DELETED:Deleted',
      ]);
      expect(server.requests.find((r) => r.query.watch)?.query).toMatchObject({ watch: 'true', labelSelector: 'govloop.io/task', allowWatchBookmarks: 'true' });
    } finally {
      w.stop();
    }
  });

  it('watchJobs reconnects from the last resourceVersion when the server ends the stream', async () => {
    const events: JobEvent[] = [];
    const w = backend.watchJobs((e) => events.push(e), () => {}, 50);
    try {
      await expect.poll(() => server.watching).toBe(1);
      const spec = aJob('watched-2').build();
      await backend.create(spec);
      await expect.poll(() => events.some((e) => e.taskId === 'watched-2')).toBe(true);
      const rv = server.jobs.get(`${NS}/${spec.name}`)!.metadata.resourceVersion;
      server.closeWatches();
      await expect.poll(() => server.watching).toBe(1);
      expect(server.requests.filter((r) => r.query.watch).at(-1)!.query.resourceVersion).toBe(rv);
      await backend.resume(spec.name);
      await expect.poll(() => events.filter((e) => e.taskId === 'watched-2').map((e) => `${e.type}:${e.phase}`)).toEqual(['ADDED:Suspended', 'MODIFIED:Running']);
    } finally {
      w.stop();
    }
  });
});
