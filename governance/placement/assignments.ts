/** Assignments on chosen nodes and GPUs, and the explained placement record or refusal reason (governance/placement.ts). */
import { type IndexedNode, TOPOLOGY_LEVELS, TopologyLevel, type TopologyIndex } from '../topology';
import { type Assignment, type PlacementPolicy, type SharingMode, type Placement, PlacementReasonCode, type PlacementReason } from './types';
import { FREE, WHOLE, MIG, TSLICE, MILLI, modeOf, shareTarget, type PlacementState } from './state';
import { gpuCode, freeOf, S_MODE, S_MILLI, S_C, S_M, loadScratch, scratchFrag, evalNode } from './fragmentation';
import { type Demand, capacities, domainCap } from './demand';

/** Splits the job's CPU and memory over a gang's nodes in proportion to GPUs, summing exactly. */
export function gangAssignments(st: PlacementState, d: Demand, picks: [number, number][]): Assignment[] {
  const out: Assignment[] = [];
  let cum = 0;
  for (const [n, k] of picks) {
    const node = st.index.nodes[n]!;
    const cpu = Math.floor((d.cpu * (cum + k)) / d.count) - Math.floor((d.cpu * cum) / d.count);
    const mem = Math.floor((d.mem * (cum + k)) / d.count) - Math.floor((d.mem * cum) / d.count);
    cum += k;
    out.push({ kind: 'whole', node: node.name, gpus: freeGpus(st, node, k), cpuMilli: cpu, memoryMib: mem });
  }
  return out;
}

export function freeGpus(st: PlacementState, node: IndexedNode, k: number): number[] {
  const gpus: number[] = [];
  for (let g = 0; g < node.gpus && gpus.length < k; g++) if (st.gpuMode[node.gpuOffset + g] === FREE) gpus.push(g);
  return gpus;
}

export function singleNodeAssignment(st: PlacementState, node: IndexedNode, d: Demand): Assignment {
  const base = { node: node.name, cpuMilli: d.cpu, memoryMib: d.mem };
  if (d.kind === 'cpu') return { kind: 'cpu', gpus: [], ...base };
  if (d.kind === 'whole') return { kind: 'whole', gpus: freeGpus(st, node, d.count), ...base };
  const ev = evalNode(st, node, d)!;
  let gpu = -1;
  for (let g = 0; g < node.gpus; g++) {
    const x = node.gpuOffset + g;
    if (gpuCode(st.gpuMode[x]!, st.gpuMilli[x]!, st.migCompute[x]!, st.migMemory[x]!) === ev.pick) {
      gpu = g;
      break;
    }
  }
  return d.kind === 'milli'
    ? { kind: 'milli', gpus: [gpu], milli: d.milli, sharing: shareOf(st, node, gpu, d), ...base }
    : { kind: 'mig', gpus: [gpu], migProfile: d.migProfile, ...base };
}

/** The sharing mode a share placed on this GPU runs in. */
export function shareOf(st: PlacementState, node: IndexedNode, gpu: number, d: Demand): SharingMode {
  return shareTarget(node, d.sharing, st.gpuMode[node.gpuOffset + gpu]!) === TSLICE ? 'timeslice' : 'mps';
}

export function levelNoun(level: TopologyLevel): string {
  return level === 'nvlink' ? 'NVLink domain' : level;
}

export function capacityReason(st: PlacementState, d: Demand, level: TopologyLevel, caps?: Int32Array): Omit<PlacementReason, never> {
  if (d.kind !== 'whole') {
    const what = d.kind === 'cpu' ? 'CPU and memory' : d.kind === 'milli' ? `a GPU with ${d.milli}/1000 free` : `a GPU with room for MIG ${d.migProfile}`;
    return {
      code: PlacementReasonCode.InsufficientCapacity,
      message: `no node has ${what} for ${d.words}`,
      requested: d.words,
      level: 'node',
      largestFit: 0,
      clusterFit: 0,
    };
  }
  const c = caps ?? capacities(st, d);
  let clusterFit = 0;
  for (const x of c) clusterFit += x;
  let largest = 0;
  for (const dom of st.index.domains[level]) largest = Math.max(largest, domainCap(dom, c));
  if (clusterFit < d.count) {
    return {
      code: PlacementReasonCode.InsufficientCapacity,
      message: `the cluster can take ${clusterFit} of the ${d.count} GPUs asked (${d.words})`,
      requested: d.words,
      level,
      largestFit: largest,
      clusterFit,
    };
  }
  return {
    code: PlacementReasonCode.TopologyUnsatisfiable,
    message: `required ${levelNoun(level)}: no ${levelNoun(level)} can take ${d.count} GPUs (at most ${largest}); the cluster as a whole has ${clusterFit}`,
    requested: d.words,
    level,
    largestFit: largest,
    clusterFit,
  };
}

/** The placement record: domain, constraint check, fragmentation after. */
export function placedOn(
  st: PlacementState,
  d: Demand,
  policy: PlacementPolicy,
  requestId: string | null,
  assignments: Assignment[],
  whyNotSmaller: string[],
  chosen?: TopologyLevel,
): Placement {
  const domain = enclosingDomain(st.index, assignments);
  const chosenLevel = chosen ?? domain.level;
  const rank = (l: TopologyLevel) => TOPOLOGY_LEVELS.indexOf(l);
  const satisfied = rank(domain.level) <= rank(d.constraint.level);
  const fragmentationAfter = fragmentationWith(st, assignments);
  let summary = `${d.words} on ${domain.level === 'node' ? `node ${domain.id}` : `${assignments.length} nodes in ${levelNoun(domain.level)} ${domain.id}`}`;
  if (!satisfied) summary += `: preferred ${levelNoun(d.constraint.level)} not met, spread over a ${levelNoun(domain.level)}`;
  return {
    placed: true,
    policy,
    requestId,
    assignments,
    domain,
    explanation: { chosenLevel, whyNotSmaller, fragmentationAfter, constraint: { ...d.constraint, satisfied }, summary },
  };
}

/** The smallest domain holding every assigned node. */
export function enclosingDomain(index: TopologyIndex, assignments: readonly Assignment[]): { level: TopologyLevel; id: string } {
  const nodes = assignments.map((a) => index.nodes[index.nodeIndex.get(a.node)!]!);
  const first = nodes[0]!;
  const same = (f: (n: IndexedNode) => number) => nodes.every((n) => f(n) === f(first));
  if (same((n) => n.index)) return { level: 'node', id: first.name };
  if (same((n) => n.nvlink)) return { level: 'nvlink', id: index.domains.nvlink[first.nvlink]!.id };
  if (same((n) => n.rack)) return { level: 'rack', id: index.domains.rack[first.rack]!.id };
  if (same((n) => n.block)) return { level: 'block', id: index.domains.block[first.block]!.id };
  return { level: 'cluster', id: index.cluster };
}

/** fragmentation() of the state the assignments would make, without building it. */
function fragmentationWith(st: PlacementState, assignments: readonly Assignment[]): number {
  let frag = 0;
  let free = 0;
  for (let i = 0; i < st.nodeFrag.length; i++) {
    frag += st.nodeFrag[i]!;
    free += st.freeMilli[i]!;
  }
  for (const a of assignments) {
    const node = st.index.nodes[st.index.nodeIndex.get(a.node)!]!;
    const n = node.index;
    const t = st.index.gpuTypes[node.type]!;
    loadScratch(st, node);
    for (const g of a.gpus) {
      const before = freeOf(S_MODE[g]!, S_MILLI[g]!, S_C[g]!, t.migComputeSlices);
      applyToGpu(a, g, t.migProfiles.get(a.kind === 'mig' ? a.migProfile : '') ?? null);
      free += freeOf(S_MODE[g]!, S_MILLI[g]!, S_C[g]!, t.migComputeSlices) - before;
    }
    frag += scratchFrag(st, node, st.cpuFree[n]! - a.cpuMilli, st.memFree[n]! - a.memoryMib) - st.nodeFrag[n]!;
  }
  return free > 0 ? Math.max(0, frag / free) : 0;
}

function applyToGpu(a: Assignment, g: number, mig: { computeSlices: number; memorySlices: number } | null): void {
  if (a.kind === 'whole') {
    S_MODE[g] = WHOLE;
    S_MILLI[g] = MILLI;
  } else if (a.kind === 'milli') {
    S_MODE[g] = modeOf(a.sharing);
    S_MILLI[g] = S_MILLI[g]! + a.milli;
  } else if (a.kind === 'mig' && mig !== null) {
    S_MODE[g] = MIG;
    S_C[g] = S_C[g]! + mig.computeSlices;
    S_M[g] = S_M[g]! + mig.memorySlices;
  }
}
