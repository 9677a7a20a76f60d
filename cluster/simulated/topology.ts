import type { ClusterConfig } from '../../config/schema';
import { type Topology, type TopologyIndex, buildTopologyIndex, parseTopology } from '../../governance/topology';

/**
 * The simulated cluster's nodes (config/cluster.yaml: name, GPU type and count, rack, block) as a
 * placement topology: blocks → racks → nodes, each node its own NVLink domain, whole GPUs only
 * (the simulated cluster runs every job on whole GPUs of one node). CPU and memory are not
 * modelled there, so every node gets more than any job asks.
 */
export function clusterTopology(cluster: ClusterConfig): Topology {
  const blocks = new Map<string, Map<string, { name: string; gpuType: string; gpus: number; cpuMilli: number; memoryMib: number }[]>>();
  for (const n of cluster.nodes) {
    const racks = blocks.get(n.block) ?? new Map();
    blocks.set(n.block, racks);
    const nodes = racks.get(n.rack) ?? [];
    racks.set(n.rack, nodes);
    nodes.push({ name: n.name, gpuType: n.gpuType, gpus: n.gpus, cpuMilli: 1_000_000, memoryMib: 16_777_216 });
  }
  return parseTopology(
    {
      cluster: cluster.name,
      gpuTypes: Object.fromEntries(Object.entries(cluster.gpuTypes).map(([t, g]) => [t, { memoryGb: g.memoryGb }])),
      blocks: [...blocks].map(([name, racks]) => ({ name, racks: [...racks].map(([rack, nodes]) => ({ name: rack, nodes })) })),
    },
    `config/cluster.yaml (${cluster.name})`,
  );
}

const indexes = new WeakMap<ClusterConfig, TopologyIndex>();
export function clusterIndex(cluster: ClusterConfig): TopologyIndex {
  let ix = indexes.get(cluster);
  if (!ix) indexes.set(cluster, (ix = buildTopologyIndex(clusterTopology(cluster))));
  return ix;
}
