import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { jobName } from '../../cluster/backend';
import { Db } from '../../ledger/db';
import { taskUsage } from '../../ledger/usage';
import { GovloopClient } from '../../sdk';
import { FakeApiServer } from '../cluster/fake-apiserver';
import { govloopBin, repoRoot } from '../support/cli';
import { intent } from '../support/harness';

/**
 * `govloop worker --backend kubernetes`, as a separate process, dispatching a governed training
 * job to a Kubernetes API server (the recorded fake of test/cluster, which answers like the real
 * one: test/cluster/kubernetes-apiserver.test.ts checks that against a real kube-apiserver). The
 * test plays the Job controller: it marks the Job complete, and the task settles.
 */
const suffix = randomUUID().slice(0, 8);
const taskQueue = `govloop-control-k8s-${suffix}`;
const cluster = `k8s-${suffix}`;
const TOKEN = 'worker-token';
let api: FakeApiServer;
let dir: string;
let worker: ChildProcess;
let stderr = '';
let stateOf: () => Promise<string> = async () => '';
let connection: Connection;
let gov: GovloopClient;
let db: Db;

beforeAll(async () => {
  api = new FakeApiServer({ token: TOKEN });
  const url = await api.start();
  // Two labelled 8-GPU H100 nodes, one of them half taken by another namespace's pod: the worker's
  // govloop placement (the default) pins the Job by best fit to the half-used one.
  for (const name of ['h100-a', 'h100-b']) {
    api.addNode({
      metadata: { name, labels: { 'kubernetes.io/hostname': name, 'govloop.io/gpu-type': 'H100', 'govloop.io/rack': 'r1' } },
      status: { allocatable: { cpu: '96', memory: '1Ti', 'nvidia.com/gpu': '8' }, conditions: [{ type: 'Ready', status: 'True' }] },
    });
  }
  api.addPod({
    metadata: { name: 'notebook', namespace: 'default' },
    spec: { nodeName: 'h100-b', containers: [{ name: 'c', image: 'x', resources: { limits: { 'nvidia.com/gpu': '4' } } }] },
    status: { phase: 'Running' },
  });
  dir = mkdtempSync(join(tmpdir(), 'govloop-k8s-'));
  const kubeconfig = join(dir, 'kubeconfig.yaml');
  writeFileSync(
    kubeconfig,
    [
      'apiVersion: v1',
      'kind: Config',
      // Plain HTTP on loopback: client-node allows it only with TLS verification off.
      `clusters: [{ name: fake, cluster: { server: "${url}", insecure-skip-tls-verify: true } }]`,
      `users: [{ name: worker, user: { token: "${TOKEN}" } }]`,
      'contexts: [{ name: fake, context: { cluster: fake, user: worker, namespace: govloop } }]',
      'current-context: fake',
    ].join('\n'),
  );
  // The workflow polls its job only every 10 minutes here: the job's completion must reach it
  // through the worker's Kubernetes watch (a jobChanged signal), or the test times out.
  const configDir = join(dir, 'config');
  cpSync(join(repoRoot, 'config'), configDir, { recursive: true });
  writeFileSync(
    join(configDir, 'simulation.yaml'),
    readFileSync(join(configDir, 'simulation.yaml'), 'utf8').replace(/^pollMillis: .*$/m, 'pollMillis: 600000'),
  );
  worker = spawn(process.execPath, [govloopBin, 'worker', '--task-queue', taskQueue, '--cluster', cluster, '--backend', 'kubernetes', '--no-controllers'], {
    cwd: repoRoot,
    env: {
      ...process.env,
      KUBECONFIG: kubeconfig,
      GOVLOOP_CONFIG_DIR: configDir,
      TEMPORAL_ADDRESS: inject('temporalAddress'),
      DATABASE_URL: inject('databaseUrl'),
      GOVLOOP_LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  worker.stderr!.on('data', (d) => (stderr += String(d)));
  connection = await Connection.connect({ address: inject('temporalAddress') });
  gov = new GovloopClient(new Client({ connection }), taskQueue);
  db = new Db(inject('databaseUrl'), 2);
});

afterAll(async () => {
  worker?.kill('SIGTERM');
  await connection?.close();
  await db?.close();
  await api?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const waitFor = async <T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 60_000): Promise<T> => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; task ${await stateOf()}; worker said: ${stderr.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

describe('govloop worker --backend kubernetes', () => {
  it('creates the Job suspended, resumes it, and settles the task as soon as the watch sees the Job complete', async () => {
    const tenant = `t-k8s-${suffix}`;
    const a = await gov.submit(intent(tenant, { name: 'k8s-train', resources: { gpus: 2, gpuType: 'H100', sharing: 'exclusive' }, priority: 'high' }), {
      requester: 'test',
    });
    expect(a.decision).toBe('admitted');
    const name = jobName(a.taskId);
    stateOf = async () => JSON.stringify(await gov.status(a.taskId));
    const job = await waitFor('the Job created and resumed', () => {
      const j = api.jobs.get(`govloop/${name}`) as
        { spec: { suspend: boolean }; metadata: { labels: Record<string, string>; annotations: Record<string, string> } } | undefined;
      return j && j.spec.suspend === false ? j : undefined;
    });
    // Placed by govloop from the Nodes' labels, around the notebook's GPUs: pinned to h100-b.
    expect(job.metadata.annotations['govloop.io/nodes']).toBe('h100-b');
    expect(JSON.stringify(job)).toContain('{"key":"kubernetes.io/hostname","operator":"In","values":["h100-b"]}');
    // Created suspended, then unsuspended (the Kueue way): a POST with suspend true, then a PATCH.
    const creates = api.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/jobs'));
    expect(creates).toHaveLength(1);
    expect((creates[0]!.body as { spec: { suspend: boolean } }).spec.suspend).toBe(true);
    expect(api.requests.some((r) => r.method === 'PATCH' && r.path.endsWith(`/jobs/${name}`))).toBe(true);
    expect(job.metadata.labels).toMatchObject({ 'govloop.io/tenant': tenant, 'govloop.io/team': 'search', 'govloop.io/project': 'ranker' });
    expect(JSON.stringify(job)).toMatch(/"nvidia.com\/gpu":"?2"?/);
    expect(JSON.stringify(job)).toMatch(/"priorityClassName":"govloop-high"/);
    await waitFor('the task running', async () => ((await gov.status(a.taskId)).state === 'Running' ? true : undefined));
    expect((await gov.status(a.taskId)).nodes).toEqual(['h100-b']);

    await new Promise((r) => setTimeout(r, 1500)); // GPU time accrues while the Job runs
    expect(api.watching).toBeGreaterThan(0);
    const completedAt = Date.now();
    api.setStatus('govloop', name, { succeeded: 1, conditions: [{ type: 'Complete', status: 'True' }] });
    const done = await gov.result(a.taskId);
    expect(Date.now() - completedAt).toBeLessThan(30_000); // the watch, not the 10-minute poll
    expect(done.state).toBe('Succeeded');
    const usage = await taskUsage(db, a.taskId);
    expect(usage.gpuSeconds).toBeGreaterThan(0);
    expect(usage.costMicros).toBeGreaterThan(0);
  });
});
