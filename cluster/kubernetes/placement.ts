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
 * and does not repartition (see `decidePlacement`).
 */
import type { V1Job, V1Node, V1Pod } from '@kubernetes/client-node';
import type { GpuRequest } from '../backend';
import { type Assignment, type PlacementRequest, type PlacementState, commit, emptyState, heldPlacement, place } from '../../governance/placement';
import { migGpuFraction } from '../../governance/plan';
import { ReasonCode, type Reason, reason } from '../../governance/reasons';
import { type Topology, TopologyError, type TopologyIndex, type TopologyNodeInput, buildTopologyIndex, parseTopology } from '../../governance/topology';
import { Annotation, LABEL_JOB_NAME, LABEL_MANAGED_BY, MANAGED_BY, type Placement, gpuMilliOf, jobPhase, nodesOf, taskIdOf } from './manifests';

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

export interface NodeLabelOptions {
  /** Default `govloop.io/gpu-type`; `null`: GPU types are not labelled (govloop cannot place). */
  gpuTypeLabel?: string | null;
  /** Default `govloop.io/rack`, falling back to `topology.kubernetes.io/zone`. */
  rackLabel?: string;
  /** Default `govloop.io/block`, falling back to `topology.kubernetes.io/region`. */
  blockLabel?: string;
  /** Default `govloop.io/nvlink-domain`. */
  nvlinkLabel?: string;
  /** Extended resource of MPS / time-sliced GPUs, when renamed (`nvidia.com/gpu.shared`). */
  sharedGpuResource?: string;
}

/** A GPU node as govloop sees it. */
export interface GpuNode {
  name: string;
  gpuType: string;
  /** Physical GPUs: allocatable `nvidia.com/gpu` / replicas. */
  gpus: number;
  /** Shared replicas per GPU the device plugin advertises (1: not shared). */
  replicas: number;
  sharing: { mps: boolean; timeslice: boolean };
  rack: string;
  block: string;
  /** NVLink domain id; the node's own name when it is a domain of one. */
  nvlink: string;
  /** MIG instances the node advertises, by profile (`3g.40gb` → 2): allocatable `nvidia.com/mig-<profile>`. */
  mig: Record<string, number>;
}

export interface TopologyReading {
  /** The nodes govloop may place on, sorted by name. */
  nodes: GpuNode[];
  /** Their topology index; null when govloop cannot place. */
  index: TopologyIndex | null;
  /** Nodes left out, and why (cordoned, NotReady, a name or GPU count the topology cannot hold). */
  skipped: { node: string; why: string }[];
  /** Labels that did not fit the topology and were worked around (a rack in two blocks …). */
  notes: string[];
  /** Why govloop cannot place on this cluster at all (the kube-scheduler then decides); null when it can. */
  unusable: string | null;
}

const TOPOLOGY_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;
const validName = (s: string) => s.length <= 63 && TOPOLOGY_NAME.test(s);

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/** A Kubernetes resource quantity (`16`, `15500m`, `64Gi`, `1e3`) in base units; null when malformed. */
export function parseQuantity(q: string | number | undefined | null): number | null {
  if (q === undefined || q === null) return null;
  if (typeof q === 'number') return Number.isFinite(q) ? q : null;
  const m = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei)|([eE][+-]?\d+)|(n|u|m|k|M|G|T|P|E)?)$/.exec(q.trim());
  if (!m) return null;
  const n = Number(m[1]);
  if (m[2]) return n * BINARY[m[2]]!;
  if (m[3]) return n * 10 ** Number(m[3].slice(1));
  return n * DECIMAL[m[4] ?? '']!;
}

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
// What is held

/** GPUs something holds on one node: whole GPUs, a share of one GPU, or MIG instances (recorded, not counted as `nvidia.com/gpu`). */
export type HeldGpus = { owner: string; taskId: string | null; node: string } & (
  | { kind: 'whole'; gpus: number }
  | { kind: 'share'; milli: number; sharing: 'mps' | 'timeslice' }
  /** `count` MIG instances of `profile` (not counted as `nvidia.com/gpu`: a partitioned GPU is not in it). */
  | { kind: 'mig'; profile: string; count: number; units: number }
);

const MIG_RESOURCE = 'nvidia.com/mig-';
const migUnits = (profile: string, count: number): number => count * migGpuFraction(profile);

/** Does a govloop Job hold its nodes now: pinned, and Running or Suspended-but-placed (not preempted, finished or being deleted)? */
export function holdsNodes(job: V1Job): boolean {
  const phase = jobPhase(job).phase;
  return (phase === 'Running' || phase === 'Suspended') && nodesOf(job).length > 0;
}

/** The GPUs of the govloop Jobs that hold their nodes (`holdsNodes`), per node. */
export function heldByJobs(jobs: readonly V1Job[]): HeldGpus[] {
  const out: HeldGpus[] = [];
  for (const job of jobs) {
    if (!holdsNodes(job)) continue;
    const a = job.metadata?.annotations ?? {};
    const nodes = nodesOf(job);
    const gpus = Number(a[Annotation.gpus] ?? 0) || 0;
    if (gpus <= 0) continue;
    const sharing = a[Annotation.sharing] ?? 'exclusive';
    const base = { owner: `Job ${job.metadata?.namespace ?? ''}/${job.metadata?.name ?? ''}`, taskId: taskIdOf(job) };
    const milli = Number(a[Annotation.gpuMilli]);
    if (sharing.startsWith('mig:'))
      out.push({ ...base, node: nodes[0]!, kind: 'mig', profile: sharing.slice(4), count: gpus, units: migUnits(sharing.slice(4), gpus) });
    else if ((sharing === 'mps' || sharing === 'timeslice') && Number.isInteger(milli) && milli > 0 && milli < 1000)
      out.push({ ...base, node: nodes[0]!, kind: 'share', milli, sharing });
    else for (const node of nodes) out.push({ ...base, node, kind: 'whole', gpus: Math.ceil(gpus / nodes.length) });
  }
  return out;
}

/**
 * GPUs that pods bound to a node hold, except the pods of Jobs `heldByJobs` already counts
 * (`counted`: `ns/job-name`). `nvidia.com/gpu` (or the renamed shared resource) on a node with
 * replicas is a share of 1/replicas; `nvidia.com/mig-<p>` counts by its slices. Finished pods hold nothing.
 */
export function heldByPods(
  pods: readonly V1Pod[],
  counted: ReadonlySet<string>,
  nodes: readonly GpuNode[],
  opts: Pick<NodeLabelOptions, 'sharedGpuResource'> = {},
): HeldGpus[] {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const out: HeldGpus[] = [];
  for (const pod of pods) {
    const nodeName = pod.spec?.nodeName;
    const phase = pod.status?.phase;
    if (!nodeName || phase === 'Succeeded' || phase === 'Failed') continue;
    const ns = pod.metadata?.namespace ?? '';
    const jobName = pod.metadata?.labels?.[LABEL_JOB_NAME];
    if (jobName && counted.has(`${ns}/${jobName}`)) continue;
    const node = byName.get(nodeName);
    const govloop = pod.metadata?.labels?.[LABEL_MANAGED_BY] === MANAGED_BY;
    const base = {
      owner: `Pod ${ns}/${pod.metadata?.name ?? ''}`,
      taskId: govloop ? (pod.metadata?.annotations?.[Annotation.taskId] ?? null) : null,
      node: nodeName,
    };
    for (const c of pod.spec?.containers ?? []) {
      const res = { ...(c.resources?.requests ?? {}), ...(c.resources?.limits ?? {}) };
      for (const [name, q] of Object.entries(res)) {
        const n = Math.floor(parseQuantity(q) ?? 0);
        if (n <= 0) continue;
        const replicas = node?.replicas ?? 1;
        const shared = name === opts.sharedGpuResource && name !== 'nvidia.com/gpu';
        if (name === 'nvidia.com/gpu' || shared) {
          const mode = node?.sharing.mps ? 'mps' : node?.sharing.timeslice ? 'timeslice' : null;
          if (replicas > 1 && mode) for (let i = 0; i < n; i++) out.push({ ...base, kind: 'share', milli: Math.floor(1000 / replicas), sharing: mode });
          else out.push({ ...base, kind: 'whole', gpus: n });
        } else if (name.startsWith(MIG_RESOURCE)) {
          const profile = name.slice(MIG_RESOURCE.length);
          out.push({ ...base, kind: 'mig', profile, count: n, units: migUnits(profile, n) });
        }
      }
    }
  }
  return out;
}

/**
 * GPUs in use on each node, as the simulated cluster counts them: a GPU is used when anything holds
 * it, whole or a share of it (a shared GPU is no longer free for whole-GPU work). With a topology,
 * from the placement state (the shares packed as `placementState` packs them); without one, whole
 * GPUs plus the shares rounded up to GPUs. MIG instances are not counted: a MIG-partitioned GPU is
 * not in a node's allocatable `nvidia.com/gpu`.
 */
export function usedGpus(reading: TopologyReading, held: readonly HeldGpus[]): Map<string, number> {
  const used = new Map<string, number>();
  if (reading.index !== null) {
    const { state } = placementState(reading.index, held);
    for (const n of reading.index.nodes) used.set(n.name, n.gpus - state.freeWhole[n.index]!);
    return used;
  }
  const milli = new Map<string, number>();
  for (const h of held) {
    if (h.kind === 'whole') used.set(h.node, (used.get(h.node) ?? 0) + h.gpus);
    if (h.kind === 'share') milli.set(h.node, (milli.get(h.node) ?? 0) + h.milli);
  }
  for (const [node, m] of milli) used.set(node, (used.get(node) ?? 0) + Math.ceil(m / 1000));
  return used;
}

/**
 * The placement state with the held GPUs taken. Kubernetes does not say which GPU of a node a pod
 * got, so whole GPUs are taken lowest index first and shares go onto a GPU already shared the same
 * way while it has room. Held GPUs the topology cannot hold (more than a node has, a node left out,
 * a share on a node that does not share) are left out and named in `notes`.
 */
export function placementState(index: TopologyIndex, held: readonly HeldGpus[]): { state: PlacementState; notes: string[] } {
  const notes: string[] = [];
  type Slot = { mode: 'free' | 'whole' | 'mps' | 'timeslice'; milli: number };
  const slots = new Map<string, Slot[]>();
  const assignments: Assignment[] = [];
  for (const h of held) {
    if (h.kind === 'mig') continue;
    const n = index.nodeIndex.get(h.node);
    if (n === undefined) continue; // not a node govloop places on (another GPU type's, cordoned): nothing to take
    const node = index.nodes[n]!;
    const s = slots.get(h.node) ?? Array.from({ length: node.gpus }, (): Slot => ({ mode: 'free', milli: 0 }));
    slots.set(h.node, s);
    if (h.kind === 'whole') {
      const free = s.map((x, i) => (x.mode === 'free' ? i : -1)).filter((i) => i >= 0);
      const take = free.slice(0, h.gpus);
      if (take.length < h.gpus) notes.push(`${h.owner} holds ${h.gpus} GPUs on ${h.node}, which has ${take.length} free: counted ${take.length}`);
      if (take.length === 0) continue;
      for (const i of take) s[i] = { mode: 'whole', milli: 1000 };
      assignments.push({ kind: 'whole', node: h.node, gpus: take, cpuMilli: 0, memoryMib: 0 });
    } else {
      if (!(h.sharing === 'mps' ? node.mps : node.timeslice)) {
        notes.push(`${h.owner} holds a ${h.sharing} share on ${h.node}, which is not labelled for ${h.sharing}: not counted`);
        continue;
      }
      let i = s.findIndex((x) => x.mode === h.sharing && x.milli + h.milli <= 1000);
      if (i < 0) i = s.findIndex((x) => x.mode === 'free');
      if (i < 0) {
        notes.push(`${h.owner} holds a ${h.milli}/1000 share on ${h.node}, which has no GPU left for it: not counted`);
        continue;
      }
      s[i] = { mode: h.sharing, milli: s[i]!.milli + h.milli };
      assignments.push({ kind: 'milli', node: h.node, gpus: [i], milli: h.milli, sharing: h.sharing, cpuMilli: 0, memoryMib: 0 });
    }
  }
  const state = emptyState(index);
  try {
    return { state: assignments.length ? commit(state, heldPlacement(assignments)) : state, notes };
  } catch (err) {
    // Cannot happen with the slots above; if it does, take what commits one by one.
    let st = state;
    for (const a of assignments) {
      try {
        st = commit(st, heldPlacement([a]));
      } catch (e) {
        notes.push(`held ${a.kind} on ${a.node} not counted: ${(e as Error).message}`);
      }
    }
    notes.push(`held GPUs committed one by one: ${(err as Error).message}`);
    return { state: st, notes };
  }
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
