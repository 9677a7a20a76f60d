/**
 * The Kubernetes backend against a real kube-apiserver + etcd (./real-apiserver.ts): the server
 * validates, defaults, authorizes (RBAC) and stores the Jobs the backend writes. Skipped, with the
 * reason printed, where the binaries are absent (a fresh CI machine); the recorded-server tests in
 * ./kubernetes.test.ts cover the same calls there. The fidelity block checks that the recorded
 * server answers the backend's error cases with the same codes and Status bodies as the real one.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ApiException,
  BatchV1Api,
  CoordinationV1Api,
  CoreV1Api,
  KubernetesObjectApi,
  type KubernetesObject,
  PatchStrategy,
  type V1Job,
  type V1Pod,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { KubernetesCluster, KubernetesErrorType, type JobEvent } from '../../cluster/kubernetes/backend';
import { jobName } from '../../cluster/backend';
import { Annotation, jobManifest } from '../../cluster/kubernetes/manifests';
import { repoRoot } from '../support/cli';
import { FakeApiServer } from './fake-apiserver';
import { findBinaries, startRealApiServer, type RealApiServer } from './real-apiserver';
import { ManualClock, aJob, kubeConfigFor } from './support';

const NS = 'govloop';
const bins = findBinaries();
if ('missing' in bins) {
  console.warn(`[kubernetes-apiserver.test] skipped: no real API server here; missing ${bins.missing}`);
}
const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

describe.skipIf('missing' in bins)('KubernetesCluster against a real kube-apiserver', () => {
  let server: RealApiServer;
  let batch: BatchV1Api;
  // Whole seconds: the API server stores condition times at second precision.
  const clock = new ManualClock(new Date(Math.floor(Date.now() / 1000) * 1000));
  let backend: KubernetesCluster;
  const read = (name: string) => batch.readNamespacedJob({ name, namespace: NS });
  /** Plays the Job controller: writes the status subresource. */
  const setStatus = (name: string, status: V1Job['status']) => batch.patchNamespacedJobStatus({ name, namespace: NS, body: { status } }, mergePatch);
  /** Plays the garbage collector: drops the foregroundDeletion finalizer, so the Job goes. */
  const finishDeletion = (name: string) => batch.patchNamespacedJob({ name, namespace: NS, body: { metadata: { finalizers: null } } }, mergePatch);

  let core: CoreV1Api;
  /** Plays the Job controller: the pod it would make for index `i` of an Indexed Job (or its one pod), bound to `node`. */
  const podFromTemplate = async (job: V1Job, i: number | null, node: string): Promise<V1Pod> => {
    const name = job.metadata!.name!;
    const t = job.spec!.template;
    return core.createNamespacedPod({
      namespace: NS,
      body: {
        metadata: {
          name: `${name}-${i ?? 0}-x${i ?? 0}`,
          labels: t.metadata!.labels,
          annotations: { ...t.metadata!.annotations, ...(i !== null ? { 'batch.kubernetes.io/job-completion-index': String(i) } : {}) },
          ownerReferences: [{ apiVersion: 'batch/v1', kind: 'Job', name, uid: job.metadata!.uid!, controller: true, blockOwnerDeletion: true }],
        },
        spec: { ...t.spec!, ...(i !== null ? { hostname: `${name}-${i}` } : {}), nodeName: node },
      },
    });
  };

  beforeAll(async () => {
    if ('missing' in bins) return;
    server = await startRealApiServer(bins);
    const kc = kubeConfigFor(server.url, server.adminToken);
    batch = kc.makeApiClient(BatchV1Api);
    core = kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    await core.createNamespace({ body: { metadata: { name: 'ml' } } });
    // What a cluster has that this bare API server lacks: the namespaces' default ServiceAccounts
    // (the controller-manager makes them) and the PriorityClasses the operator creates.
    for (const ns of [NS, 'ml']) await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'default' } } });
    const objects = KubernetesObjectApi.makeApiClient(kc);
    await objects.create({ apiVersion: 'scheduling.k8s.io/v1', kind: 'PriorityClass', metadata: { name: 'govloop-normal' }, value: 500 } as KubernetesObject);
    // deploy/rbac.yaml, as an operator applies it.
    for (const doc of parseAllDocuments(readFileSync(join(repoRoot, 'deploy/rbac.yaml'), 'utf8'))) {
      const obj = doc.toJS() as KubernetesObject | null;
      if (obj) await objects.create(obj);
    }
    backend = new KubernetesCluster(kc, {
      cluster: 'real',
      namespace: NS,
      clock: clock.fn,
      place: (s) => (s.gpus > 8 ? { kind: 'nodes', nodes: ['h100-04', 'h100-05'] } : { kind: 'nodes', nodes: ['h100-03'] }),
    });
  }, 90_000);
  afterAll(async () => {
    await server?.stop();
  });

  it('stores the manifests the backend writes: exclusive, MIG, MPS, a two-node gang', async () => {
    const specs = [
      aJob('real-excl').gpus(8).build(),
      aJob('real-mig').gpus(1, 'mig:3g.40gb').build(),
      aJob('real-mps').gpus(1, 'mps').build(),
      aJob('real-gang').gpus(16).build(),
    ];
    for (const spec of specs) {
      expect(await backend.create(spec)).toMatchObject({ ok: true });
      const job = await read(spec.name);
      expect(job.spec!.suspend).toBe(true);
      expect(job.metadata!.labels!['govloop.io/task']).toBe(spec.taskId);
      expect(job.spec!.template.spec!.priorityClassName).toBe('govloop-normal');
      // Defaulted by the server: the pod template carries the job-name label the gang's anti-affinity selects on.
      expect(job.spec!.template.metadata!.labels!['batch.kubernetes.io/job-name']).toBe(spec.name);
    }
    const gang = await read(jobName('real-gang'));
    expect(gang.spec).toMatchObject({ completionMode: 'Indexed', completions: 2, parallelism: 2 });
    expect(gang.spec!.template.spec!.containers[0]!.resources!.limits).toEqual({ 'nvidia.com/gpu': '8' });
    const mig = await read(jobName('real-mig'));
    expect(mig.spec!.template.spec!.containers[0]!.resources!.limits).toEqual({ 'nvidia.com/mig-3g.40gb': '1' });
  });

  it('create → resume → suspend → resume → delete, idempotent at every step', async () => {
    const spec = aJob('real-life').build();
    const { name } = spec;
    await backend.create(spec);
    expect(await backend.create(spec)).toEqual({ ok: true, nodes: ['h100-03'] }); // 409 → read
    expect((await backend.status(name))!.phase).toBe('Suspended');
    await backend.resume(name);
    await backend.resume(name);
    expect((await read(name)).spec!.suspend).toBe(false);
    expect((await backend.status(name))!.phase).toBe('Running');
    clock.advance(30);
    await backend.suspend(name);
    await backend.suspend(name);
    const suspended = await read(name);
    expect(suspended.spec!.suspend).toBe(true);
    expect(suspended.metadata!.annotations![Annotation.settledSeconds]).toBe('30');
    expect(suspended.metadata!.annotations![Annotation.resumedAt]).toBeUndefined();
    clock.advance(600);
    await backend.resume(name);
    clock.advance(10);
    expect(await backend.status(name)).toMatchObject({ phase: 'Running', progressSeconds: 40, gpuSeconds: 320 });

    await backend.delete(name);
    // No garbage collector runs here: foreground deletion holds the Job, marked for deletion.
    const deleting = await read(name);
    expect(deleting.metadata!.deletionTimestamp).toBeDefined();
    expect(deleting.metadata!.finalizers).toContain('foregroundDeletion');
    expect((await backend.status(name))!.phase).toBe('Deleted');
    await finishDeletion(name);
    await expect(read(name)).rejects.toMatchObject({ code: 404 });
    expect(await backend.status(name)).toMatchObject({ phase: 'Deleted', gpuSeconds: 320 });
    await backend.delete(name); // already gone
  });

  it('maps the status the Job controller writes', async () => {
    const spec = aJob('real-status').gpus(2).build();
    await backend.create(spec);
    await backend.resume(spec.name);
    const t = (s: number) => new Date(clock.now.getTime() + s * 1000);
    await setStatus(spec.name, {
      startTime: t(0),
      active: 1,
      conditions: [{ type: 'Suspended', status: 'False', reason: 'JobResumed', message: 'Job resumed', lastTransitionTime: t(0), lastProbeTime: t(0) }],
    });
    expect((await backend.status(spec.name))!.phase).toBe('Running');
    await setStatus(spec.name, {
      active: 0,
      failed: 1,
      conditions: [
        {
          type: 'FailureTarget',
          status: 'True',
          reason: 'BackoffLimitExceeded',
          message: 'Job has reached the specified backoff limit',
          lastTransitionTime: t(20),
          lastProbeTime: t(20),
        },
        {
          type: 'Failed',
          status: 'True',
          reason: 'BackoffLimitExceeded',
          message: 'Job has reached the specified backoff limit',
          lastTransitionTime: t(20),
          lastProbeTime: t(20),
        },
      ],
    });
    clock.advance(100);
    expect(await backend.status(spec.name)).toMatchObject({
      phase: 'Failed',
      gpuSeconds: 40,
      message: 'BackoffLimitExceeded: Job has reached the specified backoff limit',
    });
  });

  it('a user RBAC grants nothing gets a 403 that says what is missing', async () => {
    const nobody = new KubernetesCluster(kubeConfigFor(server.url, server.nobodyToken), { cluster: 'real', namespace: NS });
    const spec = aJob('real-forbidden').build();
    const err = await nobody.create(spec).catch((e: unknown) => e);
    expect(err).toMatchObject({ type: KubernetesErrorType.Api, nonRetryable: false });
    expect((err as Error).message).toBe(
      `kubernetes: create job ${spec.name} in namespace govloop: HTTP 403: Forbidden: jobs.batch is forbidden: User "nobody" cannot create resource "jobs" in API group "batch" in the namespace "govloop" (the service account needs create/get/patch/delete on jobs.batch in this namespace; deploy/rbac.yaml has all govloop needs)`,
    );
  });

  it('watchJobs sees the changes the API server streams', async () => {
    const events: JobEvent[] = [];
    const w = backend.watchJobs(
      (e) => events.push(e),
      (err) => console.warn('watch error', err),
    );
    try {
      await new Promise((r) => setTimeout(r, 500));
      const spec = aJob('real-watched').build();
      await backend.create(spec);
      await backend.resume(spec.name);
      await backend.delete(spec.name);
      await finishDeletion(spec.name);
      await expect
        .poll(() => events.filter((e) => e.taskId === 'real-watched').map((e) => `${e.type}:${e.phase}`), { timeout: 10_000 })
        .toEqual(['ADDED:Suspended', 'MODIFIED:Running', 'MODIFIED:Deleted', 'DELETED:Deleted']);
    } finally {
      w.stop();
    }
  });

  /**
   * Issue 15: the cluster stops a job at the run limit its caps leave. This server has no Job
   * controller (no kube-controller-manager), so nothing enforces the deadline here: these tests
   * check what the server stores and validates, and write the status the controller would write.
   */
  describe('the run limit: spec.activeDeadlineSeconds, as the worker ServiceAccount writes it', () => {
    let worker: KubernetesCluster;
    beforeAll(() => {
      if ('missing' in bins) return;
      worker = new KubernetesCluster(kubeConfigFor(server.url, server.workerToken), {
        cluster: 'real',
        namespace: NS,
        clock: clock.fn,
        place: () => ({ kind: 'nodes', nodes: ['h100-03'] }),
      });
    });
    const wholeSecondsNow = () => new Date(Math.floor(Date.now() / 1000) * 1000);

    it("resume sets the deadline; a resume after a suspend renews it, the first run's startTime cleared first (the server refuses that once the Job runs); no limit removes it", async () => {
      const spec = aJob('real-limit').gpus(8).build();
      const { name } = spec;
      await worker.create(spec);
      await worker.resume(name, { maxRunSeconds: 900.5 });
      expect((await read(name)).spec).toMatchObject({ suspend: false, activeDeadlineSeconds: 900 });
      // The Job controller starts it; once it runs, its startTime may not be removed.
      await setStatus(name, { startTime: wholeSecondsNow(), active: 1 });
      const refused = await batch.patchNamespacedJobStatus({ name, namespace: NS, body: { status: { startTime: null } } }, mergePatch).catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: 422 });
      expect((refused as ApiException<string>).body).toContain('startTime cannot be removed for unsuspended job');
      clock.advance(60);
      await worker.suspend(name);

      await worker.resume(name, { maxRunSeconds: 240 });
      const renewed = await read(name);
      expect(renewed.spec).toMatchObject({ suspend: false, activeDeadlineSeconds: 240 });
      // Cleared: the controller's resume sync would otherwise measure the new deadline from the first run's start.
      expect(renewed.status!.startTime).toBeUndefined();
      // ...and sets it anew (nil → now is allowed on a running Job).
      await setStatus(name, { startTime: wholeSecondsNow(), active: 1 });
      clock.advance(10);
      expect(await worker.status(name)).toMatchObject({ phase: 'Running', gpuSeconds: 70 * 8 });

      clock.advance(5);
      await worker.suspend(name);
      await worker.resume(name);
      const unlimited = await read(name);
      expect(unlimited.spec!.suspend).toBe(false);
      expect(unlimited.spec!.activeDeadlineSeconds).toBeUndefined();
    });

    it('under 1 s left: the Job stays suspended on the server and reads Failed at its run limit, with nothing metered', async () => {
      const spec = aJob('real-limit-gone').gpus(2).build();
      const { name } = spec;
      await worker.create(spec);
      await worker.resume(name, { maxRunSeconds: 0.9 });
      const job = await read(name);
      expect(job.spec!.suspend).toBe(true);
      expect(job.spec!.activeDeadlineSeconds).toBeUndefined();
      expect(job.metadata!.annotations![Annotation.runLimitExhausted]).toBe('0.9');
      clock.advance(300);
      expect(await worker.status(name)).toMatchObject({
        phase: 'Failed',
        deadlineExceeded: true,
        gpuSeconds: 0,
        message: "RunLimitExhausted: the task's caps left 0.9 s of run time (under 1 s), so govloop did not resume the Job",
      });
    });

    it('a Job the Job controller stopped at its deadline (status written here as the controller would) reads deadlineExceeded, metered up to the FailureTarget condition', async () => {
      const spec = aJob('real-limit-hit').gpus(2).build();
      const { name } = spec;
      await worker.create(spec);
      const resumedAt = clock.now;
      await worker.resume(name, { maxRunSeconds: 120 });
      const t = (s: number) => new Date(resumedAt.getTime() + s * 1000);
      const resumed = { type: 'Suspended', status: 'False', reason: 'JobResumed', message: 'Job resumed', lastTransitionTime: t(1), lastProbeTime: t(1) };
      await setStatus(name, { startTime: t(1), active: 1, conditions: [resumed] });
      clock.advance(60);
      expect(await worker.status(name)).toMatchObject({ phase: 'Running', gpuSeconds: 120 });
      expect((await worker.status(name))!.deadlineExceeded).toBeUndefined();
      // The deadline passes (startTime + 120 s); the controller, 3 s late, writes FailureTarget and deletes the pods.
      const deadline = { reason: 'DeadlineExceeded', message: 'Job was active longer than specified deadline' };
      const target = { type: 'FailureTarget', status: 'True', lastTransitionTime: t(124), lastProbeTime: t(124), ...deadline };
      await setStatus(name, { active: 0, conditions: [resumed, target] });
      clock.advance(200);
      expect(await worker.status(name)).toMatchObject({
        phase: 'Failed',
        deadlineExceeded: true,
        message: 'DeadlineExceeded: Job was active longer than specified deadline',
        gpuSeconds: 124 * 2,
      });
      // Once the pods are gone (their termination grace), Failed: the metering still ends at FailureTarget.
      await setStatus(name, {
        failed: 1,
        conditions: [resumed, target, { type: 'Failed', status: 'True', lastTransitionTime: t(154), lastProbeTime: t(154), ...deadline }],
      });
      expect(await worker.status(name)).toMatchObject({ phase: 'Failed', deadlineExceeded: true, gpuSeconds: 124 * 2 });
    });
  });

  describe('gang Service, checkpoint protocol, placement again, capacity and RBAC on the real server', () => {
    /** The backend as the ServiceAccount deploy/rbac.yaml makes for the worker. */
    let worker: KubernetesCluster;
    let nodes = ['h100-03'];
    beforeAll(() => {
      if ('missing' in bins) return;
      worker = new KubernetesCluster(kubeConfigFor(server.url, server.workerToken), {
        cluster: 'real',
        namespace: NS,
        clock: clock.fn,
        serviceAccountName: 'govloop-trainer',
        place: (s) => ({ kind: 'nodes', nodes: s.gpus > 8 ? ['h100-04', 'h100-05'] : nodes }),
      });
    });

    it('a gang: the headless Service owned by the Job is stored as sent, its pods pass pod validation (subdomain, rank from the downward API, podinfo volume), delete() removes the Service without a garbage collector', async () => {
      const spec = aJob('real-gang-svc').gpus(16).build();
      const { name } = spec;
      expect(await worker.create(spec)).toEqual({ ok: true, nodes: ['h100-04', 'h100-05'] });
      const job = await read(name);
      const svc = await core.readNamespacedService({ name, namespace: NS });
      expect(svc.spec).toMatchObject({
        clusterIP: 'None',
        clusterIPs: ['None'],
        selector: { 'batch.kubernetes.io/job-name': name },
        publishNotReadyAddresses: true,
        ports: [{ name: 'rendezvous', port: 29500, targetPort: 29500, protocol: 'TCP' }],
      });
      expect(svc.metadata!.ownerReferences).toEqual([
        { apiVersion: 'batch/v1', kind: 'Job', name, uid: job.metadata!.uid, controller: true, blockOwnerDeletion: true },
      ]);
      expect(job.spec!.template.spec!.subdomain).toBe(name);
      expect(await worker.create(spec)).toEqual({ ok: true, nodes: ['h100-04', 'h100-05'] }); // idempotent, Service included

      // The pods the Job controller would make: the server validates them (env from the completion-index annotation, the podinfo volume, subdomain, the trainer's ServiceAccount).
      const pods = [await podFromTemplate(job, 0, 'h100-04'), await podFromTemplate(job, 1, 'h100-05')];
      const env = pods[1]!.spec!.containers[0]!.env!;
      expect(env.find((e) => e.name === 'MASTER_ADDR')).toEqual({ name: 'MASTER_ADDR', value: `${name}-0.${name}` });
      expect(env.find((e) => e.name === 'NODE_RANK')!.valueFrom!.fieldRef).toMatchObject({
        fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']",
      });
      expect(pods[1]!.spec).toMatchObject({ hostname: `${name}-1`, subdomain: name, serviceAccountName: 'govloop-trainer' });
      expect(pods[1]!.spec!.volumes!.find((v) => v.name === 'govloop-podinfo')!.downwardAPI!.items).toEqual([
        { path: 'annotations', fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.annotations' } },
        { path: 'labels', fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.labels' } },
      ]);

      await worker.delete(name);
      await expect(core.readNamespacedService({ name, namespace: NS })).rejects.toMatchObject({ code: 404 });
      // The Job waits for its pods (foreground deletion; no garbage collector here).
      expect((await read(name)).metadata!.deletionTimestamp).toBeDefined();
    });

    it('the checkpoint protocol round trip, as the worker and the trainer ServiceAccounts of deploy/rbac.yaml', async () => {
      nodes = ['h100-03'];
      const spec = aJob('real-ckpt').gpus(8).build();
      const { name } = spec;
      await worker.create(spec);
      await worker.resume(name);
      const pod = await podFromTemplate(await read(name), null, 'h100-03');
      clock.advance(100);
      await worker.checkpoint(name);
      const requested = clock.now.toISOString();
      expect((await core.readNamespacedPod({ name: pod.metadata!.name!, namespace: NS })).metadata!.annotations).toMatchObject({
        [Annotation.checkpointRequestedAt]: requested,
        [Annotation.taskId]: 'real-ckpt',
      });
      expect((await read(name)).metadata!.annotations![Annotation.checkpointRequestedAt]).toBe(requested);

      // The trainer, as its ServiceAccount, reports the work its checkpoint holds on its Job.
      const trainer = kubeConfigFor(server.url, server.trainerToken).makeApiClient(BatchV1Api);
      await trainer.patchNamespacedJob({ name, namespace: NS, body: { metadata: { annotations: { [Annotation.checkpointSeconds]: '90' } } } }, mergePatch);
      // It may do no more than get and patch Jobs.
      await expect(trainer.deleteNamespacedJob({ name, namespace: NS })).rejects.toMatchObject({ code: 403 });
      clock.advance(10);
      expect(await worker.status(name)).toMatchObject({ phase: 'Running', progressSeconds: 110, checkpointSeconds: 90, lostSeconds: 0, gpuSeconds: 880 });
      await worker.suspend(name);
      expect(await worker.status(name)).toMatchObject({
        phase: 'Suspended',
        nodes: [],
        progressSeconds: 90,
        checkpointSeconds: 90,
        lostSeconds: 20,
        gpuSeconds: 880,
      });
      const stored = (await read(name)).metadata!.annotations!;
      expect(stored).toMatchObject({
        [Annotation.progressSeconds]: '90',
        [Annotation.lostSeconds]: '20',
        [Annotation.settledSeconds]: '110',
        [Annotation.preemptedFrom]: 'h100-03',
      });
      expect(stored[Annotation.nodes]).toBeUndefined();
    });

    it('placed again after the Job controller started it: the real server takes the new node affinity once status.startTime is reset (and refuses it before)', async () => {
      nodes = ['h100-03'];
      const spec = aJob('real-move').gpus(8).build();
      const { name } = spec;
      await worker.create(spec);
      await worker.resume(name);
      const started = new Date(Math.floor(Date.now() / 1000) * 1000);
      await setStatus(name, { startTime: started, active: 1 });
      clock.advance(10);
      await worker.suspend(name);
      // What the reset is for: with startTime set, the pod template is immutable.
      const refused = await batch
        .patchNamespacedJob({ name, namespace: NS, body: { spec: { template: { spec: { affinity: null } } } } }, mergePatch)
        .catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: 422 });
      expect(JSON.parse((refused as ApiException<string>).body)).toMatchObject({
        reason: 'Invalid',
        details: { causes: [expect.objectContaining({ field: 'spec.template' })] },
      });

      nodes = ['h100-07'];
      expect(await worker.create(spec)).toEqual({ ok: true, nodes: ['h100-07'] });
      const job = await read(name);
      expect(job.status!.startTime).toBeUndefined();
      expect(
        job.spec!.template.spec!.affinity!.nodeAffinity!.requiredDuringSchedulingIgnoredDuringExecution!.nodeSelectorTerms[0]!.matchExpressions![0],
      ).toEqual({ key: 'kubernetes.io/hostname', operator: 'In', values: ['h100-07'] });
      await worker.resume(name);
      expect(await worker.status(name)).toMatchObject({ phase: 'Running', nodes: ['h100-07'], progressSeconds: 10 });
    });

    it("capacity and govloop placement from real Node objects, with GPUs held by another namespace's pods", async () => {
      const node = async (name: string, labels: Record<string, string>, gpus: number) => {
        await core.createNode({ body: { metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } } } });
        await core.patchNodeStatus(
          {
            name,
            body: {
              status: {
                capacity: { cpu: '96', memory: '1Ti', pods: '110', 'nvidia.com/gpu': String(gpus) },
                allocatable: { cpu: '96', memory: '1Ti', pods: '110', 'nvidia.com/gpu': String(gpus) },
                conditions: [
                  { type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'ok', lastHeartbeatTime: new Date(), lastTransitionTime: new Date() },
                ],
              },
            },
          },
          mergePatch,
        );
      };
      await node('gpu-a', { 'govloop.io/gpu-type': 'B200', 'govloop.io/rack': 'r1' }, 8);
      await node('gpu-b', { 'govloop.io/gpu-type': 'B200', 'govloop.io/rack': 'r1' }, 8);
      await node('gpu-c', { 'govloop.io/gpu-type': 'B200', 'govloop.io/rack': 'r2' }, 4);
      await node('cpu-1', {}, 0);
      // A notebook in another namespace holds 3 GPUs of gpu-a; a finished pod holds none.
      await core.createNamespacedPod({
        namespace: 'ml',
        body: {
          metadata: { name: 'notebook' },
          spec: { nodeName: 'gpu-a', containers: [{ name: 'c', image: 'x', resources: { limits: { 'nvidia.com/gpu': '3' } } }] },
        },
      });
      const placing = new KubernetesCluster(kubeConfigFor(server.url, server.workerToken), {
        cluster: 'real',
        namespace: NS,
        clock: clock.fn,
        placement: 'govloop',
      });
      const spec = { ...aJob('real-placed').gpus(5).build(), gpuType: 'B200' };
      // Best fit: the 5 free GPUs of gpu-a.
      expect(await placing.create(spec)).toMatchObject({ ok: true, nodes: ['gpu-a'], explanation: expect.stringMatching(/node/) });
      const job = await read(spec.name);
      expect(job.spec!.template.spec!.affinity!.nodeAffinity!.requiredDuringSchedulingIgnoredDuringExecution!.nodeSelectorTerms[0]!.matchExpressions).toEqual([
        { key: 'kubernetes.io/hostname', operator: 'In', values: ['gpu-a'] },
        { key: 'govloop.io/gpu-type', operator: 'In', values: ['B200'] },
      ]);
      await placing.resume(spec.name);
      // A 16-GPU gang has no room (gpu-a is full, 8 + 4 are left): it waits.
      expect(await placing.create({ ...aJob('real-gang-wait').gpus(16).build(), gpuType: 'B200' })).toMatchObject({
        ok: false,
        reason: { code: 'GPU_CAPACITY_BUSY' },
      });
      await expect(read(jobName('real-gang-wait'))).rejects.toMatchObject({ code: 404 });
      clock.advance(40);
      const cap = await placing.capacity('B200', { gpus: 8, gpuType: 'B200', sharing: 'exclusive' });
      expect({ nodes: cap.nodes, jobs: cap.jobs }).toEqual({
        nodes: [
          { name: 'gpu-a', gpus: 8, used: 8 },
          { name: 'gpu-b', gpus: 8, used: 0 },
          { name: 'gpu-c', gpus: 4, used: 0 },
        ],
        jobs: [{ taskId: 'real-placed', node: 'gpu-a', gpus: 5, lostSecondsIfSuspended: 40, runSeconds: 40 }],
      });
      const fits = (cap as typeof cap & { fits: (freed: readonly string[]) => boolean }).fits;
      expect(fits([])).toBe(true); // gpu-b is free
      // Who may not read Nodes is told so.
      const nobody = new KubernetesCluster(kubeConfigFor(server.url, server.nobodyToken), { cluster: 'real', namespace: NS });
      const err = await nobody.capacity('B200').catch((e: unknown) => e);
      expect((err as Error).message).toBe(
        'kubernetes: list nodes labelled govloop.io/gpu-type: HTTP 403: Forbidden: nodes is forbidden: User "nobody" cannot list resource "nodes" in API group "" at the cluster scope (the service account needs get/list on nodes (a ClusterRole); deploy/rbac.yaml has all govloop needs)',
      );
      // Two worker processes place at once, as the worker ServiceAccount (deploy/rbac.yaml lets it
      // hold the placement Lease). 8 B200 GPUs are free on gpu-b and 4 on gpu-c: of four 6-GPU Jobs
      // exactly one is placed, on gpu-b.
      const racer = (identity: string) =>
        new KubernetesCluster(kubeConfigFor(server.url, server.workerToken), {
          cluster: 'real',
          namespace: NS,
          placement: 'govloop',
          placementLease: { identity },
        });
      const [r1, r2] = [racer('worker-1'), racer('worker-2')];
      const raced = await Promise.all([0, 1, 2, 3].map((i) => (i % 2 ? r1 : r2).create({ ...aJob(`real-race-${i}`).gpus(6).build(), gpuType: 'B200' })));
      expect(raced.filter((r) => r.ok).map((r) => (r.ok ? r.nodes : []))).toEqual([['gpu-b']]);
      const lease = await kubeConfigFor(server.url, server.adminToken)
        .makeApiClient(CoordinationV1Api)
        .readNamespacedLease({ name: 'govloop-placement-real', namespace: NS });
      expect(lease.spec?.holderIdentity).toBeUndefined();
      expect(lease.spec?.leaseTransitions).toBeGreaterThanOrEqual(5); // the placements above, then these four
    });
  });

  describe('the recorded server answers like the real one', () => {
    const fake = new FakeApiServer({ namespaces: [NS] });
    beforeAll(async () => {
      await fake.start();
    });
    afterAll(() => fake.stop());

    /** code, reason, message and details of an error, from each server. */
    async function both(call: (api: BatchV1Api) => Promise<unknown>) {
      const answer = async (api: BatchV1Api) => {
        const err = await call(api).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(ApiException);
        const e = err as ApiException<string>;
        const body = JSON.parse(e.body) as Record<string, unknown>;
        return { code: e.code, kind: body.kind, status: body.status, reason: body.reason, message: body.message, details: body.details };
      };
      return { real: await answer(batch), fake: await answer(kubeConfigFor(fake.url, 'x').makeApiClient(BatchV1Api)) };
    }

    it('404 NotFound on read, patch and delete of a missing Job', async () => {
      for (const call of [
        (api: BatchV1Api) => api.readNamespacedJob({ name: 'gl-missing', namespace: NS }),
        (api: BatchV1Api) => api.patchNamespacedJob({ name: 'gl-missing', namespace: NS, body: { spec: { suspend: false } } }, mergePatch),
        (api: BatchV1Api) => api.deleteNamespacedJob({ name: 'gl-missing', namespace: NS, propagationPolicy: 'Foreground' }),
      ]) {
        const { real, fake: f } = await both(call);
        expect(f).toEqual(real);
      }
    });

    it('409 AlreadyExists on create, 409 Conflict on a stale resourceVersion', async () => {
      const spec = aJob('fidelity').build();
      await backend.create(spec);
      await new KubernetesCluster(kubeConfigFor(fake.url, 'x'), { cluster: 'fake', namespace: NS }).create(spec);
      const manifest = jobManifest(spec, { kind: 'any' }, { namespace: NS, cluster: 'real' });
      const created = await both((api) => api.createNamespacedJob({ namespace: NS, body: manifest }));
      expect(created.fake).toEqual(created.real);
      const stale = await both((api) =>
        api.patchNamespacedJob({ name: spec.name, namespace: NS, body: { metadata: { resourceVersion: '1' }, spec: { suspend: false } } }, mergePatch),
      );
      expect(stale.fake).toEqual(stale.real);
    });

    it('Services: 404 NotFound on read and delete, 409 AlreadyExists on create', async () => {
      const core = (api: BatchV1Api) => (api === batch ? kubeConfigFor(server.url, server.adminToken) : kubeConfigFor(fake.url, 'x')).makeApiClient(CoreV1Api);
      for (const call of [
        (api: BatchV1Api) => core(api).readNamespacedService({ name: 'gl-missing', namespace: NS }),
        (api: BatchV1Api) => core(api).deleteNamespacedService({ name: 'gl-missing', namespace: NS }),
      ]) {
        const { real, fake: f } = await both(call);
        expect(f).toEqual(real);
      }
      const body = { metadata: { name: 'gl-fidelity-svc' }, spec: { clusterIP: 'None', selector: { app: 'x' } } };
      for (const api of [batch, kubeConfigFor(fake.url, 'x').makeApiClient(BatchV1Api)]) await core(api).createNamespacedService({ namespace: NS, body });
      const created = await both((api) => core(api).createNamespacedService({ namespace: NS, body }));
      expect(created.fake).toEqual(created.real);
    });

    it('422 when the pod template of a started Job changes (code, reason, the field)', async () => {
      const spec = aJob('fidelity-immutable').build();
      await backend.create(spec);
      const fakeApi = kubeConfigFor(fake.url, 'x').makeApiClient(BatchV1Api);
      await fakeApi.createNamespacedJob({ namespace: NS, body: jobManifest(spec, { kind: 'any' }, { namespace: NS, cluster: 'fake' }) });
      for (const api of [batch, fakeApi])
        await api.patchNamespacedJobStatus(
          { name: spec.name, namespace: NS, body: { status: { startTime: new Date(Math.floor(Date.now() / 1000) * 1000) } } },
          mergePatch,
        );
      const change = await both((api) =>
        api.patchNamespacedJob({ name: spec.name, namespace: NS, body: { spec: { template: { spec: { affinity: null } } } } }, mergePatch),
      );
      const shape = (a: typeof change.real) => ({
        code: a.code,
        reason: a.reason,
        fields: (a.details as { causes: { field: string }[] }).causes.map((c) => c.field),
      });
      expect(shape(change.fake)).toEqual(shape(change.real));
    });

    it('namespace that does not exist: 404 on read', async () => {
      const { real, fake: f } = await both((api) => api.readNamespacedJob({ name: 'gl-x', namespace: 'nope' }));
      // The real server answers a read in a missing namespace like a missing Job.
      expect(real.code).toBe(404);
      expect(f.code).toBe(404);
    });
  });
});
