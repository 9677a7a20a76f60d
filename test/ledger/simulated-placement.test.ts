import { randomUUID } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterErrorType, type JobSpec, jobName } from '../../cluster/backend';
import { SimulatedCluster } from '../../cluster/simulated/backend';
import { clusterTopology } from '../../governance/cluster-topology';
import { type ClusterConfig, ClusterFile } from '../../config/schema';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { ConfigError, loadConfig } from '../../config/load';
import { repoRoot } from '../support/cli';
import { defaultTopology } from '../../governance/topology';
import { type Ledger, backends } from './backends';

/** Three 8-GPU H100 nodes in two racks of one block. */
const cluster = (name: string): ClusterConfig =>
  ClusterFile.parse({
    name,
    gpuTypes: { H100: { memoryGb: 80, migProfiles: [] } },
    nodes: [
      { name: 'n0', gpuType: 'H100', gpus: 8, rack: 'r0', block: 'b0' },
      { name: 'n1', gpuType: 'H100', gpus: 8, rack: 'r0', block: 'b0' },
      { name: 'n2', gpuType: 'H100', gpus: 8, rack: 'r1', block: 'b0' },
    ],
  });

const spec = (gpus: number, more: Partial<JobSpec> = {}): JobSpec => {
  const taskId = `t-${randomUUID().slice(0, 8)}`;
  return {
    name: jobName(taskId),
    taskId,
    gpus,
    gpuType: 'H100',
    sharing: 'exclusive',
    priorityClass: 'govloop-normal',
    labels: {},
    runtime: { image: 'x', command: ['x'], env: {} },
    simulation: { durationSeconds: 600, tokensPerSecond: 0, failAfterSeconds: null },
    ...more,
  };
};

/** Two racks of three 8-GPU H100 nodes, plus a MIG node and an MPS/time-slice node of A100s. */
const gangCluster = (name: string): ClusterConfig =>
  ClusterFile.parse({
    name,
    gpuTypes: { H100: { memoryGb: 80, migProfiles: [] }, A100: { memoryGb: 80, migProfiles: ['1g.10gb', '3g.40gb', '7g.80gb'] } },
    nodes: [
      ...['a0', 'a1', 'a2'].map((n) => ({ name: n, gpuType: 'H100', gpus: 8, rack: 'ra', block: 'b0' })),
      ...['b0', 'b1', 'b2'].map((n) => ({ name: n, gpuType: 'H100', gpus: 8, rack: 'rb', block: 'b0' })),
      { name: 'mig0', gpuType: 'A100', gpus: 8, rack: 'rc', block: 'b1', sharing: { mig: true } },
      { name: 'mps0', gpuType: 'A100', gpus: 8, rack: 'rc', block: 'b1', sharing: { mps: true, timeslice: true } },
    ],
  });

const rackOf = (node: string) => (node.startsWith('a') ? 'ra' : node.startsWith('b') ? 'rb' : 'rc');

describe.each(backends)('the simulated cluster places with governance/placement on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('turns a cluster config into a topology: blocks, racks, one NVLink domain per node', () => {
    const t = clusterTopology(cluster('c'));
    expect(t.blocks.map((b) => [b.name, b.racks.map((r) => [r.name, r.nodes.map((n) => n.name)])])).toEqual([
      [
        'b0',
        [
          ['r0', ['n0', 'n1']],
          ['r1', ['n2']],
        ],
      ],
    ]);
  });

  it('refuses a cluster.yaml whose nodes do not form a topology, naming the node as the file lists it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'govloop-config-'));
    try {
      cpSync(join(repoRoot, 'config'), dir, { recursive: true });
      const doc = parseYaml(readFileSync(join(dir, 'cluster.yaml'), 'utf8')) as { gpuTypes: Record<string, { migProfiles: string[] }> };
      doc.gpuTypes.H100!.migProfiles = []; // the last H100 rack is MIG-partitioned: its nodes become invalid
      writeFileSync(join(dir, 'cluster.yaml'), stringifyYaml(doc));
      expect(() => loadConfig(dir)).toThrow(ConfigError);
      try {
        loadConfig(dir);
      } catch (e) {
        expect((e as ConfigError).errors[0]).toEqual({ path: 'nodes.18.sharing.mig', message: 'GPU type "H100" has no MIG profiles' });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('ships config/cluster.yaml as the default topology: 320 GPUs, MIG, MPS and time-slicing where the racks allow them', () => {
    expect(clusterTopology(loadConfig().cluster)).toEqual({ ...defaultTopology() });
  });

  it('fills a partly used node before cutting into an empty one (first fit would take n0), and explains where', async () => {
    const name = `sim-place-${randomUUID().slice(0, 8)}`;
    const sim = new SimulatedCluster(ledger.db, cluster(name), 1);
    await sim.sync();
    // A job already holds 5 GPUs of n1.
    const held = spec(5);
    await ledger.db.query(
      `INSERT INTO sim_jobs (cluster, name, task_id, node, gpus, gpu_type, sharing, phase, duration_s, tokens_per_second) VALUES ($1, $2, $3, 'n1', 5, 'H100', 'exclusive', 'Running', 600, 0)`,
      [name, held.name, held.taskId],
    );
    const three = await sim.create(spec(3));
    expect(three).toMatchObject({ ok: true, nodes: ['n1'] });
    expect(three.ok && three.explanation).toMatch(/node/);
    // n1 is full now: a whole node's worth goes to an empty node, and a third one does not fit in what is left.
    const a = await sim.create(spec(8));
    const b = await sim.create(spec(8));
    expect([a.ok && a.nodes[0], b.ok && b.nodes[0]].sort()).toEqual(['n0', 'n2']);
    const none = await sim.create(spec(1));
    expect(none).toMatchObject({ ok: false, reason: { code: 'GPU_CAPACITY_BUSY' } });
  });

  it('places a 16-GPU gang on two whole nodes of one rack, and a restarted worker sees those GPUs taken', async () => {
    const name = `sim-gang-${randomUUID().slice(0, 8)}`;
    const sim = new SimulatedCluster(ledger.db, gangCluster(name), 1);
    await sim.sync();
    // 4 GPUs of a0 are held: the best rack for 16 GPUs is then rb (three free nodes) or ra's two free ones.
    const small = await sim.create(spec(4));
    expect(small).toMatchObject({ ok: true, nodes: [expect.any(String)] });
    const gang = spec(16);
    const placed = await sim.create(gang);
    expect(placed.ok).toBe(true);
    if (!placed.ok) return;
    expect(placed.nodes).toHaveLength(2);
    expect(new Set(placed.nodes.map(rackOf)).size).toBe(1);
    expect(placed.nodes).not.toContain(small.ok && small.nodes[0]);
    const status = await sim.status(gang.name);
    expect(status?.nodes.sort()).toEqual([...placed.nodes].sort());

    // A new backend on the same ledger (a worker restart) rebuilds what is held: a second 16-GPU
    // gang cannot share the first gang's nodes.
    const again = new SimulatedCluster(ledger.db, gangCluster(name), 1);
    const second = await again.create(spec(16));
    expect(second.ok).toBe(true);
    if (second.ok) expect(second.nodes.filter((n) => placed.nodes.includes(n))).toEqual([]);
    // 48 H100s: 4 + 16 + 16 held, so 12 are free (4 on the small job's node, a whole node in the
    // other rack), but no rack holds 12 of them.
    const third = await again.create(spec(12, { topology: { level: 'rack', mode: 'required' } }));
    expect(third).toMatchObject({ ok: false, reason: { code: 'GPU_CAPACITY_BUSY' } });
    expect(!third.ok && third.reason.message).toMatch(/rack/);
    // Preferred: it may spread over the block, and says so.
    const spread = await again.create(spec(12, { topology: { level: 'rack', mode: 'preferred' } }));
    expect(spread.ok).toBe(true);
    if (spread.ok) expect(new Set(spread.nodes.map(rackOf)).size).toBe(2);
    expect(spread.ok && spread.explanation).toMatch(/preferred rack not met/);
  });

  it('packs MIG instances onto one GPU and MPS shares onto one GPU, and keeps whole-GPU work off them', async () => {
    const name = `sim-share-${randomUUID().slice(0, 8)}`;
    const sim = new SimulatedCluster(ledger.db, gangCluster(name), 1);
    await sim.sync();
    const held = async (job: JobSpec) => {
      const r = await ledger.db.query<{ assignments: { node: string; gpus: number[]; kind: string }[] }>(
        'SELECT assignments FROM sim_jobs WHERE cluster = $1 AND name = $2',
        [name, job.name],
      );
      return r.rows[0]!.assignments;
    };
    const mig = spec(7, { gpuType: 'A100', sharing: 'mig:1g.10gb' });
    expect(await sim.create(mig)).toMatchObject({ ok: true, nodes: ['mig0'] });
    const slices = await held(mig);
    expect(slices).toHaveLength(7);
    expect(new Set(slices.map((a) => `${a.node}/${a.gpus.join()}`)).size).toBe(1);
    expect(slices.every((a) => a.kind === 'mig')).toBe(true);

    const shareA = spec(1, { gpuType: 'A100', sharing: 'mps', gpuMilli: 500 });
    const shareB = spec(1, { gpuType: 'A100', sharing: 'mps', gpuMilli: 400 });
    const shareC = spec(1, { gpuType: 'A100', sharing: 'mps', gpuMilli: 300 });
    for (const j of [shareA, shareB, shareC]) expect(await sim.create(j)).toMatchObject({ ok: true, nodes: ['mps0'] });
    const [a, b, c] = [await held(shareA), await held(shareB), await held(shareC)];
    expect(b[0]!.gpus).toEqual(a[0]!.gpus); // 500 + 400 share one GPU
    expect(c[0]!.gpus).not.toEqual(a[0]!.gpus); // 300 more does not fit there

    // Whole A100s: the 16 left whole are the 7 untouched GPUs of mig0 and 6 of mps0 — 13 whole in all.
    const whole = spec(13, { gpuType: 'A100' });
    const placed = await sim.create(whole);
    expect(placed.ok).toBe(true);
    const wholeGpus = (await held(whole)).flatMap((x) => x.gpus.map((g) => `${x.node}/${g}`));
    const shared = [...slices, ...a, ...c].flatMap((x) => x.gpus.map((g) => `${x.node}/${g}`));
    expect(wholeGpus.filter((g) => shared.includes(g))).toEqual([]);
    expect(await sim.create(spec(1, { gpuType: 'A100' }))).toMatchObject({ ok: false });

    // A share goes back when its job is deleted: a 500 share fits on the first GPU again.
    await sim.delete(shareA.name);
    const shareD = spec(1, { gpuType: 'A100', sharing: 'timeslice', gpuMilli: 500 });
    expect(await sim.create(shareD)).toMatchObject({ ok: false }); // that GPU is in MPS mode, the other MPS GPU has 700 free: timeslice never mixes with MPS
    const shareE = spec(1, { gpuType: 'A100', sharing: 'mps', gpuMilli: 600 });
    expect(await sim.create(shareE)).toMatchObject({ ok: true, nodes: ['mps0'] });
  });

  it('tells each running job how long it has run since it last started or resumed, in job-seconds', async () => {
    let now = Date.parse('2026-11-24T10:00:00Z');
    const sim = new SimulatedCluster(ledger.db, cluster(`sim-run-${randomUUID().slice(0, 8)}`), 10, () => new Date(now));
    await sim.sync();
    const j = spec(2, { simulation: { durationSeconds: 100_000, tokensPerSecond: 0, failAfterSeconds: null } });
    expect(await sim.create(j)).toMatchObject({ ok: true });
    await sim.resume(j.name);
    now += 30_000;
    await sim.status(j.name); // folding progress in (as metering does) does not restart the clock
    now += 30_000;
    const run = async () => (await sim.capacity('H100')).jobs.find((x) => x.taskId === j.taskId);
    expect(await run()).toMatchObject({ runSeconds: 600, lostSecondsIfSuspended: 600 });
    await sim.checkpoint(j.name);
    now += 10_000;
    expect(await run()).toMatchObject({ runSeconds: 700, lostSecondsIfSuspended: 100 });
    // Preempted and resumed: the run starts again from the resume.
    await sim.suspend(j.name);
    expect(await run()).toBeUndefined();
    expect(await sim.create(j)).toMatchObject({ ok: true }); // placed again, as dispatch does after a preemption
    await sim.resume(j.name);
    now += 5_000;
    expect(await run()).toMatchObject({ runSeconds: 50, lostSecondsIfSuspended: 50 });
  });

  it('re-creating a job of the same task is a no-op; a job of the name that belongs to another task is refused, non-retryable', async () => {
    const name = `sim-owner-${randomUUID().slice(0, 8)}`;
    const sim = new SimulatedCluster(ledger.db, cluster(name), 1);
    await sim.sync();
    const mine = spec(8);
    const placed = await sim.create(mine);
    expect(placed).toMatchObject({ ok: true, nodes: [expect.any(String)] });
    // A retried dispatch: the same task, the same name, the same place, nothing new booked.
    expect(await sim.create(mine)).toEqual({ ok: true, nodes: placed.ok ? placed.nodes : [] });
    expect((await sim.capacity('H100')).nodes.map((n) => n.used).sort()).toEqual([0, 0, 8]);
    // Another task under that name (what a name collision would do) never adopts the job.
    const other = spec(8, { name: mine.name });
    const err = await sim.create(other).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: ClusterErrorType.JobNameTaken, nonRetryable: true });
    expect((err as Error).message).toContain(`belongs to task ${mine.taskId}, not ${other.taskId}`);
    // Refused even once the owner's job is over: the name stays the owner's.
    await sim.delete(mine.name);
    await expect(sim.create(other)).rejects.toMatchObject({ type: ClusterErrorType.JobNameTaken });
    const { rows } = await ledger.db.query<{ task_id: string; phase: string }>('SELECT task_id, phase FROM sim_jobs WHERE cluster = $1', [name]);
    expect(rows).toEqual([{ task_id: mine.taskId, phase: 'Deleted' }]);
  });

  it('answers, for a request, whether freeing some jobs would let it be placed (victims must free one domain)', async () => {
    const name = `sim-fits-${randomUUID().slice(0, 8)}`;
    const sim = new SimulatedCluster(ledger.db, gangCluster(name), 1);
    await sim.sync();
    // Six 8-GPU jobs fill all six H100 nodes.
    const jobs = [];
    for (let i = 0; i < 6; i++) {
      const j = spec(8);
      const r = await sim.create(j);
      expect(r.ok).toBe(true);
      jobs.push({ ...j, node: r.ok ? r.nodes[0]! : '' });
    }
    const gang = { gpus: 16, gpuType: 'H100', sharing: 'exclusive' as const, topology: { level: 'rack' as const, mode: 'required' as const } };
    const cap = await sim.capacity('H100', gang);
    expect(cap.nodes.map((n) => n.used)).toEqual([8, 8, 8, 8, 8, 8]);
    expect(cap.fits).toBeTypeOf('function');
    const onA = jobs.filter((j) => rackOf(j.node) === 'ra').map((j) => j.taskId);
    const onB = jobs.filter((j) => rackOf(j.node) === 'rb').map((j) => j.taskId);
    expect(cap.fits!([])).toBe(false);
    // 16 GPUs freed over two racks: enough GPUs, but no rack holds the gang.
    expect(cap.fits!([onA[0]!, onB[0]!])).toBe(false);
    // Two nodes of one rack: it fits.
    expect(cap.fits!([onA[0]!, onA[1]!])).toBe(true);
    expect(cap.fits!([onB[1]!, onB[2]!])).toBe(true);
    // Asking changes nothing.
    expect((await sim.capacity('H100')).nodes.map((n) => n.used)).toEqual([8, 8, 8, 8, 8, 8]);
  });
});
