/**
 * The Kubernetes backend: manifests and phase mapping (pure, table-driven), then the backend's
 * calls through @kubernetes/client-node's real HTTP stack against a recorded API server
 * (./fake-apiserver.ts). The same lifecycle against a real kube-apiserver + etcd is in
 * ./kubernetes-apiserver.test.ts (skipped where those binaries are absent).
 */
import { BatchV1Api, CoordinationV1Api, CoreV1Api, PatchStrategy, type V1Job, setHeaderOptions } from '@kubernetes/client-node';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { type ClusterBackend, type JobPhase, type JobSpec, jobName } from '../../cluster/backend';
import { SimulatedCluster } from '../../cluster/simulated/backend';
import { ClusterFile } from '../../config/schema';
import { loadConfig } from '../../config/load';
import { createActivities } from '../../activities';
import { type Ledger, backends } from '../ledger/backends';
import { DEFAULT_STOP_MARGIN_SECONDS, KubernetesCluster, KubernetesErrorType, type JobEvent } from '../../cluster/kubernetes/backend';
import {
  Annotation,
  type PhaseReading,
  activeDeadlineFor,
  type ManifestOptions,
  type Placement,
  gangServiceManifest,
  isGang,
  jobAccounting,
  jobManifest,
  jobPhase,
  labelValue,
  runSeconds,
  suspendAnnotations,
} from '../../cluster/kubernetes/manifests';
import { PlacementLease } from '../../cluster/kubernetes/lease';
import { FakeApiServer } from './fake-apiserver';
import { ManualClock, aJob, kubeConfigFor } from './support';

const NS = 'govloop';
const opts: ManifestOptions = { namespace: NS, cluster: 'gpu-east' };
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

const mergePatchHeader = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const nodesOfStored = (job: { metadata: { annotations?: Record<string, string> } }) =>
  (job.metadata.annotations?.[Annotation.nodes] ?? '').split(',').filter(Boolean);
const container = (job: V1Job) => job.spec!.template.spec!.containers[0]!;
const nodeTerms = (job: V1Job) =>
  job.spec!.template.spec!.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms[0]?.matchExpressions ?? [];

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
    expect(env).toMatchObject({
      ...c.wantEnv,
      GOVLOOP_TASK_ID: c.spec.taskId,
      GOVLOOP_JOB_NAME: c.spec.name,
      GOVLOOP_NAMESPACE: NS,
      GOVLOOP_PODINFO_DIR: '/etc/govloop/podinfo',
    });
    // Every pod sees its own annotations (the checkpoint request) in a downward-API volume.
    expect(pod.volumes).toEqual([
      {
        name: 'govloop-podinfo',
        downwardAPI: {
          items: [
            { path: 'annotations', fieldRef: { fieldPath: 'metadata.annotations' } },
            { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } },
          ],
        },
      },
    ]);
    expect(container(job).volumeMounts).toEqual([{ name: 'govloop-podinfo', mountPath: '/etc/govloop/podinfo', readOnly: true }]);
    // A multi-pod gang: the headless Service of its name as subdomain, rank 0's address, each pod's rank.
    const byName = new Map(container(job).env!.map((e) => [e.name, e]));
    if (c.wantPods > 1) {
      expect(pod.subdomain).toBe(c.spec.name);
      for (const prefix of ['', 'PET_']) {
        expect(byName.get(`${prefix}MASTER_ADDR`)).toEqual({ name: `${prefix}MASTER_ADDR`, value: `${c.spec.name}-0.${c.spec.name}` });
        expect(byName.get(`${prefix}MASTER_PORT`)).toEqual({ name: `${prefix}MASTER_PORT`, value: '29500' });
        expect(byName.get(`${prefix}NODE_RANK`)).toEqual({
          name: `${prefix}NODE_RANK`,
          valueFrom: { fieldRef: { fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']" } },
        });
      }
    } else {
      expect(pod.subdomain).toBeUndefined();
      expect([...byName.keys()].filter((k) => /MASTER|NODE_RANK/.test(k))).toEqual([]);
    }
    expect(job.metadata!.labels).toMatchObject({
      'govloop.io/tenant': 'acme',
      'govloop.io/team': 'search',
      'govloop.io/project': 'ranker',
      'govloop.io/task': c.spec.taskId,
      'app.kubernetes.io/managed-by': 'govloop',
    });
    expect(job.spec!.template.metadata!.labels).toEqual(job.metadata!.labels);
    expect(job.metadata!.annotations).toMatchObject({
      [Annotation.taskId]: c.spec.taskId,
      [Annotation.gpus]: String(c.spec.gpus),
      [Annotation.sharing]: c.spec.sharing,
      [Annotation.cluster]: 'gpu-east',
    });
  });

  it('rendezvous: the port is an option, and a template that sets MASTER_ADDR / MASTER_PORT keeps its own', () => {
    const spec = aJob()
      .gpus(16)
      .runtime({ env: { MASTER_PORT: '12345' } })
      .build();
    const job = jobManifest(spec, { kind: 'nodes', nodes: ['a', 'b'] }, { ...opts, rendezvousPort: 23456 });
    const env = container(job).env!.filter((e) => e.name.endsWith('MASTER_PORT'));
    expect(env).toEqual([
      { name: 'MASTER_PORT', value: '12345' },
      { name: 'PET_MASTER_PORT', value: '23456' },
    ]);
    expect(
      jobManifest(spec, { kind: 'nodes', nodes: ['a', 'b'] }, { ...opts, serviceAccountName: 'govloop-trainer' }).spec!.template.spec!.serviceAccountName,
    ).toBe('govloop-trainer');
  });

  it('records the GPU type and, for a share, its thousandths on the Job', () => {
    const share = jobManifest({ ...aJob().gpus(1, 'mps').build(), gpuMilli: 250 }, { kind: 'any' }, opts);
    expect(share.metadata!.annotations).toMatchObject({ [Annotation.gpuType]: 'H100', [Annotation.gpuMilli]: '250', [Annotation.sharing]: 'mps' });
    expect(jobManifest(aJob().gpus(8).build(), { kind: 'any' }, opts).metadata!.annotations![Annotation.gpuMilli]).toBeUndefined();
  });

  it("gangServiceManifest: headless, selects the Job's pods, publishes not-ready addresses, owned by the Job", () => {
    const job = jobManifest(aJob('gang-svc').gpus(16).build(), { kind: 'nodes', nodes: ['a', 'b'] }, opts);
    job.metadata!.uid = '0b6c2d0e-uid';
    const name = jobName('gang-svc');
    expect(gangServiceManifest(job, opts)).toEqual({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: {
        name,
        namespace: NS,
        labels: job.metadata!.labels,
        annotations: { [Annotation.taskId]: 'gang-svc' },
        ownerReferences: [{ apiVersion: 'batch/v1', kind: 'Job', name, uid: '0b6c2d0e-uid', controller: true, blockOwnerDeletion: true }],
      },
      spec: {
        clusterIP: 'None',
        selector: { 'batch.kubernetes.io/job-name': name },
        publishNotReadyAddresses: true,
        ports: [{ name: 'rendezvous', port: 29500, targetPort: 29500, protocol: 'TCP' }],
      },
    });
    expect(isGang(job)).toBe(true);
    expect(isGang(jobManifest(aJob().gpus(8).build(), { kind: 'nodes', nodes: ['a'] }, opts))).toBe(false);
    expect(() => gangServiceManifest(jobManifest(aJob().gpus(16).build(), { kind: 'nodes', nodes: ['a', 'b'] }, opts), opts)).toThrow(/needs a stored Job/);
  });

  it('is deterministic: the same spec and placement give the same manifest, named by jobName(taskId)', () => {
    const a = jobManifest(aJob('Train/ABC_42').build(), { kind: 'nodes', nodes: ['n1'] }, opts);
    const b = jobManifest(aJob('Train/ABC_42').build(), { kind: 'nodes', nodes: ['n1'] }, opts);
    expect(a).toEqual(b);
    expect(a.metadata!.name).toBe(jobName('Train/ABC_42'));
    expect(a.metadata!.name).toMatch(/^gl-train-abc-42-[0-9a-f]{16}$/);
  });

  it('sanitizes label values and keeps the exact values in annotations', () => {
    const longTask = `t-${'x'.repeat(80)}`;
    const job = jobManifest(
      aJob(longTask).labels({ 'govloop.io/tenant': 'Acme Corp/EU', 'govloop.io/team': '-search-', 'govloop.io/project': 'ok.project_1' }).build(),
      { kind: 'any' },
      opts,
    );
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
    {
      name: 'uneven gang split',
      spec: aJob().gpus(12).build(),
      placement: { kind: 'nodes', nodes: ['a', 'b', 'c', 'd', 'e'] },
      wantError: /do not split evenly/,
    },
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
  const job = (suspend: boolean, status: V1Job['status'] = {}, deleting = false, annotations?: Record<string, string>): V1Job => ({
    metadata: { name: 'j', ...(deleting ? { deletionTimestamp: t0 } : {}), ...(annotations ? { annotations } : {}) },
    spec: { suspend, template: {} },
    status,
  });
  const cases: { name: string; job: V1Job; wantPhase: JobPhase; wantMessage: string | null; want?: Partial<PhaseReading> }[] = [
    { name: 'just created suspended, no condition yet', job: job(true), wantPhase: 'Suspended', wantMessage: null },
    {
      name: 'Suspended condition True',
      job: job(true, { conditions: [cond('Suspended', 'True', { reason: 'JobSuspended', message: 'Job suspended' })] }),
      wantPhase: 'Suspended',
      wantMessage: 'Job suspended',
    },
    {
      name: 'resumed, controller not caught up (Suspended still True)',
      job: job(false, { conditions: [cond('Suspended')] }),
      wantPhase: 'Running',
      wantMessage: null,
    },
    {
      name: 'resumed, Suspended False, pods active',
      job: job(false, { active: 2, ready: 1, conditions: [cond('Suspended', 'False')] }),
      wantPhase: 'Running',
      wantMessage: null,
    },
    {
      name: 'Complete',
      job: job(false, { succeeded: 1, conditions: [cond('SuccessCriteriaMet'), cond('Complete')] }),
      wantPhase: 'Succeeded',
      wantMessage: null,
    },
    { name: 'SuccessCriteriaMet before Complete', job: job(false, { conditions: [cond('SuccessCriteriaMet')] }), wantPhase: 'Succeeded', wantMessage: null },
    {
      name: 'Failed',
      job: job(false, {
        failed: 1,
        conditions: [cond('Failed', 'True', { reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit' })],
      }),
      wantPhase: 'Failed',
      wantMessage: 'BackoffLimitExceeded: Job has reached the specified backoff limit',
    },
    {
      name: 'FailureTarget before Failed',
      job: job(false, { conditions: [cond('FailureTarget', 'True', { reason: 'PodFailurePolicy', message: 'Container task exited with 42' })] }),
      wantPhase: 'Failed',
      wantMessage: 'PodFailurePolicy: Container task exited with 42',
    },
    {
      name: 'stopped at its run limit: FailureTarget DeadlineExceeded (pods still terminating)',
      job: job(false, {
        conditions: [cond('FailureTarget', 'True', { reason: 'DeadlineExceeded', message: 'Job was active longer than specified deadline' })],
      }),
      wantPhase: 'Failed',
      wantMessage: 'DeadlineExceeded: Job was active longer than specified deadline',
      want: { deadlineExceeded: true },
    },
    {
      name: 'stopped at its run limit: Failed DeadlineExceeded (older controllers write Failed at once)',
      job: job(false, {
        conditions: [cond('Failed', 'True', { reason: 'DeadlineExceeded', message: 'Job was active longer than specified deadline' })],
      }),
      wantPhase: 'Failed',
      wantMessage: 'DeadlineExceeded: Job was active longer than specified deadline',
      want: { deadlineExceeded: true },
    },
    {
      name: 'under 1 s of run limit left: not resumed, reads Failed at its run limit',
      job: job(true, {}, false, { [Annotation.runLimitExhausted]: '0.4' }),
      wantPhase: 'Failed',
      wantMessage: "RunLimitExhausted: the task's caps left 0.4 s of run time (under 1 s), so govloop did not resume the Job",
      want: { deadlineExceeded: true, notResumed: true },
    },
    {
      name: 'the not-resumed mark on a Job someone unsuspended anyway: it runs',
      job: job(false, {}, false, { [Annotation.runLimitExhausted]: '0.4' }),
      wantPhase: 'Running',
      wantMessage: null,
    },
    { name: 'Failed while suspended', job: job(true, { conditions: [cond('Suspended'), cond('Failed')] }), wantPhase: 'Failed', wantMessage: 'job failed' },
    { name: 'Complete False is not done', job: job(false, { conditions: [cond('Complete', 'False')] }), wantPhase: 'Running', wantMessage: null },
    { name: 'being deleted (foreground)', job: job(false, { active: 1 }, true), wantPhase: 'Deleted', wantMessage: 'job is being deleted' },
  ];
  it.each(cases)('$name → $wantPhase', ({ job, wantPhase, wantMessage, want }) => {
    expect(jobPhase(job)).toEqual({ phase: wantPhase, message: wantMessage, ...want });
  });

  it('activeDeadlineFor: whole seconds rounded down (never past the limit); 0 under 1 s (the Job must not run); none without a limit', () => {
    expect(activeDeadlineFor(undefined)).toBeUndefined();
    expect(activeDeadlineFor({ maxRunSeconds: Number.POSITIVE_INFINITY })).toBeUndefined();
    expect(activeDeadlineFor({ maxRunSeconds: 600 })).toBe(600);
    expect(activeDeadlineFor({ maxRunSeconds: 600.99 })).toBe(600);
    expect(activeDeadlineFor({ maxRunSeconds: 1 })).toBe(1);
    expect(activeDeadlineFor({ maxRunSeconds: 0.999 })).toBe(0);
    expect(activeDeadlineFor({ maxRunSeconds: 0 })).toBe(0);
    expect(activeDeadlineFor({ maxRunSeconds: -35 })).toBe(0);
    expect(() => activeDeadlineFor({ maxRunSeconds: Number.NaN })).toThrow('run limit maxRunSeconds must be a number of seconds, got NaN');
  });

  it('runSeconds of a Job stopped at its run limit: up to the DeadlineExceeded condition, however late the controller wrote it', () => {
    const at = (s: number) => new Date(t0.getTime() + s * 1000);
    const stopped = (conditions: NonNullable<V1Job['status']>['conditions']): V1Job => ({
      metadata: { name: 'j', annotations: { [Annotation.settledSeconds]: '100', [Annotation.resumedAt]: at(0).toISOString() } },
      spec: { suspend: false, activeDeadlineSeconds: 600, template: {} },
      status: { startTime: at(1), conditions },
    });
    const deadline = { reason: 'DeadlineExceeded', message: 'Job was active longer than specified deadline' };
    // The controller wrote FailureTarget 7 s after resumed-at + the deadline: the Job held its GPUs until then.
    const late = stopped([{ type: 'FailureTarget', status: 'True', lastTransitionTime: at(607), ...deadline }]);
    expect(runSeconds(late, at(5000))).toBe(100 + 607);
    // Failed follows once the pods are gone (their termination grace): metering ended at FailureTarget.
    const failed = stopped([
      { type: 'FailureTarget', status: 'True', lastTransitionTime: at(601), ...deadline },
      { type: 'Failed', status: 'True', lastTransitionTime: at(631), ...deadline },
    ]);
    expect(runSeconds(failed, at(5000))).toBe(100 + 601);
    // Not resumed (under 1 s left): no run segment was opened.
    const notRun: V1Job = {
      metadata: { name: 'j', annotations: { [Annotation.settledSeconds]: '100', [Annotation.runLimitExhausted]: '0.2' } },
      spec: { suspend: true, template: {} },
    };
    expect(runSeconds(notRun, at(5000))).toBe(100);
    expect(jobAccounting(notRun, at(5000))).toMatchObject({ ranSeconds: 100, progressSeconds: 100 });
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
    expect(
      runSeconds(
        base(
          { [Annotation.resumedAt]: at(100).toISOString() },
          { completionTime: at(400), conditions: [{ type: 'Complete', status: 'True', lastTransitionTime: at(401) }] },
        ),
        now,
      ),
    ).toBe(300);
    expect(
      runSeconds(
        base({ [Annotation.resumedAt]: at(100).toISOString() }, { conditions: [{ type: 'Failed', status: 'True', lastTransitionTime: at(150) }] }),
        now,
      ),
    ).toBe(50);
    // Suspended by someone else (Kueue, kubectl): the segment ends when the controller says so.
    expect(
      runSeconds(
        base({ [Annotation.resumedAt]: at(100).toISOString() }, { conditions: [{ type: 'Suspended', status: 'True', lastTransitionTime: at(700) }] }, true),
        now,
      ),
    ).toBe(600);
    // An old Suspended condition from before the resume does not end the new segment.
    expect(
      runSeconds(
        base({ [Annotation.resumedAt]: at(100).toISOString() }, { conditions: [{ type: 'Suspended', status: 'True', lastTransitionTime: at(50) }] }),
        now,
      ),
    ).toBe(900);
    expect(runSeconds(base({ [Annotation.resumedAt]: at(100).toISOString() }, {}, false, at(200)), now)).toBe(100);
  });
});

describe("checkpoint accounting (the simulated cluster's settleProgress, on annotations)", () => {
  const at = (s: number) => new Date(Date.parse('2026-01-01T00:00:00Z') + s * 1000);
  /** A running Job resumed at `resumedAt` with earlier segments and what the trainer reported. */
  const running = (a: Record<string, string>, resumedAt = 0): V1Job => ({
    metadata: { name: 'j', annotations: { [Annotation.resumedAt]: at(resumedAt).toISOString(), ...a } },
    spec: { suspend: false, template: {} },
    status: {},
  });
  const cases: { name: string; job: V1Job; now: number; want: ReturnType<typeof jobAccounting>; wantSuspend: Record<string, string | null> }[] = [
    {
      name: 'no checkpoint reported: progress is run time, nothing known to be lost, kept on suspend',
      job: running({ [Annotation.settledSeconds]: '0' }),
      now: 100,
      want: { ranSeconds: 100, progressSeconds: 100, checkpointSeconds: null, lostSeconds: null },
      wantSuspend: { [Annotation.settledSeconds]: '100', [Annotation.progressSeconds]: '100' },
    },
    {
      name: 'checkpoint at 40 of 100: suspend goes back to 40 and loses 60',
      job: running({ [Annotation.settledSeconds]: '0', [Annotation.checkpointSeconds]: '40' }),
      now: 100,
      want: { ranSeconds: 100, progressSeconds: 100, checkpointSeconds: 40, lostSeconds: 0 },
      wantSuspend: { [Annotation.settledSeconds]: '100', [Annotation.progressSeconds]: '40', [Annotation.lostSeconds]: '60' },
    },
    {
      name: 'second round: resumed from 40 after 100 run, 50 more, checkpoint 70: back to 70, lost 60 + 20',
      job: running(
        { [Annotation.settledSeconds]: '100', [Annotation.progressSeconds]: '40', [Annotation.lostSeconds]: '60', [Annotation.checkpointSeconds]: '70' },
        1000,
      ),
      now: 1050,
      want: { ranSeconds: 150, progressSeconds: 90, checkpointSeconds: 70, lostSeconds: 60 },
      wantSuspend: { [Annotation.settledSeconds]: '150', [Annotation.progressSeconds]: '70', [Annotation.lostSeconds]: '80' },
    },
    {
      name: 'a checkpoint claiming more than was done counts as the progress (nothing lost)',
      job: running({ [Annotation.settledSeconds]: '0', [Annotation.checkpointSeconds]: '500' }),
      now: 30,
      want: { ranSeconds: 30, progressSeconds: 30, checkpointSeconds: 30, lostSeconds: 0 },
      wantSuspend: { [Annotation.settledSeconds]: '30', [Annotation.progressSeconds]: '30', [Annotation.lostSeconds]: '0' },
    },
    {
      name: 'a malformed checkpoint annotation is no checkpoint',
      job: running({ [Annotation.settledSeconds]: '0', [Annotation.checkpointSeconds]: 'soon' }),
      now: 10,
      want: { ranSeconds: 10, progressSeconds: 10, checkpointSeconds: null, lostSeconds: null },
      wantSuspend: { [Annotation.settledSeconds]: '10', [Annotation.progressSeconds]: '10' },
    },
  ];
  it.each(cases)('$name', (c) => {
    expect(jobAccounting(c.job, at(c.now))).toEqual(c.want);
    const written = suspendAnnotations(
      { ...c.job, metadata: { ...c.job.metadata, annotations: { ...c.job.metadata!.annotations, [Annotation.nodes]: 'h100-03' } } },
      at(c.now),
    );
    expect(written).toEqual({
      ...c.wantSuspend,
      [Annotation.resumedAt]: null,
      [Annotation.nodes]: null,
      [Annotation.preemptedFrom]: 'h100-03',
      [Annotation.preemptedAt]: at(c.now).toISOString(),
    });
    // What the Job then reads as, suspended: progress and lost as written, run time stopped.
    const suspended: V1Job = {
      ...c.job,
      metadata: {
        ...c.job.metadata,
        annotations: Object.fromEntries(Object.entries({ ...c.job.metadata!.annotations, ...written }).filter((e): e is [string, string] => e[1] !== null)),
      },
      spec: { suspend: true, template: {} },
    };
    const after = jobAccounting(suspended, at(c.now + 999));
    expect(after.ranSeconds).toBe(c.want.ranSeconds);
    expect(after.progressSeconds).toBe(Number(c.wantSuspend[Annotation.progressSeconds]));
    expect(after.lostSeconds).toBe(c.wantSuspend[Annotation.lostSeconds] === undefined ? null : Number(c.wantSuspend[Annotation.lostSeconds]));
  });
});

describe('KubernetesCluster against a recorded API server', () => {
  const server = new FakeApiServer({ namespaces: [NS], token: 'test-token' });
  const clock = new ManualClock();
  let backend: KubernetesCluster;
  const path = (name?: string) => `/apis/batch/v1/namespaces/${NS}/jobs${name ? `/${name}` : ''}`;

  beforeAll(async () => {
    const url = await server.start();
    backend = new KubernetesCluster(kubeConfigFor(url, 'test-token'), {
      cluster: 'gpu-east',
      namespace: NS,
      clock: clock.fn,
      place: () => ({ kind: 'nodes', nodes: ['h100-03'] }),
    });
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
    expect(await backend.status(name)).toMatchObject({ phase: 'Suspended', nodes: [], progressSeconds: 100, gpuSeconds: 800 });
    clock.advance(1000); // suspended time is not charged
    // Readmitted: the workflow dispatches again (create places the preempted Job again), then resumes.
    expect(await backend.create(spec)).toEqual({ ok: true, nodes: ['h100-03'] });
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
      `POST ${path()}?fieldManager=govloop`,
      `GET ${path(name)}`,
      `GET ${path(name)}`,
      `PATCH ${path(name)}?fieldManager=govloop`,
      `GET ${path(name)}`,
      `PATCH ${path(name)}?fieldManager=govloop`,
      `GET ${path(name)}`,
      `GET ${path(name)}`,
      `DELETE ${path(name)}?propagationPolicy=Foreground`,
    ]);
    const patches = server.requests.filter((r) => r.method === 'PATCH');
    expect(patches.map((p) => p.contentType)).toEqual(Array(4).fill('application/merge-patch+json'));
    expect(patches.map((p) => p.body)).toEqual([
      { metadata: { annotations: { [Annotation.resumedAt]: '2026-01-01T00:00:00.000Z' }, resourceVersion: expect.any(String) }, spec: { suspend: false } },
      {
        metadata: {
          annotations: {
            [Annotation.settledSeconds]: '100',
            [Annotation.progressSeconds]: '100',
            [Annotation.resumedAt]: null,
            [Annotation.nodes]: null,
            [Annotation.preemptedFrom]: 'h100-03',
            [Annotation.preemptedAt]: '2026-01-01T00:01:40.000Z',
          },
          resourceVersion: rv1,
        },
        spec: { suspend: true },
      },
      // Placed again where it was: only the annotations (the node affinity is the same).
      { metadata: { annotations: { [Annotation.nodes]: 'h100-03', [Annotation.preemptedAt]: null }, resourceVersion: expect.any(String) } },
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
    // jobName() keeps task ids apart; a Job of that name made by hand or by another tool is not.
    await backend.create(aJob('Clash-1').build());
    const err = await backend.create(aJob('clash-1').named(jobName('Clash-1')).build()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: KubernetesErrorType.NameTaken, nonRetryable: true });
    expect((err as Error).message).toMatch(/belongs to task Clash-1, not clash-1/);
  });

  it('create answers no room when the placement hook says so, writing nothing (it only looks whether the Job exists already)', async () => {
    const full = new KubernetesCluster(kubeConfigFor(server.url, 'test-token'), {
      cluster: 'gpu-east',
      namespace: NS,
      place: () => ({ kind: 'none', reason: { code: 'GPU_CAPACITY_BUSY', message: 'no room', limit: 0, requested: 8, policy: 'cluster/gpu-east' } }),
    });
    expect(await full.create(aJob('no-room').build())).toMatchObject({ ok: false, reason: { code: 'GPU_CAPACITY_BUSY' } });
    expect(server.calls()).toEqual([`GET ${path(jobName('no-room'))}`]);
    // A retried dispatch of a Job created earlier keeps its place, room or not.
    await backend.create(aJob('no-room-retry').build());
    server.requests.length = 0;
    expect(await full.create(aJob('no-room-retry').build())).toEqual({ ok: true, nodes: ['h100-03'] });
    expect(server.requests.filter((r) => r.method !== 'GET')).toEqual([]);
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
    expect(await backend.status('gl-unknown')).toEqual({
      name: 'gl-unknown',
      phase: 'Deleted',
      nodes: [],
      progressSeconds: 0,
      gpuSeconds: 0,
      tokens: 0,
      message: `job gl-unknown not found in namespace ${NS}`,
    });
  });

  it('status follows the Job controller: each condition → its phase, usage stops at completion', async () => {
    const spec = aJob('status-1').gpus(2).build();
    const { name } = spec;
    await backend.create(spec);
    const resumedAt = clock.now;
    await backend.resume(name);
    const at = (s: number) => new Date(resumedAt.getTime() + s * 1000).toISOString();
    const steps: { status: Record<string, unknown>; advance: number; wantPhase: JobPhase; wantGpuSeconds: number; wantMessage?: string | null }[] = [
      {
        status: { startTime: at(0), conditions: [{ type: 'Suspended', status: 'False', reason: 'JobResumed', lastTransitionTime: at(0) }] },
        advance: 10,
        wantPhase: 'Running',
        wantGpuSeconds: 20,
      },
      { status: { startTime: at(0), active: 1, ready: 1 }, advance: 20, wantPhase: 'Running', wantGpuSeconds: 60 },
      {
        status: {
          startTime: at(0),
          succeeded: 1,
          completionTime: at(40),
          conditions: [
            { type: 'SuccessCriteriaMet', status: 'True', lastTransitionTime: at(40) },
            { type: 'Complete', status: 'True', lastTransitionTime: at(40) },
          ],
        },
        advance: 30,
        wantPhase: 'Succeeded',
        wantGpuSeconds: 80,
      },
    ];
    for (const s of steps) {
      server.setStatus(NS, name, s.status);
      clock.advance(s.advance);
      expect(await backend.status(name)).toMatchObject({ phase: s.wantPhase, gpuSeconds: s.wantGpuSeconds });
    }
    const failed = aJob('status-2').gpus(1).build();
    await backend.create(failed);
    await backend.resume(failed.name);
    server.setStatus(NS, failed.name, {
      failed: 1,
      conditions: [
        {
          type: 'Failed',
          status: 'True',
          reason: 'BackoffLimitExceeded',
          message: 'Job has reached the specified backoff limit',
          lastTransitionTime: clock.now.toISOString(),
        },
      ],
    });
    expect(await backend.status(failed.name)).toMatchObject({ phase: 'Failed', message: 'BackoffLimitExceeded: Job has reached the specified backoff limit' });
    // Tokens, when the runner writes them on the Job.
    server.jobs.get(`${NS}/${name}`)!.metadata.annotations![Annotation.tokens] = '12345';
    expect((await backend.status(name))!.tokens).toBe(12345);
  });

  it('resume with a run limit: activeDeadlineSeconds in the patch that unsuspends, renewed after a suspend (startTime cleared first), removed without a limit', async () => {
    const spec = aJob('limit-1').gpus(1).build();
    const { name } = spec;
    const stored = () => server.jobs.get(`${NS}/${name}`)!;
    await backend.create(spec);
    server.requests.length = 0;
    await backend.resume(name, { maxRunSeconds: 600.7 });
    expect(server.calls()).toEqual([`GET ${path(name)}`, `PATCH ${path(name)}?fieldManager=govloop`]);
    expect(server.requests[1]!.body).toEqual({
      metadata: { annotations: { [Annotation.resumedAt]: clock.now.toISOString() }, resourceVersion: expect.any(String) },
      spec: { suspend: false, activeDeadlineSeconds: 600 },
    });
    // The Job controller starts it (status.startTime), then govloop preempts it.
    server.setStatus(NS, name, { startTime: clock.now.toISOString(), active: 1 });
    clock.advance(100);
    await backend.suspend(name);
    server.requests.length = 0;
    await backend.resume(name, { maxRunSeconds: 300 });
    // The deadline counts from status.startTime: the one from the first run is cleared before the Job is unsuspended.
    expect(server.calls()).toEqual([
      `GET ${path(name)}`,
      `PATCH ${path(name)}/status?fieldManager=govloop`,
      `GET ${path(name)}`,
      `PATCH ${path(name)}?fieldManager=govloop`,
    ]);
    expect(server.requests[1]!.body).toEqual({ status: { startTime: null } });
    expect(server.requests[3]!.body).toMatchObject({ spec: { suspend: false, activeDeadlineSeconds: 300 } });
    expect(stored().spec.activeDeadlineSeconds).toBe(300);
    expect(stored().status.startTime).toBeUndefined();
    // Resumed without a limit: the old deadline would stop this run at a limit nobody set for it.
    clock.advance(10);
    await backend.suspend(name);
    server.requests.length = 0;
    await backend.resume(name);
    expect(server.calls()).toEqual([`GET ${path(name)}`, `PATCH ${path(name)}?fieldManager=govloop`]);
    expect(server.requests[1]!.body).toMatchObject({ spec: { suspend: false, activeDeadlineSeconds: null } });
    expect(stored().spec.activeDeadlineSeconds).toBeUndefined();
  });

  it('under 1 s of run limit left: the Job stays suspended and reads Failed at its run limit; metering does not start', async () => {
    const spec = aJob('limit-gone').gpus(2).build();
    const { name } = spec;
    await backend.create(spec);
    await backend.resume(name, { maxRunSeconds: 50 });
    clock.advance(50);
    await backend.suspend(name);
    server.requests.length = 0;
    await backend.resume(name, { maxRunSeconds: 0.4 });
    expect(server.calls()).toEqual([`GET ${path(name)}`, `PATCH ${path(name)}?fieldManager=govloop`]);
    expect(server.requests[1]!.body).toEqual({
      metadata: { annotations: { [Annotation.runLimitExhausted]: '0.4' }, resourceVersion: expect.any(String) },
    });
    expect(server.jobs.get(`${NS}/${name}`)!.spec.suspend).toBe(true);
    clock.advance(1000);
    expect(await backend.status(name)).toEqual({
      name,
      phase: 'Failed',
      nodes: [],
      progressSeconds: 50,
      gpuSeconds: 100,
      tokens: 0,
      message: "RunLimitExhausted: the task's caps left 0.4 s of run time (under 1 s), so govloop did not resume the Job",
      deadlineExceeded: true,
    });
    // Idempotent: the same answer again writes nothing.
    server.requests.length = 0;
    await backend.resume(name, { maxRunSeconds: 0.4 });
    expect(server.calls()).toEqual([`GET ${path(name)}`]);
    // What is left is recorded to the millisecond.
    await backend.resume(name, { maxRunSeconds: 0.1 + 0.2 });
    expect(server.jobs.get(`${NS}/${name}`)!.metadata.annotations![Annotation.runLimitExhausted]).toBe('0.3');
    // A NaN limit is a bug, not a limit: refused, nothing written.
    const err = await backend.resume(name, { maxRunSeconds: Number.NaN }).catch((e: unknown) => e);
    expect(err).toMatchObject({ type: KubernetesErrorType.Invalid, nonRetryable: true });
    expect((err as Error).message).toBe(`kubernetes: resume job ${name}: run limit maxRunSeconds must be a number of seconds, got NaN`);
  });

  it('status: a Job the Job controller stopped at its deadline reads Failed with deadlineExceeded; metered up to the condition', async () => {
    const spec = aJob('limit-hit').gpus(4).build();
    const { name } = spec;
    await backend.create(spec);
    const resumedAt = clock.now;
    await backend.resume(name, { maxRunSeconds: 120 });
    const at = (s: number) => new Date(resumedAt.getTime() + s * 1000).toISOString();
    const deadline = { reason: 'DeadlineExceeded', message: 'Job was active longer than specified deadline' };
    // A slow controller: the condition comes 9 s after resumed-at + 120 s.
    server.setStatus(NS, name, {
      startTime: at(2),
      active: 1,
      terminating: 1,
      conditions: [{ type: 'FailureTarget', status: 'True', lastTransitionTime: at(129), lastProbeTime: at(129), ...deadline }],
    });
    clock.advance(500);
    expect(await backend.status(name)).toMatchObject({
      phase: 'Failed',
      deadlineExceeded: true,
      message: 'DeadlineExceeded: Job was active longer than specified deadline',
      gpuSeconds: 129 * 4,
    });
    // Another failure is no deadline.
    const other = aJob('limit-other').gpus(1).build();
    await backend.create(other);
    await backend.resume(other.name, { maxRunSeconds: 120 });
    server.setStatus(NS, other.name, { conditions: [{ type: 'Failed', status: 'True', reason: 'BackoffLimitExceeded', lastTransitionTime: at(510) }] });
    expect(await backend.status(other.name)).not.toHaveProperty('deadlineExceeded');
  });

  it('stopMarginSeconds: 20 s by default (the controller syncs, a failover, clock skew), an option, never negative', () => {
    expect(backend.stopMarginSeconds).toBe(DEFAULT_STOP_MARGIN_SECONDS);
    expect(DEFAULT_STOP_MARGIN_SECONDS).toBe(20);
    const apis = { jobs: {} as never, core: {} as never };
    expect(new KubernetesCluster(apis, { cluster: 'c', namespace: NS, stopMarginSeconds: 45 }).stopMarginSeconds).toBe(45);
    expect(() => new KubernetesCluster(apis, { cluster: 'c', namespace: NS, stopMarginSeconds: -1 })).toThrow(
      'kubernetes cluster c: stopMarginSeconds must be a number of seconds ≥ 0, got -1',
    );
  });

  it('a concurrent write (409 Conflict) makes resume read again and retry', async () => {
    const spec = aJob('conflict-1').build();
    await backend.create(spec);
    server.requests.length = 0;
    server.failNext('PATCH', 409);
    await backend.resume(spec.name);
    expect(server.calls()).toEqual([
      `GET ${path(spec.name)}`,
      `PATCH ${path(spec.name)}?fieldManager=govloop`,
      `GET ${path(spec.name)}`,
      `PATCH ${path(spec.name)}?fieldManager=govloop`,
    ]);
    expect((await backend.status(spec.name))!.phase).toBe('Running');
  });

  const failures: {
    name: string;
    method: string;
    code: number;
    call: (b: KubernetesCluster) => Promise<unknown>;
    wantType: string;
    wantRetryable: boolean;
    wantMessage: RegExp;
  }[] = [
    {
      name: '403 on create names the missing permission',
      method: 'POST',
      code: 403,
      call: (b) => b.create(aJob('forbidden-1').build()),
      wantType: KubernetesErrorType.Api,
      wantRetryable: true,
      wantMessage:
        /^kubernetes: create job gl-forbidden-1-[0-9a-f]{16} in namespace govloop: HTTP 403: Forbidden: jobs\.batch is forbidden: User "system:serviceaccount:govloop:dispatcher" cannot create resource "jobs".*needs create\/get\/patch\/delete on jobs\.batch/,
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
        return b.delete(jobName('del-500'));
      },
      wantType: KubernetesErrorType.Api,
      wantRetryable: true,
      wantMessage: /^kubernetes: delete job gl-del-500-[0-9a-f]{16} in namespace govloop: HTTP 500: InternalError/,
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
      await expect
        .poll(() => events.filter((e) => e.taskId === 'watched-1').map((e) => `${e.type}:${e.phase}`))
        .toEqual(['ADDED:Suspended', 'MODIFIED:Running', 'MODIFIED:Succeeded', 'MODIFIED:Deleted', 'DELETED:Deleted']);
      expect(server.requests.find((r) => r.query.watch)?.query).toMatchObject({ watch: 'true', labelSelector: 'govloop.io/task', allowWatchBookmarks: 'true' });
    } finally {
      w.stop();
    }
  });

  it('watchJobs reconnects from the last resourceVersion when the server ends the stream', async () => {
    const events: JobEvent[] = [];
    const w = backend.watchJobs(
      (e) => events.push(e),
      () => {},
      50,
    );
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
      await expect
        .poll(() => events.filter((e) => e.taskId === 'watched-2').map((e) => `${e.type}:${e.phase}`))
        .toEqual(['ADDED:Suspended', 'MODIFIED:Running']);
    } finally {
      w.stop();
    }
  });
});

describe('KubernetesCluster: gang Service, checkpoint, placement again, capacity (recorded API server)', () => {
  const server = new FakeApiServer({ namespaces: [NS, 'ml'], token: 'test-token' });
  const clock = new ManualClock();
  let kc: ReturnType<typeof kubeConfigFor>;
  let backend: KubernetesCluster;
  const jobs = (name?: string) => `/apis/batch/v1/namespaces/${NS}/jobs${name ? `/${name}` : ''}`;
  const services = (name?: string) => `/api/v1/namespaces/${NS}/services${name ? `/${name}` : ''}`;
  /** The pod the Job controller would make for index `i`. */
  const podOf = (job: string, i: number, phase = 'Running', node = `h100-0${i + 4}`) =>
    server.addPod({
      metadata: {
        name: `${job}-${i}-x${i}`,
        namespace: NS,
        labels: { 'batch.kubernetes.io/job-name': job, 'app.kubernetes.io/managed-by': 'govloop' },
        annotations: { 'batch.kubernetes.io/job-completion-index': String(i) },
      },
      spec: { nodeName: node, containers: [{ name: 'task', image: 'x', resources: { limits: { 'nvidia.com/gpu': '8' } } }] },
      status: { phase },
    });

  beforeAll(async () => {
    const url = await server.start();
    kc = kubeConfigFor(url, 'test-token');
    backend = new KubernetesCluster(kc, {
      cluster: 'gpu-east',
      namespace: NS,
      clock: clock.fn,
      place: (s) => ({ kind: 'nodes', nodes: s.gpus > 8 ? ['h100-04', 'h100-05'] : ['h100-03'] }),
    });
  });
  afterAll(() => server.stop());
  afterEach(() => {
    server.requests.length = 0;
  });

  it('a multi-pod gang gets a headless Service owned by its Job (created once, deleted with the Job); a one-pod Job none', async () => {
    const spec = aJob('gang-1').gpus(16).build();
    const { name } = spec;
    expect(await backend.create(spec)).toEqual({ ok: true, nodes: ['h100-04', 'h100-05'] });
    expect(server.calls()).toEqual([`POST ${jobs()}?fieldManager=govloop`, `POST ${services()}?fieldManager=govloop`]);
    const job = server.jobs.get(`${NS}/${name}`)!;
    const svc = server.services.get(`${NS}/${name}`)!;
    expect(svc.spec).toEqual({
      clusterIP: 'None',
      selector: { 'batch.kubernetes.io/job-name': name },
      publishNotReadyAddresses: true,
      ports: [{ name: 'rendezvous', port: 29500, targetPort: 29500, protocol: 'TCP' }],
    });
    expect(svc.metadata.ownerReferences).toEqual([
      { apiVersion: 'batch/v1', kind: 'Job', name, uid: job.metadata.uid, controller: true, blockOwnerDeletion: true },
    ]);
    expect((job.spec.template as { spec: { subdomain: string } }).spec.subdomain).toBe(name);

    // Again (a retried dispatch): both exist, nothing is written.
    server.requests.length = 0;
    expect(await backend.create(spec)).toEqual({ ok: true, nodes: ['h100-04', 'h100-05'] });
    expect(server.calls()).toEqual([
      `POST ${jobs()}?fieldManager=govloop`,
      `GET ${jobs(name)}`,
      `POST ${services()}?fieldManager=govloop`,
      `GET ${services(name)}`,
    ]);

    // One pod: no Service.
    server.requests.length = 0;
    await backend.create(aJob('single-1').build());
    expect(server.calls()).toEqual([`POST ${jobs()}?fieldManager=govloop`]);

    // Cancel: the Job (foreground) and its Service.
    server.requests.length = 0;
    await backend.delete(name);
    expect(server.calls()).toEqual([`GET ${jobs(name)}`, `DELETE ${jobs(name)}?propagationPolicy=Foreground`, `DELETE ${services(name)}`]);
    expect(server.services.has(`${NS}/${name}`)).toBe(false);
    await backend.delete(jobName('single-1'));
    expect(server.calls().filter((c) => c.includes('/services'))).toHaveLength(1);
  });

  it("a Service left by an earlier Job of the task is adopted (ownerReference to the new uid); someone else's Service of the name is refused", async () => {
    const spec = aJob('gang-2').gpus(16).build();
    const stale = gangServiceManifest(
      {
        ...jobManifest(spec, { kind: 'nodes', nodes: ['a', 'b'] }, opts),
        metadata: { ...jobManifest(spec, { kind: 'nodes', nodes: ['a', 'b'] }, opts).metadata, uid: 'old-uid' },
      },
      opts,
    );
    await kc.makeApiClient(CoreV1Api).createNamespacedService({ namespace: NS, body: stale });
    server.requests.length = 0;
    await backend.create(spec);
    const uid = server.jobs.get(`${NS}/${spec.name}`)!.metadata.uid;
    expect(server.calls()).toEqual([
      `POST ${jobs()}?fieldManager=govloop`,
      `POST ${services()}?fieldManager=govloop`,
      `GET ${services(spec.name)}`,
      `PATCH ${services(spec.name)}?fieldManager=govloop`,
    ]);
    expect(server.services.get(`${NS}/${spec.name}`)!.metadata.ownerReferences).toEqual([expect.objectContaining({ uid, blockOwnerDeletion: true })]);

    const theirs = aJob('gang-3').gpus(16).build();
    await kc
      .makeApiClient(CoreV1Api)
      .createNamespacedService({ namespace: NS, body: { metadata: { name: theirs.name }, spec: { clusterIP: 'None', selector: { app: 'x' } } } });
    const err = await backend.create(theirs).catch((e: unknown) => e);
    expect(err).toMatchObject({ type: KubernetesErrorType.NameTaken, nonRetryable: true });
    expect((err as Error).message).toBe(
      `kubernetes: service ${theirs.name} in namespace ${NS} is not the rendezvous Service of task gang-3 (not govloop's); delete it or rename`,
    );
  });

  it("checkpoint: stamps the running Job and its unfinished pods; the trainer's checkpoint-seconds drive status, suspend and the lost seconds", async () => {
    const spec = aJob('ckpt-1').gpus(2).build();
    const { name } = spec;
    await backend.create(spec);
    await backend.checkpoint(name); // suspended: nothing to checkpoint
    expect(server.jobs.get(`${NS}/${name}`)!.metadata.annotations![Annotation.checkpointRequestedAt]).toBeUndefined();
    await backend.resume(name);
    podOf(name, 0, 'Running', 'h100-03');
    podOf(name, 1, 'Failed', 'h100-03');
    podOf('gl-someone-else', 0, 'Running');
    clock.advance(100);
    server.requests.length = 0;
    await backend.checkpoint(name);
    const requestedAt = clock.now.toISOString();
    expect(server.calls()).toEqual([
      `GET ${jobs(name)}`,
      `PATCH ${jobs(name)}?fieldManager=govloop`,
      `GET /api/v1/namespaces/${NS}/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3D${name}`,
      `PATCH /api/v1/namespaces/${NS}/pods/${name}-0-x0?fieldManager=govloop`,
    ]);
    const stamp = { metadata: { annotations: { [Annotation.checkpointRequestedAt]: requestedAt } } };
    expect(server.requests.filter((r) => r.method === 'PATCH').map((r) => [r.contentType, r.body])).toEqual([
      ['application/merge-patch+json', stamp],
      ['application/merge-patch+json', stamp],
    ]);
    // The pod keeps its own annotations (the completion index); the request is added.
    expect(server.pods.get(`${NS}/${name}-0-x0`)!.metadata.annotations).toEqual({
      'batch.kubernetes.io/job-completion-index': '0',
      [Annotation.checkpointRequestedAt]: requestedAt,
    });
    expect(server.pods.get(`${NS}/${name}-1-x1`)!.metadata.annotations![Annotation.checkpointRequestedAt]).toBeUndefined();
    expect(server.pods.get(`${NS}/gl-someone-else-0-x0`)!.metadata.annotations![Annotation.checkpointRequestedAt]).toBeUndefined();
    // Before the trainer answers, nothing is known about a checkpoint.
    expect(await backend.status(name)).toEqual({ name, phase: 'Running', nodes: ['h100-03'], progressSeconds: 100, gpuSeconds: 200, tokens: 0, message: null });

    // The trainer saved the state of its first 100 seconds and says so on its Job (a merge patch, as a trainer would send it).
    await kc
      .makeApiClient(BatchV1Api)
      .patchNamespacedJob({ name, namespace: NS, body: { metadata: { annotations: { [Annotation.checkpointSeconds]: '100' } } } }, mergePatchHeader);
    clock.advance(30);
    expect(await backend.status(name)).toMatchObject({ phase: 'Running', progressSeconds: 130, checkpointSeconds: 100, lostSeconds: 0, gpuSeconds: 260 });
    await backend.suspend(name);
    expect(await backend.status(name)).toEqual({
      name,
      phase: 'Suspended',
      nodes: [],
      progressSeconds: 100,
      checkpointSeconds: 100,
      lostSeconds: 30,
      gpuSeconds: 260,
      tokens: 0,
      message: null,
    });

    // Readmitted: placed again, resumed; progress grows from the checkpoint, the lost seconds stay.
    clock.advance(500);
    await backend.create(spec);
    await backend.resume(name);
    clock.advance(50);
    expect(await backend.status(name)).toMatchObject({
      phase: 'Running',
      nodes: ['h100-03'],
      progressSeconds: 150,
      checkpointSeconds: 100,
      lostSeconds: 30,
      gpuSeconds: 360,
    });
    // Preempted again with no newer checkpoint: back to 100 once more, 50 more lost.
    await backend.suspend(name);
    expect(await backend.status(name)).toMatchObject({ phase: 'Suspended', progressSeconds: 100, checkpointSeconds: 100, lostSeconds: 80, gpuSeconds: 360 });
  });

  it('a Job without a checkpoint keeps its progress over a preemption and reports nothing lost (as before the protocol)', async () => {
    const spec = aJob('ckpt-none').gpus(4).build();
    await backend.create(spec);
    await backend.resume(spec.name);
    clock.advance(70);
    await backend.checkpoint(spec.name); // the trainer never answers
    await backend.suspend(spec.name);
    const st = await backend.status(spec.name);
    expect(st).toEqual({ name: spec.name, phase: 'Suspended', nodes: [], progressSeconds: 70, gpuSeconds: 280, tokens: 0, message: null });
    expect(st!.lostSeconds).toBeUndefined();
  });

  it('a preempted Job placed elsewhere on readmission: status.startTime reset, then its node affinity rewritten', async () => {
    let target = ['h100-06'];
    const moving = new KubernetesCluster(kc, {
      cluster: 'gpu-east',
      namespace: NS,
      clock: clock.fn,
      place: () => ({ kind: 'nodes', nodes: [...target], explanation: `on ${target.join(',')}` }),
    });
    const spec = aJob('move-1').gpus(8).build();
    const { name } = spec;
    expect(await moving.create(spec)).toEqual({ ok: true, nodes: ['h100-06'], explanation: 'on h100-06' });
    await moving.resume(name);
    server.setStatus(NS, name, { startTime: clock.now.toISOString(), active: 1 }); // the Job controller started it
    clock.advance(10);
    await moving.suspend(name);
    target = ['h100-07'];
    server.requests.length = 0;
    expect(await moving.create(spec)).toEqual({ ok: true, nodes: ['h100-07'], explanation: 'on h100-07' });
    expect(server.calls()).toEqual([
      `POST ${jobs()}?fieldManager=govloop`,
      `GET ${jobs(name)}`,
      `GET ${jobs(name)}`,
      `PATCH ${jobs(name)}/status?fieldManager=govloop`,
      `GET ${jobs(name)}`,
      `PATCH ${jobs(name)}?fieldManager=govloop`,
    ]);
    const patches = server.requests.filter((r) => r.method === 'PATCH').map((r) => r.body as Record<string, unknown>);
    expect(patches[0]).toEqual({ status: { startTime: null } });
    expect(patches[1]).toMatchObject({
      metadata: { annotations: { [Annotation.nodes]: 'h100-07', [Annotation.preemptedAt]: null } },
      spec: { template: { spec: { affinity: expect.any(Object) } } },
    });
    const stored = server.jobs.get(`${NS}/${name}`)!;
    expect(nodeTerms(stored as unknown as V1Job)).toEqual([
      { key: 'kubernetes.io/hostname', operator: 'In', values: ['h100-07'] },
      { key: 'govloop.io/gpu-type', operator: 'In', values: ['H100'] },
    ]);
    await moving.resume(name);
    expect(await moving.status(name)).toMatchObject({ phase: 'Running', nodes: ['h100-07'], progressSeconds: 10 });
    // The recorded server, like the real one, refuses a template change once the Job has started.
    server.setStatus(NS, name, { startTime: clock.now.toISOString() });
    const refused = await kc
      .makeApiClient(BatchV1Api)
      .patchNamespacedJob({ name, namespace: NS, body: { spec: { template: { spec: { affinity: null } } } } }, mergePatchHeader)
      .catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 422 });
  });

  it("a preempted Job whose new placement needs another pod shape waits (Kubernetes keeps a Job's pods), saying why", async () => {
    let nodes = ['h100-06'];
    const b = new KubernetesCluster(kc, { cluster: 'gpu-east', namespace: NS, clock: clock.fn, place: () => ({ kind: 'nodes', nodes }) });
    const spec = aJob('move-2').gpus(8).build();
    await b.create(spec);
    await b.resume(spec.name);
    await b.suspend(spec.name);
    nodes = ['h100-06', 'h100-07'];
    const r = await b.create(spec);
    expect(r).toMatchObject({ ok: false, reason: { code: 'GPU_CAPACITY_BUSY', policy: 'cluster/gpu-east' } });
    expect(!r.ok && r.reason.message).toBe(
      `job ${spec.name} runs 1 pod(s) with {"nvidia.com/gpu":"8"} each; the placement now would give 2 pod(s) with {"nvidia.com/gpu":"4"}, and a Job's pods cannot change: waiting until that shape fits`,
    );
    expect(nodesOfStored(server.jobs.get(`${NS}/${spec.name}`)!)).toEqual([]);
  });

  const forbidden: { name: string; method: string; resource: string; call: () => Promise<unknown>; want: RegExp }[] = [
    {
      name: 'creating the gang Service',
      method: 'POST',
      resource: 'services',
      call: () => backend.create(aJob('rbac-svc').gpus(16).build()),
      want: /^kubernetes: create service gl-rbac-svc-[0-9a-f]{16} in namespace govloop: HTTP 403: Forbidden: services is forbidden: .*cannot create resource "services".* \(the service account needs create\/get\/patch\/delete on services in this namespace; deploy\/rbac.yaml has all govloop needs\)$/,
    },
    {
      name: 'stamping a pod with the checkpoint request',
      method: 'PATCH',
      resource: 'pods',
      call: async () => {
        const spec = aJob('rbac-pod').build();
        await backend.create(spec);
        await backend.resume(spec.name);
        podOf(spec.name, 0);
        return backend.checkpoint(spec.name);
      },
      want: /^kubernetes: checkpoint pod gl-rbac-pod-[0-9a-f]{16}-0-x0 of job gl-rbac-pod-[0-9a-f]{16} in namespace govloop: HTTP 403: .*\(the service account needs list\/patch on pods in this namespace/,
    },
    {
      name: 'listing the Nodes for capacity',
      method: 'GET',
      resource: 'nodes',
      call: () => backend.capacity('H100'),
      want: /^kubernetes: list nodes labelled govloop.io\/gpu-type: HTTP 403: Forbidden: nodes is forbidden: .*cannot list resource "nodes" in API group "" at the cluster scope \(the service account needs get\/list on nodes \(a ClusterRole\)/,
    },
  ];
  it.each(forbidden)('403 on $name names what the service account needs', async (c) => {
    server.failNext(c.method, 403, c.resource);
    const err = await c.call().catch((e: unknown) => e);
    expect(err).toMatchObject({ type: KubernetesErrorType.Api, nonRetryable: false });
    expect((err as Error).message).toMatch(c.want);
  });
});

describe('KubernetesCluster: capacity and govloop placement from the Nodes (recorded API server)', () => {
  const server = new FakeApiServer({ namespaces: ['cap', 'place', 'bare', 'ml', 'race'], token: 't' });
  const clock = new ManualClock();
  let kc: ReturnType<typeof kubeConfigFor>;
  const node = (name: string, labels: Record<string, string>, gpus = 8, extra: { unschedulable?: boolean } = {}) =>
    server.addNode({
      metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } },
      spec: extra.unschedulable ? { unschedulable: true } : {},
      status: { allocatable: { cpu: '96', memory: '1Ti', 'nvidia.com/gpu': String(gpus) }, conditions: [{ type: 'Ready', status: 'True' }] },
    });
  const pod = (ns: string, name: string, nodeName: string, gpus: number, more: { phase?: string; labels?: Record<string, string> } = {}) =>
    server.addPod({
      metadata: { name, namespace: ns, labels: more.labels ?? {} },
      spec: { nodeName, containers: [{ name: 'c', image: 'x', resources: { limits: { 'nvidia.com/gpu': String(gpus) } } }] },
      status: { phase: more.phase ?? 'Running' },
    });

  beforeAll(async () => {
    kc = kubeConfigFor(await server.start(), 't');
    const h100 = { 'govloop.io/gpu-type': 'H100', 'govloop.io/rack': 'r1', 'govloop.io/block': 'b1' };
    node('n1', h100);
    node('n2', h100);
    node('n3', { 'govloop.io/gpu-type': 'A100', 'govloop.io/rack': 'r2', 'govloop.io/block': 'b1' });
    node('n4', h100, 8, { unschedulable: true });
  });
  afterAll(() => server.stop());

  it('capacity: labelled, schedulable nodes of the type; GPUs held by govloop Jobs (by annotation) and other pods (by limits); running Jobs with what suspending loses', async () => {
    const place = (nodes: string[] | null) => (nodes ? { kind: 'nodes' as const, nodes } : { kind: 'any' as const });
    let where: string[] | null = ['n1'];
    const b = new KubernetesCluster(kc, { cluster: 'gpu-east', namespace: 'cap', clock: clock.fn, place: () => place(where) });
    // cap-run: 8 on n1, running 100 s, checkpointed at 40.
    const run = aJob('cap-run').gpus(8).build();
    await b.create(run);
    await b.resume(run.name);
    // cap-held: 4 on n2, created, not resumed yet: holds n2.
    where = ['n2'];
    await b.create(aJob('cap-held').gpus(4).build());
    // cap-pre: was on n2, preempted: holds nothing.
    const pre = aJob('cap-pre').gpus(4).build();
    await b.create(pre);
    await b.resume(pre.name);
    await b.suspend(pre.name);
    // cap-any: 2 GPUs, the kube-scheduler put its pod on n2.
    where = null;
    const anyJob = aJob('cap-any').gpus(2).build();
    await b.create(anyJob);
    await b.resume(anyJob.name);
    pod('cap', 'gl-cap-any-abc', 'n2', 2, { labels: { 'batch.kubernetes.io/job-name': anyJob.name, 'app.kubernetes.io/managed-by': 'govloop' } });
    // Not govloop's: a notebook with 1 GPU on n2 (counted), a finished one (not), one on the cordoned node (not a node of the answer).
    pod('ml', 'notebook', 'n2', 1);
    pod('ml', 'done', 'n2', 4, { phase: 'Succeeded' });
    pod('ml', 'on-n4', 'n4', 8);
    // An A100 Job: another type.
    where = ['n3'];
    const a100 = { ...aJob('cap-a100').gpus(8).build(), gpuType: 'A100' };
    await b.create(a100);
    await b.resume(a100.name);
    clock.advance(100);
    await kc
      .makeApiClient(BatchV1Api)
      .patchNamespacedJob(
        { name: run.name, namespace: 'cap', body: { metadata: { annotations: { [Annotation.checkpointSeconds]: '40' } } } },
        mergePatchHeader,
      );

    server.requests.length = 0;
    const cap = await b.capacity('H100');
    expect(cap).toEqual({
      nodes: [
        { name: 'n1', gpus: 8, used: 8 },
        { name: 'n2', gpus: 8, used: 7 },
      ],
      jobs: [
        // runSeconds: since resume() stamped govloop.io/resumed-at (policies.preemption.minRunSeconds).
        { taskId: 'cap-run', node: 'n1', gpus: 8, lostSecondsIfSuspended: 60, runSeconds: 100 },
        // No checkpoint reported: suspending would lose all of it.
        { taskId: 'cap-any', node: 'n2', gpus: 2, lostSecondsIfSuspended: 100, runSeconds: 100 },
      ],
    });
    expect(server.calls().sort()).toEqual(
      [
        '/api/v1/nodes?labelSelector=govloop.io%2Fgpu-type',
        '/api/v1/pods?fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed',
        '/apis/batch/v1/namespaces/cap/jobs?labelSelector=govloop.io%2Ftask',
      ]
        .map((p) => `GET ${p}`)
        .sort(),
    );
    expect((cap as { fits?: unknown }).fits).toBeUndefined(); // a placement hook, not govloop's: no in-memory placement
    expect(await b.capacity('A100')).toMatchObject({ nodes: [{ name: 'n3', gpus: 8, used: 8 }], jobs: [{ taskId: 'cap-a100', node: 'n3' }] });
  });

  it('govloop placement pins each Job to the node place() picks, around what is held; no room is a reason; concurrent creates never book a GPU twice', async () => {
    const notes: string[] = [];
    const b = new KubernetesCluster(kc, {
      cluster: 'gpu-east',
      namespace: 'place',
      clock: clock.fn,
      placement: 'govloop',
      onPlacementNote: (n) => notes.push(n),
      countOtherPods: false,
    });
    const first = await b.create(aJob('pl-1').gpus(6).build());
    expect(first).toMatchObject({ ok: true, nodes: [expect.stringMatching(/^n[12]$/)], explanation: expect.stringMatching(/node/) });
    const job1 = server.jobs.get(`place/${jobName('pl-1')}`)!;
    expect(nodeTerms(job1 as unknown as V1Job)[0]).toEqual({ key: 'kubernetes.io/hostname', operator: 'In', values: first.ok ? first.nodes : [] });
    // Best fit: 2 more GPUs go next to the 6, not onto the empty node.
    expect(await b.create(aJob('pl-2').gpus(2).build())).toMatchObject({ ok: true, nodes: first.ok ? first.nodes : [] });
    // Two 6-GPU Jobs at once, 8 GPUs free (on the other node): one is placed, the other waits; never both.
    const pair = await Promise.all([b.create(aJob('pl-3').gpus(6).build()), b.create(aJob('pl-4').gpus(6).build())]);
    expect(pair.map((r) => r.ok).sort()).toEqual([false, true]);
    const other = pair.find((r) => r.ok)!;
    expect(other.ok && other.nodes[0]).not.toBe(first.ok && first.nodes[0]);
    expect(pair.find((r) => !r.ok)).toMatchObject({ ok: false, reason: { code: 'GPU_CAPACITY_BUSY', policy: 'cluster/gpu-east' } });
    expect(await b.create(aJob('pl-5').gpus(2).build())).toMatchObject({ ok: true, nodes: other.ok ? other.nodes : [] });
    // Full: no room, with the placement's words; nothing created.
    server.requests.length = 0;
    const full = await b.create(aJob('pl-6').gpus(1).build());
    expect(full).toMatchObject({ ok: false, reason: { code: 'GPU_CAPACITY_BUSY', policy: 'cluster/gpu-east' } });
    expect(server.requests.filter((r) => r.method === 'POST')).toEqual([]);
    // The pods govloop's own Jobs are listed in the namespace only (countOtherPods: false).
    expect(server.requests.filter((r) => r.path.endsWith('/pods')).map((r) => [r.path, r.query])).toEqual([
      [
        '/api/v1/namespaces/place/pods',
        { labelSelector: 'app.kubernetes.io/managed-by=govloop', fieldSelector: 'status.phase!=Succeeded,status.phase!=Failed' },
      ],
    ]);
    // capacity with the request: would it fit once pl-1 is gone? Yes; with nothing freed, no.
    const cap = (await b.capacity('H100', { gpus: 6, gpuType: 'H100', sharing: 'exclusive' })) as Awaited<ReturnType<KubernetesCluster['capacity']>> & {
      fits?: (ids: readonly string[]) => boolean;
    };
    expect(cap.nodes.map((n) => n.used)).toEqual([8, 8]);
    expect(cap.fits!([])).toBe(false);
    expect(cap.fits!(['pl-1'])).toBe(true);
    expect(cap.fits!(['pl-2'])).toBe(false);
    expect(notes).toEqual([]);
  });

  it('two worker processes placing on one cluster at once never book a GPU twice: the placement Lease lets one place at a time', async () => {
    const worker = (identity: string) =>
      new KubernetesCluster(kc, { cluster: 'gpu-race', namespace: 'race', placement: 'govloop', countOtherPods: false, placementLease: { identity } });
    const [w1, w2] = [worker('worker-1'), worker('worker-2')];
    // 16 free H100 GPUs (n1, n2; n4 is cordoned). Six 5-GPU Jobs from the two workers at once: two fit, one per node.
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? w1 : w2).create(aJob(`race-${i}`).gpus(5).build())));
    const placed = results.filter((r) => r.ok);
    expect(placed).toHaveLength(2);
    expect(placed.map((r) => (r.ok ? r.nodes[0] : '')).sort()).toEqual(['n1', 'n2']);
    expect(results.filter((r) => !r.ok)).toEqual(
      Array.from({ length: 4 }, () => expect.objectContaining({ reason: expect.objectContaining({ code: 'GPU_CAPACITY_BUSY' }) })),
    );
    expect((await w2.capacity('H100')).nodes).toEqual([
      { name: 'n1', gpus: 8, used: 5 },
      { name: 'n2', gpus: 8, used: 5 },
    ]);
    // Each create took the Lease and gave it back: six acquisitions, free now.
    const lease = server.leases.get('race/govloop-placement-gpu-race') as { spec: { holderIdentity?: string; leaseTransitions?: number } } | undefined;
    expect(lease?.spec).toMatchObject({ leaseTransitions: 6 });
    expect(lease?.spec.holderIdentity).toBeUndefined();
  });

  it('the placement Lease: a live holder makes another worker wait, then fail naming the holder; an expired one is taken over', async () => {
    const api = kc.makeApiClient(CoordinationV1Api);
    const lease = (identity: string) => new PlacementLease(api, 'race', 'lease-protocol', { identity, durationSeconds: 15, waitMillis: 300, clock: clock.fn });
    const [a, b] = [lease('worker-a'), lease('worker-b')];
    await a.acquire();
    await expect(b.acquire()).rejects.toThrow(/lease race\/lease-protocol is held by worker-a .*waited 300 ms/);
    // worker-a died holding it: 16 s later it has expired and worker-b takes it.
    clock.advance(16);
    await b.acquire();
    const held = () => server.leases.get('race/lease-protocol') as { spec: { holderIdentity?: string; leaseTransitions?: number; renewTime?: string } };
    expect(held().spec).toMatchObject({ holderIdentity: 'worker-b', leaseTransitions: 2, renewTime: expect.stringMatching(/\.\d{6}Z$/) });
    // worker-a's late release does not free what is no longer its own.
    await a.release();
    expect(held().spec.holderIdentity).toBe('worker-b');
    await b.release();
    expect(held().spec.holderIdentity).toBeUndefined();
    await a.acquire();
    expect(held().spec.holderIdentity).toBe('worker-a');
    await a.release();
  });

  it('MIG: pins a Job to the node that advertises enough free instances of its profile (best fit); none free: it waits', async () => {
    const srv = new FakeApiServer({ namespaces: ['govloop'], token: 't' });
    const url = await srv.start();
    try {
      const migNode = (name: string, instances: number) =>
        srv.addNode({
          metadata: { name, labels: { 'kubernetes.io/hostname': name, 'govloop.io/gpu-type': 'A100' } },
          status: { allocatable: { cpu: '64', memory: '512Gi', 'nvidia.com/mig-3g.40gb': String(instances) }, conditions: [{ type: 'Ready', status: 'True' }] },
        });
      migNode('mig-a', 2);
      migNode('mig-b', 4);
      const b = new KubernetesCluster(kubeConfigFor(url, 't'), { cluster: 'mig', namespace: 'govloop', placement: 'govloop', countOtherPods: false });
      const migJob = (id: string, n: number) => ({ ...aJob(id).gpus(n, 'mig:3g.40gb').build(), gpuType: 'A100' });
      expect(await b.create(migJob('mig-1', 2))).toMatchObject({ ok: true, nodes: ['mig-a'], explanation: expect.stringMatching(/MIG 3g.40gb/) });
      const job = srv.jobs.get(`govloop/${jobName('mig-1')}`)! as unknown as V1Job;
      expect(nodeTerms(job)[0]).toEqual({ key: 'kubernetes.io/hostname', operator: 'In', values: ['mig-a'] });
      expect(job.spec!.template.spec!.containers[0]!.resources!.limits).toEqual({ 'nvidia.com/mig-3g.40gb': '2' });
      // mig-a is full now: the next two go to mig-b; then 3 more fit nowhere.
      expect(await b.create(migJob('mig-2', 2))).toMatchObject({ ok: true, nodes: ['mig-b'] });
      expect(await b.create(migJob('mig-3', 3))).toMatchObject({
        ok: false,
        reason: { code: 'GPU_CAPACITY_BUSY', message: expect.stringMatching(/at most 2 free on one node \(mig-a 0\/2, mig-b 2\/4\)/) },
      });
    } finally {
      await srv.stop();
    }
  });

  it('falls back to the kube-scheduler when no Node carries govloop.io/gpu-type, and says why once', async () => {
    const bare = new FakeApiServer({ namespaces: ['govloop'], token: 't' });
    const url = await bare.start();
    try {
      bare.addNode({ metadata: { name: 'plain', labels: {} }, status: { allocatable: { 'nvidia.com/gpu': '8' } } });
      const notes: string[] = [];
      const b = new KubernetesCluster(kubeConfigFor(url, 't'), {
        cluster: 'plain',
        namespace: 'govloop',
        placement: 'govloop',
        onPlacementNote: (n) => notes.push(n),
      });
      expect(await b.create(aJob('fb-1').build())).toEqual({ ok: true, nodes: [] });
      expect(await b.create(aJob('fb-2').build())).toEqual({ ok: true, nodes: [] });
      expect(nodeTerms(bare.jobs.get(`govloop/${jobName('fb-1')}`) as unknown as V1Job)).toEqual([
        { key: 'govloop.io/gpu-type', operator: 'In', values: ['H100'] },
      ]);
      expect(notes).toEqual(['govloop placement: the kube-scheduler places 8 H100 (exclusive): no schedulable Node carries the label govloop.io/gpu-type']);
    } finally {
      await bare.stop();
    }
  });
});

describe('the workflow cannot tell it from the simulated cluster: preemption with a checkpoint, round after round', () => {
  const server = new FakeApiServer({ namespaces: [NS], token: 't' });
  const clock = new ManualClock();
  let ledger: Ledger;
  let sim: SimulatedCluster;
  let k8s: KubernetesCluster;
  let kc: ReturnType<typeof kubeConfigFor>;

  beforeAll(async () => {
    ledger = await backends.find((b) => b.name === 'pglite')!.open();
    const config = ClusterFile.parse({
      name: `parity-${randomUUID().slice(0, 8)}`,
      gpuTypes: { H100: { memoryGb: 80, migProfiles: [] } },
      nodes: [{ name: 'h100-03', gpuType: 'H100', gpus: 8, rack: 'r0', block: 'b0' }],
    });
    sim = new SimulatedCluster(ledger.db, config, 1, clock.fn);
    await sim.sync();
    kc = kubeConfigFor(await server.start(), 't');
    k8s = new KubernetesCluster(kc, { cluster: 'parity', namespace: NS, clock: clock.fn, place: () => ({ kind: 'nodes', nodes: ['h100-03'] }) });
  }, 60_000);
  afterAll(async () => {
    await server.stop();
    await ledger?.close();
  });

  it('the same checkpoint, suspend, resume sequence gives the same progress, checkpoint, lost and GPU-seconds on both', async () => {
    const spec = {
      ...aJob(`parity-${randomUUID().slice(0, 8)}`)
        .gpus(4)
        .build(),
      simulation: { durationSeconds: 100_000, tokensPerSecond: 0, failAfterSeconds: null },
    };
    const both = async (f: (b: ClusterBackend) => Promise<unknown>) => {
      await f(sim);
      await f(k8s);
    };
    /** The checkpoint signal; on Kubernetes the trainer answers with the work its checkpoint holds (as the simulated job's checkpoint saves its progress). */
    const checkpoint = async () => {
      await sim.checkpoint(spec.name);
      await k8s.checkpoint(spec.name);
      const progress = (await k8s.status(spec.name))!.progressSeconds;
      await kc
        .makeApiClient(BatchV1Api)
        .patchNamespacedJob(
          { name: spec.name, namespace: NS, body: { metadata: { annotations: { [Annotation.checkpointSeconds]: String(progress) } } } },
          mergePatchHeader,
        );
    };
    const view = (s: Awaited<ReturnType<ClusterBackend['status']>>) =>
      s && {
        phase: s.phase,
        placed: s.nodes.length > 0,
        progressSeconds: s.progressSeconds,
        checkpointSeconds: s.checkpointSeconds,
        lostSeconds: s.lostSeconds,
        gpuSeconds: s.gpuSeconds,
      };
    const same = async (want: ReturnType<typeof view>) => {
      const [a, b] = [view(await sim.status(spec.name)), view(await k8s.status(spec.name))];
      expect({ kubernetes: b }).toEqual({ kubernetes: a });
      expect(a).toEqual(want);
    };
    const lostIfSuspended = async (b: ClusterBackend) => (await b.capacity!('H100')).jobs.find((j) => j.taskId === spec.taskId)?.lostSecondsIfSuspended;

    await both((b) => b.create(spec));
    await both((b) => b.resume(spec.name));
    clock.advance(100);
    await checkpoint();
    clock.advance(30);
    await same({ phase: 'Running', placed: true, progressSeconds: 130, checkpointSeconds: 100, lostSeconds: 0, gpuSeconds: 520 });
    expect(await lostIfSuspended(k8s)).toBe(await lostIfSuspended(sim));
    expect(await lostIfSuspended(k8s)).toBe(30);
    await both((b) => b.suspend(spec.name));
    await same({ phase: 'Suspended', placed: false, progressSeconds: 100, checkpointSeconds: 100, lostSeconds: 30, gpuSeconds: 520 });
    clock.advance(500);
    await both(async (b) => expect(await b.create(spec)).toMatchObject({ ok: true, nodes: ['h100-03'] }));
    await both((b) => b.resume(spec.name));
    clock.advance(50);
    await same({ phase: 'Running', placed: true, progressSeconds: 150, checkpointSeconds: 100, lostSeconds: 30, gpuSeconds: 720 });
    // Preempted again before a newer checkpoint: back to 100 once more.
    await both((b) => b.suspend(spec.name));
    await same({ phase: 'Suspended', placed: false, progressSeconds: 100, checkpointSeconds: 100, lostSeconds: 80, gpuSeconds: 720 });
    await both((b) => b.create(spec));
    await both((b) => b.resume(spec.name));
    clock.advance(20);
    await checkpoint();
    clock.advance(10);
    await same({ phase: 'Running', placed: true, progressSeconds: 130, checkpointSeconds: 120, lostSeconds: 80, gpuSeconds: 840 });
    await both((b) => b.suspend(spec.name));
    await same({ phase: 'Suspended', placed: false, progressSeconds: 120, checkpointSeconds: 120, lostSeconds: 90, gpuSeconds: 840 });
  });

  it('checkpointJob answers the grace the cluster needs: 90 s on Kubernetes (or what the worker says), none on the simulated cluster', async () => {
    const config = loadConfig();
    const spec = aJob(`grace-${randomUUID().slice(0, 8)}`)
      .gpus(1)
      .build();
    const answer = async (backend: ClusterBackend) => {
      await backend.create(spec);
      await backend.resume(spec.name);
      return createActivities({ db: ledger.db, config, backend, dispatchQueue: 'govloop-cluster-parity' }).checkpointJob({ job: spec.name });
    };
    expect(await answer(k8s)).toEqual({ graceMillis: 90_000 });
    expect(await answer(sim)).toEqual({ graceMillis: null });
    const slow = new KubernetesCluster(kc, {
      cluster: 'parity',
      namespace: NS,
      clock: clock.fn,
      place: () => ({ kind: 'nodes', nodes: ['h100-03'] }),
      checkpointGraceMillis: 150_000,
    });
    expect(await createActivities({ db: ledger.db, config, backend: slow, dispatchQueue: 'govloop-cluster-parity' }).checkpointJob({ job: spec.name })).toEqual(
      { graceMillis: 150_000 },
    );
  });
});
