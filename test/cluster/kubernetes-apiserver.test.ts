/**
 * The Kubernetes backend against a real kube-apiserver + etcd (./real-apiserver.ts): the server
 * validates, defaults, authorizes (RBAC) and stores the Jobs the backend writes. Skipped, with the
 * reason printed, where the binaries are absent (a fresh CI machine); the recorded-server tests in
 * ./kubernetes.test.ts cover the same calls there. The fidelity block checks that the recorded
 * server answers the backend's error cases with the same codes and Status bodies as the real one.
 */
import { ApiException, BatchV1Api, CoreV1Api, PatchStrategy, type V1Job, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubernetesCluster, KubernetesErrorType, type JobEvent } from '../../cluster/kubernetes/backend';
import { Annotation, jobManifest } from '../../cluster/kubernetes/manifests';
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

  beforeAll(async () => {
    if ('missing' in bins) return;
    server = await startRealApiServer(bins);
    const kc = kubeConfigFor(server.url, server.adminToken);
    batch = kc.makeApiClient(BatchV1Api);
    await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: NS } } });
    backend = new KubernetesCluster(kc, { cluster: 'real', namespace: NS, clock: clock.fn, place: (s) => (s.gpus > 8 ? { kind: 'nodes', nodes: ['h100-04', 'h100-05'] } : { kind: 'nodes', nodes: ['h100-03'] }) });
  }, 90_000);
  afterAll(async () => {
    await server?.stop();
  });

  it('stores the manifests the backend writes: exclusive, MIG, MPS, a two-node gang', async () => {
    const specs = [aJob('real-excl').gpus(8).build(), aJob('real-mig').gpus(1, 'mig:3g.40gb').build(), aJob('real-mps').gpus(1, 'mps').build(), aJob('real-gang').gpus(16).build()];
    for (const spec of specs) {
      expect(await backend.create(spec)).toMatchObject({ ok: true });
      const job = await read(spec.name);
      expect(job.spec!.suspend).toBe(true);
      expect(job.metadata!.labels!['govloop.io/task']).toBe(spec.taskId);
      expect(job.spec!.template.spec!.priorityClassName).toBe('govloop-normal');
      // Defaulted by the server: the pod template carries the job-name label the gang's anti-affinity selects on.
      expect(job.spec!.template.metadata!.labels!['batch.kubernetes.io/job-name']).toBe(spec.name);
    }
    const gang = await read('gl-real-gang');
    expect(gang.spec).toMatchObject({ completionMode: 'Indexed', completions: 2, parallelism: 2 });
    expect(gang.spec!.template.spec!.containers[0]!.resources!.limits).toEqual({ 'nvidia.com/gpu': '8' });
    const mig = await read('gl-real-mig');
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
    await setStatus(spec.name, { startTime: t(0), active: 1, conditions: [{ type: 'Suspended', status: 'False', reason: 'JobResumed', message: 'Job resumed', lastTransitionTime: t(0), lastProbeTime: t(0) }] });
    expect((await backend.status(spec.name))!.phase).toBe('Running');
    await setStatus(spec.name, {
      active: 0,
      failed: 1,
      conditions: [
        { type: 'FailureTarget', status: 'True', reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit', lastTransitionTime: t(20), lastProbeTime: t(20) },
        { type: 'Failed', status: 'True', reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit', lastTransitionTime: t(20), lastProbeTime: t(20) },
      ],
    });
    clock.advance(100);
    expect(await backend.status(spec.name)).toMatchObject({ phase: 'Failed', gpuSeconds: 40, message: 'BackoffLimitExceeded: Job has reached the specified backoff limit' });
  });

  it('a user RBAC grants nothing gets a 403 that says what is missing', async () => {
    const nobody = new KubernetesCluster(kubeConfigFor(server.url, server.nobodyToken), { cluster: 'real', namespace: NS });
    const err = await nobody.create(aJob('real-forbidden').build()).catch((e: unknown) => e);
    expect(err).toMatchObject({ type: KubernetesErrorType.Api, nonRetryable: false });
    expect((err as Error).message).toBe(
      'kubernetes: create job gl-real-forbidden in namespace govloop: HTTP 403: Forbidden: jobs.batch is forbidden: User "nobody" cannot create resource "jobs" in API group "batch" in the namespace "govloop" (the service account needs create/get/patch/delete on jobs.batch in this namespace)',
    );
  });

  it('watchJobs sees the changes the API server streams', async () => {
    const events: JobEvent[] = [];
    const w = backend.watchJobs((e) => events.push(e), (err) => console.warn('watch error', err));
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
      const stale = await both((api) => api.patchNamespacedJob({ name: spec.name, namespace: NS, body: { metadata: { resourceVersion: '1' }, spec: { suspend: false } } }, mergePatch));
      expect(stale.fake).toEqual(stale.real);
    });

    it('namespace that does not exist: 404 on read', async () => {
      const { real, fake: f } = await both((api) => api.readNamespacedJob({ name: 'gl-x', namespace: 'nope' }));
      // The real server answers a read in a missing namespace like a missing Job.
      expect(real.code).toBe(404);
      expect(f.code).toBe(404);
    });
  });
});
