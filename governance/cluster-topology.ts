import type { ClusterConfig } from '../config/schema';
import { MIG_80GB, type Topology, TopologyError, type TopologyIndex, type TopologyNodeInput, buildTopologyIndex, parseTopology } from './topology';

/**
 * config/cluster.yaml (nodes with GPU type and count, rack, block, NVLink domain, sharing) as the
 * placement topology of governance/topology.ts: blocks → racks → nodes, validated with paths. MIG
 * profiles are the 80 GB A100/H100 ones the type lists.
 */
export function clusterTopology(cluster: ClusterConfig): Topology {
  const blocks = new Map<string, Map<string, TopologyNodeInput[]>>();
  const at = new Map<TopologyNodeInput, number>();
  for (const [i, n] of cluster.nodes.entries()) {
    const racks = blocks.get(n.block) ?? new Map<string, TopologyNodeInput[]>();
    blocks.set(n.block, racks);
    const nodes = racks.get(n.rack) ?? [];
    racks.set(n.rack, nodes);
    const node: TopologyNodeInput = {
      name: n.name,
      gpuType: n.gpuType,
      gpus: n.gpus,
      cpuMilli: n.cpuMilli,
      memoryMib: n.memoryMib,
      nvlinkDomain: n.nvlinkDomain ?? n.name,
      sharing: n.sharing,
    };
    nodes.push(node);
    at.set(node, i);
  }
  const mig = (names: string[]) => {
    const profiles = MIG_80GB.filter((p) => names.includes(p.name));
    return profiles.length > 0 ? { mig: { computeSlices: 7, memorySlices: 8, profiles } } : {};
  };
  const doc = {
    cluster: cluster.name,
    gpuTypes: Object.fromEntries(Object.entries(cluster.gpuTypes).map(([t, g]) => [t, { memoryGb: g.memoryGb, ...mig(g.migProfiles) }])),
    blocks: [...blocks].map(([name, racks]) => ({ name, racks: [...racks].map(([rack, nodes]) => ({ name: rack, nodes })) })),
  };
  try {
    return parseTopology(doc, 'cluster.yaml');
  } catch (err) {
    if (!(err instanceof TopologyError)) throw err;
    // Name the node as cluster.yaml lists it: blocks.0.racks.1.nodes.2.x → nodes.<its index>.x
    const path = (p: string) =>
      p.replace(/^blocks\.(\d+)\.racks\.(\d+)\.nodes\.(\d+)/, (_m, b: string, r: string, n: string) => {
        const node = doc.blocks[Number(b)]?.racks[Number(r)]?.nodes[Number(n)];
        return node ? `nodes.${at.get(node)}` : _m;
      });
    throw new TopologyError(
      'cluster.yaml',
      err.errors.map((e) => ({ path: path(e.path), message: e.message })),
    );
  }
}

const indexes = new WeakMap<ClusterConfig, TopologyIndex>();
export function clusterIndex(cluster: ClusterConfig): TopologyIndex {
  let ix = indexes.get(cluster);
  if (!ix) indexes.set(cluster, (ix = buildTopologyIndex(clusterTopology(cluster))));
  return ix;
}
