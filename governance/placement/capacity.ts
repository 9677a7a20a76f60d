/** Building and changing the capacity state: an empty cluster, usage, commit and release (governance/placement.ts). */
import type { IndexedNode, TopologyIndex } from '../topology';
import { type Assignment, type Placement, DEFAULT_WORKLOAD } from './types';
import { FREE, WHOLE, MIG, MILLI, modeOf, type PlacementState, type StateOptions } from './state';
import { refreshNode, compileProfile } from './fragmentation';

/** An empty cluster: every GPU free, every node's CPU and memory free. */
export function emptyState(index: TopologyIndex, options: StateOptions = {}): PlacementState {
  const profile = compileProfile(index, options.workload ?? DEFAULT_WORKLOAD);
  const n = index.nodes.length;
  const st: PlacementState = {
    index,
    profile,
    gpuMode: new Uint8Array(index.totalGpus),
    gpuMilli: new Uint16Array(index.totalGpus),
    migCompute: new Uint8Array(index.totalGpus),
    migMemory: new Uint8Array(index.totalGpus),
    cpuFree: Int32Array.from(index.nodes, (x) => x.cpuMilli),
    memFree: Int32Array.from(index.nodes, (x) => x.memoryMib),
    freeWhole: Uint8Array.from(index.nodes, (x) => x.gpus),
    freeMilli: new Float64Array(n),
    nodeFrag: new Float64Array(n),
    nodeSig: new Float64Array(n),
    domainFree: {
      nvlink: new Int32Array(index.domains.nvlink.length),
      rack: new Int32Array(index.domains.rack.length),
      block: new Int32Array(index.domains.block.length),
    },
  };
  for (const node of index.nodes) {
    st.domainFree.nvlink[node.nvlink]! += node.gpus;
    st.domainFree.rack[node.rack]! += node.gpus;
    st.domainFree.block[node.block]! += node.gpus;
    refreshNode(st, node);
  }
  return st;
}

export interface Usage {
  totalGpus: number;
  /** GPUs in use, counting shares and MIG slices by their fraction. */
  allocatedGpus: number;
  wholeGpusFree: number;
  cpuMilliFree: number;
  memoryMibFree: number;
}

export function usage(state: PlacementState): Usage {
  let free = 0;
  let whole = 0;
  let cpu = 0;
  let mem = 0;
  for (let i = 0; i < state.index.nodes.length; i++) {
    free += state.freeMilli[i]!;
    whole += state.freeWhole[i]!;
    cpu += state.cpuFree[i]!;
    mem += state.memFree[i]!;
  }
  const total = state.index.totalGpus;
  return { totalGpus: total, allocatedGpus: total - free / MILLI, wholeGpusFree: whole, cpuMilliFree: cpu, memoryMibFree: mem };
}

// ---------------------------------------------------------------------------------------------
// Commit and release

export class PlacementStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PlacementStateError';
  }
}

function copyState(st: PlacementState): PlacementState {
  return {
    index: st.index,
    profile: st.profile,
    gpuMode: st.gpuMode.slice(),
    gpuMilli: st.gpuMilli.slice(),
    migCompute: st.migCompute.slice(),
    migMemory: st.migMemory.slice(),
    cpuFree: st.cpuFree.slice(),
    memFree: st.memFree.slice(),
    freeWhole: st.freeWhole.slice(),
    freeMilli: st.freeMilli.slice(),
    nodeFrag: st.nodeFrag.slice(),
    nodeSig: st.nodeSig.slice(),
    domainFree: { nvlink: st.domainFree.nvlink.slice(), rack: st.domainFree.rack.slice(), block: st.domainFree.block.slice() },
  };
}

/**
 * GPUs a job already holds, as a placement to `commit` into (or `release` from) a state: how a
 * backend rebuilds the cluster's state from the jobs it sees, and how tests and the benchmarks
 * set a state up by hand.
 */
export function heldPlacement(assignments: Assignment[]): Placement {
  return {
    placed: true,
    policy: 'govloop',
    requestId: null,
    assignments,
    domain: { level: 'cluster', id: 'held' },
    explanation: {
      chosenLevel: 'cluster',
      whyNotSmaller: [],
      fragmentationAfter: 0,
      constraint: { level: 'cluster', mode: 'preferred', satisfied: true },
      summary: 'held',
    },
  };
}

/**
 * The state with the placement's assignments taken. Throws PlacementStateError, leaving `state`
 * as it was, when they no longer fit (the state moved on since `place` answered).
 */
export function commit(state: PlacementState, placement: Placement): PlacementState {
  return applyAssignments(state, placement.assignments, 1);
}

/** The state with the placement's assignments given back. Throws PlacementStateError when they are not held. */
export function release(state: PlacementState, placement: Placement): PlacementState {
  return applyAssignments(state, placement.assignments, -1);
}

function applyAssignments(state: PlacementState, assignments: readonly Assignment[], sign: 1 | -1): PlacementState {
  const st = copyState(state);
  const { index } = st;
  const touched = new Set<number>();
  const verb = sign === 1 ? 'commit' : 'release';
  for (const a of assignments) {
    const n = index.nodeIndex.get(a.node);
    if (n === undefined) throw new PlacementStateError(`${verb}: unknown node ${a.node}`);
    const node = index.nodes[n]!;
    const t = index.gpuTypes[node.type]!;
    touched.add(n);
    const cpu = st.cpuFree[n]! - sign * a.cpuMilli;
    const mem = st.memFree[n]! - sign * a.memoryMib;
    if (cpu < 0 || mem < 0 || cpu > node.cpuMilli || mem > node.memoryMib) {
      throw new PlacementStateError(`${verb}: node ${a.node} CPU/memory would be ${cpu}m/${mem} MiB of ${node.cpuMilli}m/${node.memoryMib} MiB`);
    }
    st.cpuFree[n] = cpu;
    st.memFree[n] = mem;
    if (new Set(a.gpus).size !== a.gpus.length) throw new PlacementStateError(`${verb}: GPU listed twice on ${a.node}`);
    for (const g of a.gpus) {
      if (!(Number.isInteger(g) && g >= 0 && g < node.gpus)) throw new PlacementStateError(`${verb}: node ${a.node} has no GPU ${g}`);
      const x = node.gpuOffset + g;
      const mode = st.gpuMode[x]!;
      const where = `${a.node} GPU ${g}`;
      if (a.kind === 'whole') {
        if (sign === 1 ? mode !== FREE : mode !== WHOLE) throw new PlacementStateError(`${verb}: ${where} is not ${sign === 1 ? 'free' : 'held whole'}`);
        st.gpuMode[x] = sign === 1 ? WHOLE : FREE;
        st.gpuMilli[x] = sign === 1 ? MILLI : 0;
        const dv = sign === 1 ? -1 : 1;
        st.domainFree.nvlink[node.nvlink]! += dv;
        st.domainFree.rack[node.rack]! += dv;
        st.domainFree.block[node.block]! += dv;
      } else if (a.kind === 'milli') {
        if (!(Number.isInteger(a.milli) && a.milli > 0 && a.milli < MILLI)) throw new PlacementStateError(`${verb}: bad share ${a.milli}`);
        if (!(a.sharing === 'mps' ? node.mps : a.sharing === 'timeslice' ? node.timeslice : false)) {
          throw new PlacementStateError(`${verb}: node ${a.node} does not allow ${String(a.sharing)} sharing`);
        }
        const target = modeOf(a.sharing);
        const used = st.gpuMilli[x]! + sign * a.milli;
        if (sign === 1 ? !(mode === FREE || (mode === target && used <= MILLI)) : !(mode === target && used >= 0)) {
          throw new PlacementStateError(`${verb}: ${where} cannot ${sign === 1 ? 'take' : 'give back'} a ${a.milli}/1000 ${a.sharing} share`);
        }
        if (mode === FREE) adjustDomainFree(st, node, -1);
        st.gpuMilli[x] = used;
        st.gpuMode[x] = used === 0 ? FREE : target;
        if (used === 0) adjustDomainFree(st, node, 1);
      } else if (a.kind === 'mig') {
        const p = t.migProfiles.get(a.migProfile);
        if (p === undefined) throw new PlacementStateError(`${verb}: ${node.name} (${t.name}) has no MIG profile ${a.migProfile}`);
        if (!node.mig) throw new PlacementStateError(`${verb}: node ${a.node} does not allow MIG`);
        const c = st.migCompute[x]! + sign * p.computeSlices;
        const m = st.migMemory[x]! + sign * p.memorySlices;
        const okMode = sign === 1 ? mode === FREE || mode === MIG : mode === MIG;
        if (!okMode || c < 0 || m < 0 || c > t.migComputeSlices || m > t.migMemorySlices) {
          throw new PlacementStateError(`${verb}: ${where} cannot ${sign === 1 ? 'take' : 'give back'} MIG ${a.migProfile}`);
        }
        if (mode === FREE) adjustDomainFree(st, node, -1);
        st.migCompute[x] = c;
        st.migMemory[x] = m;
        st.gpuMode[x] = c === 0 ? FREE : MIG;
        if (c === 0) adjustDomainFree(st, node, 1);
      } else {
        throw new PlacementStateError(`${verb}: a CPU-only assignment lists GPUs`);
      }
    }
  }
  for (const n of touched) refreshNode(st, index.nodes[n]!);
  return st;
}

function adjustDomainFree(st: PlacementState, node: IndexedNode, dv: number): void {
  st.domainFree.nvlink[node.nvlink]! += dv;
  st.domainFree.rack[node.rack]! += dv;
  st.domainFree.block[node.block]! += dv;
}
