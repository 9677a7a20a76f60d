/**
 * govloop placement on a Kubernetes cluster, the pure part: the API server's Nodes as the
 * placement topology of governance/topology.ts, the GPUs that govloop Jobs (and other pods) hold
 * as a placement state, and `place()` from governance/placement.ts turned into a Job placement
 * (`{kind: 'nodes'}`: the Job is pinned to the chosen nodes). No I/O: the backend
 * (`./backend.ts`) lists Nodes, Jobs and Pods and hands them in, so all of it is table-testable.
 *
 * Node labels (docs/decisions/0012-kubernetes-backend.md), each overridable:
 *
 * | label | meaning | when absent |
 * |---|---|---|
 * | `govloop.io/gpu-type` | the govloop GPU type (`H100`) | the node is not a govloop GPU node |
 * | `govloop.io/rack` | rack | `topology.kubernetes.io/zone`, else a rack of its own |
 * | `govloop.io/block` | block (spine) | `topology.kubernetes.io/region`, else one block |
 * | `govloop.io/nvlink-domain` | multi-node NVLink domain (inside one rack) | the node alone |
 * | `nvidia.com/gpu.sharing-strategy` (GPU Feature Discovery) | `mps` / `time-slicing` | exclusive GPUs only |
 * | `nvidia.com/gpu.replicas` (GFD) | shared replicas per GPU | 1 |
 *
 * GPUs per node: allocatable `nvidia.com/gpu` divided by the replicas. Cordoned and NotReady nodes
 * are left out. MIG instances: allocatable `nvidia.com/mig-<profile>` (the NVIDIA device plugin's
 * mixed strategy), which the GPU operator partitions ahead of time; govloop counts them per profile
 * and does not repartition (see `decidePlacement`). *
 * What Jobs and pods hold, and the placement state it makes, is in `./held.ts`; resource
 * quantities in `./quantity.ts`. This file re-exports both.
 */
import type { V1Node } from '@kubernetes/client-node';
import type { GpuRequest } from '../backend';
import { place, type PlacementRequest } from '../../governance/placement';
import { type Reason, ReasonCode, reason } from '../../governance/reasons';
import { type Topology, TopologyError, type TopologyIndex, type TopologyNodeInput, buildTopologyIndex, parseTopology } from '../../governance/topology';
import { type Placement, gpuMilliOf } from './manifests';
import { type HeldGpus, MIG_RESOURCE, placementState } from './held';
import { parseQuantity } from './quantity';
import type { GpuNode, NodeLabelOptions, TopologyReading } from './gpu-nodes';

export { type HeldGpus, holdsNodes, heldByJobs, heldByPods, usedGpus, placementState } from './held';
export { parseQuantity } from './quantity';

export const NodeLabel = {
  gpuType: 'govloop.io/gpu-type',
  rack: 'govloop.io/rack',
  block: 'govloop.io/block',
  nvlink: 'govloop.io/nvlink-domain',
  zone: 'topology.kubernetes.io/zone',
  region: 'topology.kubernetes.io/region',
  sharing: 'nvidia.com/gpu.sharing-strategy',
  replicas: 'nvidia.com/gpu.replicas',
} as const;

export type { GpuNode, NodeLabelOptions, TopologyReading };

const TOPOLOGY_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;
const validName = (s: string) => s.length <= 63 && TOPOLOGY_NAME.test(s);

const label = (node: V1Node, key: string | undefined): string | null => {
  const v = key ? node.metadata?.labels?.[key] : undefined;
  return v === undefined || v === '' ? null : v;
};

/**
 * The placement topology of the cluster's GPU nodes: blocks → racks → nodes (NVLink domains inside
 * racks), from the node labels above. `nodes` may be every Node: those without the GPU-type label
 * are not govloop GPU nodes and are left out silently.
 */
export function readTopology(nodes: readonly V1Node[], cluster: string, opts: NodeLabelOptions = {}): TopologyReading {
  const typeLabel = opts.gpuTypeLabel === undefined ? NodeLabel.gpuType : opts.gpuTypeLabel;
  const skipped: TopologyReading['skipped'] = [];
  const notes: string[] = [];
  const out: (GpuNode & { rackLabel: string; blockLabel: string; nvlinkLabel: string | null; cpuMilli: number; memoryMib: number })[] = [];
  for (const node of [...nodes].sort((a, b) => (a.metadata?.name ?? '').localeCompare(b.metadata?.name ?? ''))) {
    const name = node.metadata?.name ?? '';
    const gpuType = typeLabel === null ? '' : label(node, typeLabel);
    const allocatable = node.status?.allocatable ?? {};
    const advertised = Math.floor(parseQuantity(allocatable['nvidia.com/gpu']) ?? 0);
    if (typeLabel !== null && gpuType === null) {
      if (advertised > 0) skipped.push({ node: name, why: `has ${advertised} nvidia.com/gpu but no ${typeLabel} label` });
      continue;
    }
    if (node.spec?.unschedulable) {
      skipped.push({ node: name, why: 'cordoned (spec.unschedulable)' });
      continue;
    }
    const ready = node.status?.conditions?.find((c) => c.type === 'Ready');
    if (ready && ready.status !== 'True') {
      skipped.push({ node: name, why: `not Ready (${ready.reason ?? ready.status})` });
      continue;
    }
    if (!validName(name)) {
      skipped.push({ node: name, why: 'node name longer than 63 characters or not a topology name' });
      continue;
    }
    const replicas = Math.max(1, Math.floor(Number(label(node, NodeLabel.replicas) ?? 1)) || 1);
    const gpus = Math.floor(advertised / replicas);
    if (gpus > 16) {
      skipped.push({ node: name, why: `${gpus} GPUs: the placement topology holds at most 16 per node` });
      continue;
    }
    const mig: Record<string, number> = {};
    for (const [res, q] of Object.entries(allocatable)) {
      const n = Math.floor(parseQuantity(q) ?? 0);
      if (res.startsWith(MIG_RESOURCE) && n > 0) mig[res.slice(MIG_RESOURCE.length)] = n;
    }
    const strategy = label(node, NodeLabel.sharing);
    const rack = label(node, opts.rackLabel ?? NodeLabel.rack) ?? label(node, NodeLabel.zone);
    const block = label(node, opts.blockLabel ?? NodeLabel.block) ?? label(node, NodeLabel.region);
    const nvlink = label(node, opts.nvlinkLabel ?? NodeLabel.nvlink);
    const bad = [rack, block, nvlink, gpuType].find((v) => v !== null && v !== '' && !validName(v));
    if (bad) {
      skipped.push({ node: name, why: `label value "${bad}" is not a topology name` });
      continue;
    }
    out.push({
      name,
      gpuType: gpuType ?? '',
      gpus,
      replicas,
      sharing: { mps: strategy === 'mps', timeslice: strategy === 'time-slicing' },
      rack: rack ?? name,
      block: block ?? 'default',
      nvlink: nvlink ?? name,
      mig,
      rackLabel: rack ?? name,
      blockLabel: block ?? 'default',
      nvlinkLabel: nvlink,
      cpuMilli: Math.max(1, Math.floor((parseQuantity(allocatable.cpu) ?? 0) * 1000)),
      memoryMib: Math.max(1, Math.floor((parseQuantity(allocatable.memory) ?? 0) / 2 ** 20)),
    });
  }

  // A rack name used in two blocks (rack-1 in every block) becomes `<block>.<rack>`.
  const blocksOfRack = new Map<string, Set<string>>();
  for (const n of out) blocksOfRack.set(n.rackLabel, (blocksOfRack.get(n.rackLabel) ?? new Set()).add(n.blockLabel));
  for (const n of out) {
    if ((blocksOfRack.get(n.rackLabel)?.size ?? 0) > 1) n.rack = `${n.blockLabel}.${n.rackLabel}`;
  }
  for (const [rack, blocks] of blocksOfRack) if (blocks.size > 1) notes.push(`rack "${rack}" is in blocks ${[...blocks].join(', ')}: named <block>.${rack}`);
  // An NVLink domain spans one rack and one GPU type; a node that breaks that is a domain of its own.
  const firstOf = new Map<string, { rack: string; gpuType: string }>();
  for (const n of out) {
    if (n.nvlinkLabel === null) continue;
    const first = firstOf.get(n.nvlinkLabel);
    if (!first) firstOf.set(n.nvlinkLabel, { rack: n.rack, gpuType: n.gpuType });
    else if (first.rack !== n.rack || first.gpuType !== n.gpuType) {
      notes.push(`node ${n.name}: NVLink domain "${n.nvlinkLabel}" spans racks or GPU types; the node is a domain of its own`);
      n.nvlink = n.name;
    }
  }

  const nodesOut: GpuNode[] = out.map(({ name, gpuType, gpus, replicas, sharing, rack, block, nvlink, mig }) => ({
    name,
    gpuType,
    gpus,
    replicas,
    sharing,
    rack,
    block,
    nvlink,
    mig,
  }));
  if (typeLabel === null)
    return {
      nodes: nodesOut,
      index: null,
      skipped,
      notes,
      unusable: 'the GPU-type node label is turned off (gpuTypeLabel: null): govloop cannot tell the GPU types apart',
    };
  if (out.length === 0) {
    const why = skipped.length ? `; left out: ${skipped.map((s) => `${s.node} (${s.why})`).join(', ')}` : '';
    return { nodes: [], index: null, skipped, notes, unusable: `no schedulable Node carries the label ${typeLabel}${why}` };
  }
  const blocks = new Map<string, Map<string, TopologyNodeInput[]>>();
  for (const n of out) {
    const racks = blocks.get(n.block) ?? new Map<string, TopologyNodeInput[]>();
    blocks.set(n.block, racks);
    const list = racks.get(n.rack) ?? [];
    racks.set(n.rack, list);
    list.push({
      name: n.name,
      gpuType: n.gpuType,
      gpus: n.gpus,
      cpuMilli: n.cpuMilli,
      memoryMib: n.memoryMib,
      nvlinkDomain: n.nvlink,
      sharing: { mig: false, mps: n.sharing.mps, timeslice: n.sharing.timeslice },
    });
  }
  let topology: Topology;
  try {
    topology = parseTopology(
      {
        cluster: validName(cluster) ? cluster : 'cluster',
        gpuTypes: Object.fromEntries([...new Set(out.map((n) => n.gpuType))].map((t) => [t, {}])),
        blocks: [...blocks].map(([name, racks]) => ({ name, racks: [...racks].map(([rack, list]) => ({ name: rack, nodes: list })) })),
      },
      'Kubernetes Nodes',
    );
  } catch (err) {
    if (!(err instanceof TopologyError)) throw err;
    return { nodes: nodesOut, index: null, skipped, notes, unusable: err.message };
  }
  return { nodes: nodesOut, index: buildTopologyIndex(topology), skipped, notes, unusable: null };
}

// ---------------------------------------------------------------------------------------------
// Deciding

/** What the placement looks at in a JobSpec (`gpuMilli` and `topology` are optional in it). */
export type GpuAsk = GpuRequest;

/** A placement the backend acts on, or "no room" with the reason the task queues with. */
export type PlaceDecision = (Placement & { explanation?: string }) | { kind: 'none'; reason: Reason };

/**
 * Where govloop puts a job: `place()` over the cluster's topology and what is held. A Job of
 * whole GPUs on several nodes gets the same GPUs on each (one pod template): when `place()` splits
 * unevenly (12 = 8 + 4), the even split inside the same domain is taken (6 + 6), or, when there is
 * none, the job waits. `note`: why govloop left the choice to the kube-scheduler (`kind: 'any'`).
 */
export function decidePlacement(
  reading: TopologyReading,
  held: readonly HeldGpus[],
  ask: GpuAsk,
  cluster: string,
): { decision: PlaceDecision; note: string | null; stateNotes: string[] } {
  const any = (note: string | null) => ({ decision: { kind: 'any' } as const, note, stateNotes: [] });
  if (ask.gpus <= 0) return any(null);
  if (reading.index === null) return any(reading.unusable ?? 'no topology');
  const milli = gpuMilliOf(ask);
  let request: PlacementRequest;
  if (ask.sharing.startsWith('mig:')) return decideMig(reading, held, ask, cluster);
  if (ask.sharing === 'mps' || ask.sharing === 'timeslice') {
    if (milli === undefined) return any(`a ${ask.sharing} job without gpuMilli is placed by the kube-scheduler`);
    request = { gpuMilli: milli, sharing: ask.sharing, gpuType: ask.gpuType };
  } else {
    request = { gpus: ask.gpus, gpuType: ask.gpuType, ...(ask.topology ? { topology: ask.topology } : {}) };
  }
  const index = reading.index;
  const { state, notes } = placementState(index, held);
  const noRoom = (message: string, limit: number | null): { decision: PlaceDecision; note: null; stateNotes: string[] } => ({
    decision: { kind: 'none', reason: reason(ReasonCode.GpuCapacityBusy, message, limit, milli !== undefined ? milli / 1000 : ask.gpus, `cluster/${cluster}`) },
    note: null,
    stateNotes: notes,
  });
  const r = place(state, request);
  if (!r.placed) return noRoom(`placement: ${r.reason.message}`, r.reason.largestFit);
  const perNode = new Map<string, number>();
  for (const a of r.assignments) perNode.set(a.node, (perNode.get(a.node) ?? 0) + Math.max(1, a.gpus.length));
  const nodes = [...perNode.keys()];
  const counts = [...perNode.values()];
  if (request.gpus === undefined || counts.every((c) => c === counts[0])) {
    return { decision: { kind: 'nodes', nodes, explanation: r.explanation.summary }, note: null, stateNotes: notes };
  }
  // Uneven: find k nodes of the chosen domain with gpus/k free each.
  const domain = index.domains[r.domain.level].find((d) => d.id === r.domain.id);
  const type = index.gpuTypeIndex.get(ask.gpuType);
  const candidates = (domain?.nodes ?? [])
    .filter((n) => index.nodes[n]!.type === type)
    .map((n) => ({ name: index.nodes[n]!.name, free: state.freeWhole[n]! }))
    .filter((c) => c.free > 0)
    .sort((a, b) => b.free - a.free || a.name.localeCompare(b.name));
  for (let k = 2; k <= candidates.length; k++) {
    if (ask.gpus % k !== 0) continue;
    const per = ask.gpus / k;
    // Best fit: of the nodes with `per` free, those with the fewest free GPUs, so the emptiest stay whole.
    const fit = candidates.filter((c) => c.free >= per).sort((a, b) => a.free - b.free || a.name.localeCompare(b.name));
    if (fit.length < k) continue;
    return {
      decision: {
        kind: 'nodes',
        nodes: fit
          .slice(0, k)
          .map((c) => c.name)
          .sort(),
        explanation: `${r.explanation.summary}; split evenly as ${k} × ${per} GPUs (one pod template per Job)`,
      },
      note: null,
      stateNotes: notes,
    };
  }
  return noRoom(
    `placement: ${ask.gpus} ${ask.gpuType} GPUs fit in ${r.domain.level} ${r.domain.id} only as ${counts.join(' + ')}; one Job gives every pod the same GPUs and no even split fits there now`,
    null,
  );
}

/**
 * A MIG Job (one pod with `gpus` instances of one profile): the GPU operator partitions the nodes
 * ahead of time and the device plugin advertises allocatable `nvidia.com/mig-<profile>`, so govloop
 * counts free instances per node and profile (allocatable less what govloop Jobs and other pods
 * hold) and pins the Job to the node where the fewest instances of the profile stay free (best
 * fit: nodes with many free instances stay whole for larger asks). No node advertises the profile:
 * the kube-scheduler decides, and says so. Every topology level holds one node, so a `required`
 * topology is always met.
 */
function decideMig(
  reading: TopologyReading,
  held: readonly HeldGpus[],
  ask: GpuAsk,
  cluster: string,
): { decision: PlaceDecision; note: string | null; stateNotes: string[] } {
  const profile = ask.sharing.slice(4);
  const nodes = reading.nodes.filter((n) => n.gpuType === ask.gpuType && (n.mig[profile] ?? 0) > 0);
  if (nodes.length === 0)
    return {
      decision: { kind: 'any' },
      note: `no schedulable ${ask.gpuType} Node advertises ${MIG_RESOURCE}${profile}: the kube-scheduler places MIG ${profile}`,
      stateNotes: [],
    };
  const usedOn = new Map<string, number>();
  for (const h of held) if (h.kind === 'mig' && h.profile === profile) usedOn.set(h.node, (usedOn.get(h.node) ?? 0) + h.count);
  const free = nodes.map((n) => ({ name: n.name, allocatable: n.mig[profile]!, free: Math.max(0, n.mig[profile]! - (usedOn.get(n.name) ?? 0)) }));
  const fit = free.filter((f) => f.free >= ask.gpus).sort((a, b) => a.free - b.free || a.name.localeCompare(b.name));
  const best = fit[0];
  if (!best) {
    const most = Math.max(...free.map((f) => f.free));
    return {
      decision: {
        kind: 'none',
        reason: reason(
          ReasonCode.GpuCapacityBusy,
          `placement: ${ask.gpus} MIG ${profile} instance(s) of ${ask.gpuType}: at most ${most} free on one node (${free.map((f) => `${f.name} ${f.free}/${f.allocatable}`).join(', ')})`,
          most,
          ask.gpus,
          `cluster/${cluster}`,
        ),
      },
      note: null,
      stateNotes: [],
    };
  }
  return {
    decision: {
      kind: 'nodes',
      nodes: [best.name],
      explanation: `node ${best.name}: ${ask.gpus} of its ${best.free} free MIG ${profile} instances (of ${best.allocatable}); best fit over ${fit.length} node(s) with room`,
    },
    note: null,
    stateNotes: [],
  };
}
