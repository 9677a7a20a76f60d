/** The per-node baselines (firstFit, bestFit) and the hooks for per-node policies defined elsewhere (governance/placement.ts). */
import type { Domain, IndexedNode } from '../topology';
import { PlacementRequest, type Assignment, type PlacementPolicy, type SharingMode, PlacementReasonCode, type PlaceResult } from './types';
import { FREE, MIG, MILLI, shareTarget, type PlacementState } from './state';
import { freeOf } from './fragmentation';
import { type Demand, refuse, normalize, staticOk, capacities, domainCap } from './demand';
import { gangAssignments, freeGpus, shareOf, capacityReason, placedOn } from './assignments';

// ---------------------------------------------------------------------------------------------
// Baselines: per node, no topology search

/**
 * First fit: nodes in topology order; the first node (and, for a share, the first GPU on it) that
 * can take the request. A gang takes GPUs from nodes in order until it has them all, inside the
 * first domain of its required level that can hold it (the whole cluster when nothing is required).
 */
export function firstFit(state: PlacementState, request: PlacementRequest): PlaceResult {
  return baseline(state, request, 'firstFit');
}

/**
 * Best fit: the node with the least free GPU capacity (then least free CPU) that can take the
 * request, and on it the GPU with the least room that still fits. A gang fills nodes least-free
 * first inside the least-free domain of its required level that can hold it.
 */
export function bestFit(state: PlacementState, request: PlacementRequest): PlaceResult {
  return baseline(state, request, 'bestFit');
}

function baseline(st: PlacementState, request: PlacementRequest, policy: 'firstFit' | 'bestFit'): PlaceResult {
  const d = normalize(st, request, policy);
  if ('placed' in d) return d;
  const id = request.id ?? null;
  const { index } = st;
  const best = policy === 'bestFit';
  if (d.kind !== 'whole') {
    let chosen = -1;
    let gpu = -1;
    for (const node of index.nodes) {
      const n = node.index;
      if (st.cpuFree[n]! < d.cpu || st.memFree[n]! < d.mem || !staticOk(node, d)) continue;
      if (chosen >= 0 && best) {
        const c = chosen;
        if (st.freeMilli[n]! > st.freeMilli[c]! || (st.freeMilli[n] === st.freeMilli[c] && st.cpuFree[n]! >= st.cpuFree[c]!)) continue;
      }
      const g = d.kind === 'cpu' ? -1 : pickGpu(st, node, d, best);
      if (d.kind !== 'cpu' && g < 0) continue;
      chosen = n;
      gpu = g;
      if (!best) break;
    }
    if (chosen < 0) return refuse(policy, id, capacityReason(st, d, 'node'));
    const node = index.nodes[chosen]!;
    const base = { node: node.name, cpuMilli: d.cpu, memoryMib: d.mem };
    const a: Assignment =
      d.kind === 'cpu'
        ? { kind: 'cpu', gpus: [], ...base }
        : d.kind === 'milli'
          ? { kind: 'milli', gpus: [gpu], milli: d.milli, sharing: shareOf(st, node, gpu, d), ...base }
          : { kind: 'mig', gpus: [gpu], migProfile: d.migProfile, ...base };
    return placedOn(st, d, policy, id, [a], []);
  }
  const level = d.constraint.mode === 'required' ? d.constraint.level : 'cluster';
  const caps = capacities(st, d);
  let chosen: Domain | null = null;
  let chosenFree = Infinity;
  for (const dom of index.domains[level]) {
    if (domainCap(dom, caps) < d.count) continue;
    if (!best) {
      chosen = dom;
      break;
    }
    let free = 0;
    for (const n of dom.nodes) free += st.freeMilli[n]!;
    if (free < chosenFree) {
      chosen = dom;
      chosenFree = free;
    }
  }
  if (chosen === null) return refuse(policy, id, capacityReason(st, d, level, caps));
  const order = chosen.nodes.filter((n) => caps[n]! > 0);
  if (best) order.sort((a, b) => st.freeMilli[a]! - st.freeMilli[b]! || st.cpuFree[a]! - st.cpuFree[b]! || a - b);
  const picks: [number, number][] = [];
  let rest = d.count;
  for (const n of order) {
    const k = Math.min(caps[n]!, rest);
    picks.push([n, k]);
    rest -= k;
    if (rest === 0) break;
  }
  return placedOn(st, d, policy, id, gangAssignments(st, d, picks), []);
}

/** The GPU on a node for a share or a MIG slice: first that fits, or the one with least room left. */
function pickGpu(st: PlacementState, node: IndexedNode, d: Demand, best: boolean): number {
  const t = st.index.gpuTypes[node.type]!;
  let chosen = -1;
  let chosenLeft = Infinity;
  for (let g = 0; g < node.gpus; g++) {
    const x = node.gpuOffset + g;
    const mode = st.gpuMode[x]!;
    let left: number;
    if (d.kind === 'milli') {
      if (shareTarget(node, d.sharing, mode) < 0 || MILLI - st.gpuMilli[x]! < d.milli) continue;
      left = MILLI - st.gpuMilli[x]! - d.milli;
    } else {
      const p = t.migProfiles.get(d.migProfile)!;
      const c = st.migCompute[x]!;
      if (!(mode === FREE || (mode === MIG && c + p.computeSlices <= t.migComputeSlices && st.migMemory[x]! + p.memorySlices <= t.migMemorySlices))) continue;
      left = t.migComputeSlices - c - p.computeSlices;
    }
    if (!best) return g;
    if (left < chosenLeft) {
      chosen = g;
      chosenLeft = left;
    }
  }
  return chosen;
}

// ---------------------------------------------------------------------------------------------
// Hooks for per-node policies defined elsewhere (the benchmark's paper baselines)

/** Free capacity of GPU `g` (0-based) of node `n`, in thousandths: 1000 free, 1000 − used for a shared GPU, 0 held whole. */
export function gpuMilliLeft(state: PlacementState, n: number, g: number): number {
  const node = state.index.nodes[n]!;
  const x = node.gpuOffset + g;
  return freeOf(state.gpuMode[x]!, state.gpuMilli[x]!, state.migCompute[x]!, state.index.gpuTypes[node.type]!.migComputeSlices);
}

/**
 * Thousandths of GPU `g` of node `n` a share asked with `sharing` (null: either mode) could take now:
 * 1000 on a free GPU the node may share, the rest of a GPU shared in a compatible mode, else 0.
 */
export function shareRoom(state: PlacementState, n: number, g: number, sharing: SharingMode | null): number {
  const node = state.index.nodes[n]!;
  const x = node.gpuOffset + g;
  const mode = state.gpuMode[x]!;
  return shareTarget(node, sharing, mode) < 0 ? 0 : MILLI - state.gpuMilli[x]!;
}

/**
 * A single-node placement on a node (and GPUs) a caller chose: validated like `place`, refused with
 * INSUFFICIENT_CAPACITY when it does not fit there now, explained like every placement. Whole GPUs
 * go to `gpus` when given, else to the node's first free ones; a share or MIG slice goes to `gpus[0]`
 * when given, else to the GPU with the least room that still fits. A request for more GPUs than
 * the node has is refused, whatever its topology constraint: these policies never span nodes.
 */
export function placeOnNode(state: PlacementState, request: PlacementRequest, policy: PlacementPolicy, n: number, gpus?: readonly number[]): PlaceResult {
  const d = normalize(state, request, policy);
  if ('placed' in d) return d;
  const id = request.id ?? null;
  const node = state.index.nodes[n];
  if (node === undefined) throw new RangeError(`placeOnNode: no node ${n}`);
  const misfit = (why: string) =>
    refuse(policy, id, {
      code: PlacementReasonCode.InsufficientCapacity,
      message: `node ${node.name} cannot take ${d.words}: ${why}`,
      requested: d.words,
      level: 'node',
    });
  if (!staticOk(node, d)) return misfit('GPU type or sharing mode not offered');
  if (state.cpuFree[n]! < d.cpu || state.memFree[n]! < d.mem) return misfit('not enough free CPU or memory');
  const base = { node: node.name, cpuMilli: d.cpu, memoryMib: d.mem };
  let a: Assignment;
  if (d.kind === 'cpu') a = { kind: 'cpu', gpus: [], ...base };
  else if (d.kind === 'whole') {
    const chosen = gpus === undefined ? freeGpus(state, node, d.count) : [...gpus];
    const ok =
      chosen.length === d.count &&
      new Set(chosen).size === chosen.length &&
      chosen.every((g) => Number.isInteger(g) && g >= 0 && g < node.gpus && state.gpuMode[node.gpuOffset + g] === FREE);
    if (!ok) return misfit(`${d.count} free GPU${d.count === 1 ? '' : 's'} needed`);
    a = { kind: 'whole', gpus: chosen, ...base };
  } else {
    const g = gpus === undefined ? pickGpu(state, node, d, true) : (gpus[0] ?? -1);
    if (!(Number.isInteger(g) && g >= 0 && g < node.gpus)) return misfit('no GPU with room');
    if (d.kind === 'milli') {
      if (shareRoom(state, n, g, d.sharing) < d.milli) return misfit(`GPU ${g} has no room for the share`);
      a = { kind: 'milli', gpus: [g], milli: d.milli, sharing: shareOf(state, node, g, d), ...base };
    } else {
      const t = state.index.gpuTypes[node.type]!;
      const p = t.migProfiles.get(d.migProfile)!;
      const x = node.gpuOffset + g;
      const mode = state.gpuMode[x]!;
      const fits =
        mode === FREE ||
        (mode === MIG && state.migCompute[x]! + p.computeSlices <= t.migComputeSlices && state.migMemory[x]! + p.memorySlices <= t.migMemorySlices);
      if (!fits) return misfit(`GPU ${g} has no room for MIG ${d.migProfile}`);
      a = { kind: 'mig', gpus: [g], migProfile: d.migProfile, ...base };
    }
  }
  return placedOn(state, d, policy, id, [a], [], 'node');
}
