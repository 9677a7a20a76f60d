/** Fragmentation (FGD): the cluster measure, per-node evaluation against the workload profile, and its memo (governance/placement.ts). */
import type { IndexedNode, TopologyIndex } from '../topology';
import type { WorkloadProfile } from './types';
import {
  K_WHOLE,
  K_MILLI,
  K_MIG,
  type ProfileClass,
  type CompiledProfile,
  type NodeEval,
  FREE,
  WHOLE,
  MIG,
  MILLI,
  isShared,
  shareTarget,
  type PlacementState,
} from './state';
import { type Demand, KEY_SPACE } from './demand';

/** Share (0–1) of the free GPU capacity that the expected workload cannot use (FGD's measure, normalized). */
export function fragmentation(state: PlacementState): number {
  let frag = 0;
  let free = 0;
  for (let i = 0; i < state.nodeFrag.length; i++) {
    frag += state.nodeFrag[i]!;
    free += state.freeMilli[i]!;
  }
  return free > 0 ? frag / free : 0;
}

// ---------------------------------------------------------------------------------------------
// Per-node fragmentation (FGD): free GPU capacity a class of the expected workload cannot use.

export const gpuCode = (mode: number, milli: number, c: number, m: number) => mode * 10_000_000 + milli * 100 + c * 10 + m;

export function freeOf(mode: number, milli: number, c: number, cTotal: number): number {
  return mode === FREE ? MILLI : isShared(mode) ? MILLI - milli : mode === MIG ? ((cTotal - c) * MILLI) / cTotal : 0;
}

// Scratch copies of one node's GPUs for hypothetical states (single-threaded, never escapes a call).
export const S_MODE = new Uint8Array(64);
export const S_MILLI = new Uint16Array(64);
export const S_C = new Uint8Array(64);
export const S_M = new Uint8Array(64);

export function loadScratch(st: PlacementState, node: IndexedNode): void {
  for (let g = 0; g < node.gpus; g++) {
    const x = node.gpuOffset + g;
    S_MODE[g] = st.gpuMode[x]!;
    S_MILLI[g] = st.gpuMilli[x]!;
    S_C[g] = st.migCompute[x]!;
    S_M[g] = st.migMemory[x]!;
  }
}

/** Expected fragmentation of a node whose GPUs are in the scratch arrays. */
export function scratchFrag(st: PlacementState, node: IndexedNode, cpuFree: number, memFree: number): number {
  const t = st.index.gpuTypes[node.type]!;
  const cT = t.migComputeSlices;
  const mT = t.migMemorySlices;
  let total = 0;
  for (let g = 0; g < node.gpus; g++) total += freeOf(S_MODE[g]!, S_MILLI[g]!, S_C[g]!, cT);
  if (total === 0) return 0;
  let frag = 0;
  for (const cls of st.profile.classes) {
    let f = total;
    if (cls.typeOk[node.type] === 1 && cpuFree >= cls.cpu && memFree >= cls.mem) {
      const sharingOk = cls.kind === K_WHOLE || (cls.kind === K_MILLI ? node.mps || node.timeslice : node.mig);
      if (sharingOk) {
        let hosts = 0;
        let stranded = 0;
        for (let g = 0; g < node.gpus; g++) {
          const mode = S_MODE[g]!;
          let ok: boolean;
          if (mode === FREE) ok = true;
          else if (cls.kind === K_MILLI) ok = shareTarget(node, null, mode) >= 0 && MILLI - S_MILLI[g]! >= cls.milli;
          else if (cls.kind === K_MIG) ok = mode === MIG && S_C[g]! + cls.migC[node.type]! <= cT && S_M[g]! + cls.migM[node.type]! <= mT;
          else ok = false;
          if (ok) hosts++;
          else stranded += freeOf(mode, S_MILLI[g]!, S_C[g]!, cT);
        }
        if (hosts >= cls.count) f = stranded;
      }
    }
    frag += cls.weight * f;
  }
  return frag;
}

function nodeSigKey(st: PlacementState, node: IndexedNode): string {
  const codes: number[] = [];
  for (let g = 0; g < node.gpus; g++) {
    const x = node.gpuOffset + g;
    codes.push(gpuCode(st.gpuMode[x]!, st.gpuMilli[x]!, st.migCompute[x]!, st.migMemory[x]!));
  }
  codes.sort((a, b) => a - b);
  const n = node.index;
  return `${node.type}|${node.mig ? 1 : 0}${node.mps ? 1 : 0}${node.timeslice ? 1 : 0}|${st.cpuFree[n]}|${st.memFree[n]}|${codes.join(',')}`;
}

/** Recomputes the derived per-node fields after the node's GPUs, CPU or memory changed. */
export function refreshNode(st: PlacementState, node: IndexedNode): void {
  const n = node.index;
  const cT = st.index.gpuTypes[node.type]!.migComputeSlices;
  let whole = 0;
  let free = 0;
  for (let g = 0; g < node.gpus; g++) {
    const x = node.gpuOffset + g;
    if (st.gpuMode[x] === FREE) whole++;
    free += freeOf(st.gpuMode[x]!, st.gpuMilli[x]!, st.migCompute[x]!, cT);
  }
  st.freeWhole[n] = whole;
  st.freeMilli[n] = free;
  loadScratch(st, node);
  st.nodeFrag[n] = scratchFrag(st, node, st.cpuFree[n]!, st.memFree[n]!);
  const cp = st.profile;
  const key = nodeSigKey(st, node);
  let id = cp.sigIds.get(key);
  if (id === undefined) {
    // Forgetting strings only costs cache misses: an id, once given, always means the same state.
    if (cp.sigIds.size > 1_000_000) cp.sigIds.clear();
    id = cp.next.sig++;
    cp.sigIds.set(key, id);
  }
  st.nodeSig[n] = id;
}

/**
 * What placing the demand on this node does to the node's expected fragmentation, and for a share
 * or a MIG slice which GPU to use; null when the node cannot take it now. Memoized by node state.
 */
export function evalNode(st: PlacementState, node: IndexedNode, d: Demand): NodeEval | null {
  const cp = st.profile;
  const n = node.index;
  const key = st.nodeSig[n]! * KEY_SPACE + d.reqId;
  const hit = cp.memo.get(key);
  if (hit !== undefined) return hit;
  const result = computeEval(st, node, d);
  if (cp.memo.size > 4_000_000) cp.memo.clear();
  cp.memo.set(key, result);
  return result;
}

function computeEval(st: PlacementState, node: IndexedNode, d: Demand): NodeEval | null {
  const n = node.index;
  const cpu = st.cpuFree[n]! - d.cpu;
  const mem = st.memFree[n]! - d.mem;
  if (cpu < 0 || mem < 0) return null;
  const before = st.nodeFrag[n]!;
  loadScratch(st, node);
  if (d.kind === 'cpu') return { delta: scratchFrag(st, node, cpu, mem) - before, pick: -1, leftOnGpu: 0 };
  if (d.kind === 'whole') {
    let need = d.count;
    for (let g = 0; g < node.gpus && need > 0; g++) {
      if (S_MODE[g] === FREE) {
        S_MODE[g] = WHOLE;
        S_MILLI[g] = MILLI;
        need--;
      }
    }
    if (need > 0) return null;
    return { delta: scratchFrag(st, node, cpu, mem) - before, pick: -1, leftOnGpu: 0 };
  }
  const t = st.index.gpuTypes[node.type]!;
  let best: NodeEval | null = null;
  const tried = new Set<number>();
  for (let g = 0; g < node.gpus; g++) {
    const mode = S_MODE[g]!;
    const milli = S_MILLI[g]!;
    const c = S_C[g]!;
    const m = S_M[g]!;
    const code = gpuCode(mode, milli, c, m);
    if (tried.has(code)) continue;
    tried.add(code);
    let left: number;
    if (d.kind === 'milli') {
      const target = shareTarget(node, d.sharing, mode);
      if (target < 0 || MILLI - milli < d.milli) continue;
      S_MODE[g] = target;
      S_MILLI[g] = milli + d.milli;
      left = MILLI - milli - d.milli;
    } else {
      const p = t.migProfiles.get(d.migProfile)!;
      if (!(mode === FREE || (mode === MIG && c + p.computeSlices <= t.migComputeSlices && m + p.memorySlices <= t.migMemorySlices))) continue;
      S_MODE[g] = MIG;
      S_C[g] = c + p.computeSlices;
      S_M[g] = m + p.memorySlices;
      left = ((t.migComputeSlices - c - p.computeSlices) * MILLI) / t.migComputeSlices;
    }
    const delta = scratchFrag(st, node, cpu, mem) - before;
    S_MODE[g] = mode;
    S_MILLI[g] = milli;
    S_C[g] = c;
    S_M[g] = m;
    if (best === null || delta < best.delta - EPS || (Math.abs(delta - best.delta) <= EPS && left < best.leftOnGpu)) {
      best = { delta, pick: code, leftOnGpu: left };
    }
  }
  return best;
}

export const EPS = 1e-9;

export function compileProfile(index: TopologyIndex, profile: WorkloadProfile): CompiledProfile {
  const classes: ProfileClass[] = [];
  let sum = 0;
  for (const c of profile) {
    if (!(c.weight > 0)) continue;
    const kind = c.gpus !== undefined ? K_WHOLE : c.gpuMilli !== undefined ? K_MILLI : c.migProfile !== undefined ? K_MIG : -1;
    if (kind === -1) continue; // CPU-only requests cannot use a GPU: they do not measure GPU fragments.
    const names = c.gpuType === undefined ? null : typeof c.gpuType === 'string' ? [c.gpuType] : c.gpuType;
    const typeOk = new Uint8Array(index.gpuTypes.length);
    const migC = new Uint8Array(index.gpuTypes.length);
    const migM = new Uint8Array(index.gpuTypes.length);
    index.gpuTypes.forEach((t, i) => {
      if (names !== null && !names.includes(t.name)) return;
      if (kind === K_MIG) {
        const p = t.migProfiles.get(c.migProfile!);
        if (p === undefined) return;
        migC[i] = p.computeSlices;
        migM[i] = p.memorySlices;
      }
      typeOk[i] = 1;
    });
    classes.push({
      weight: c.weight,
      kind,
      count: kind === K_WHOLE ? c.gpus! : 1,
      milli: c.gpuMilli ?? 0,
      migC,
      migM,
      typeOk,
      cpu: c.cpuMilli ?? 0,
      mem: c.memoryMib ?? 0,
    });
    sum += c.weight;
  }
  for (const c of classes) c.weight /= sum;
  const capability = Float64Array.from(index.nodes, (node) => {
    let w = 0;
    for (const c of classes) {
      if (c.typeOk[node.type] !== 1 || c.count > node.gpus || c.cpu > node.cpuMilli || c.mem > node.memoryMib) continue;
      if ((c.kind === K_MILLI && !(node.mps || node.timeslice)) || (c.kind === K_MIG && !node.mig)) continue;
      w += c.weight;
    }
    return w;
  });
  return { classes, sigIds: new Map(), reqIds: new Map(), memo: new Map(), next: { sig: 0, req: 0 }, capability };
}
