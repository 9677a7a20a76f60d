import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobSpec } from '../../cluster/backend';
import { SimulatedCluster } from '../../cluster/simulated/backend';
import { clusterTopology } from '../../cluster/simulated/topology';
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

const spec = (gpus: number): JobSpec => {
  const taskId = `t-${randomUUID().slice(0, 8)}`;
  return { name: `gl-${taskId}`, taskId, gpus, gpuType: 'H100', sharing: 'exclusive', priorityClass: 'govloop-normal', labels: {}, runtime: { image: 'x', command: ['x'], env: {} }, simulation: { durationSeconds: 600, tokensPerSecond: 0, failAfterSeconds: null } };
};

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
    expect(t.blocks.map((b) => [b.name, b.racks.map((r) => [r.name, r.nodes.map((n) => n.name)])])).toEqual([['b0', [['r0', ['n0', 'n1']], ['r1', ['n2']]]]]);
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
});
