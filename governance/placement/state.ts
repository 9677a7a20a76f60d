/** The capacity state's encoding: GPU modes, the compiled workload profile and PlacementState (governance/placement.ts). */
import type { IndexedNode, TopologyIndex } from '../topology';
import type { SharingMode, WorkloadProfile } from './types';

export const K_WHOLE = 0;
export const K_MILLI = 1;
export const K_MIG = 2;

export interface ProfileClass {
  weight: number;
  kind: number;
  count: number;
  milli: number;
  /** MIG compute and memory slices of the class's profile, per GPU type. */
  migC: Uint8Array;
  migM: Uint8Array;
  /** Per GPU type: may this class run there (type allowed and, for MIG, the profile exists)? */
  typeOk: Uint8Array;
  cpu: number;
  mem: number;
}

/** A workload profile compiled against one topology, with the memo of node evaluations. */
export interface CompiledProfile {
  readonly classes: readonly ProfileClass[];
  /** Node state signature → id. Ids are never reused, so a memo entry can never be read for another state. */
  readonly sigIds: Map<string, number>;
  /** Request shape → id, below KEY_SPACE; when they run out the ids and the memo start over together. */
  readonly reqIds: Map<string, number>;
  readonly memo: Map<number, NodeEval | null>;
  readonly next: { sig: number; req: number };
  /** Per node: the weight of the classes that could run on it were it empty (type, sharing, GPUs, CPU, memory). */
  readonly capability: Float64Array;
}

export interface NodeEval {
  /** Change in the node's expected fragmentation (milli-GPU). */
  delta: number;
  /** For shares and MIG: the state code of the GPU to use (any GPU in that state will do). */
  pick: number;
  /** For shares and MIG: free capacity left on that GPU, for the best-fit tie-break. */
  leftOnGpu: number;
}

// ---------------------------------------------------------------------------------------------
// State

export const FREE = 0;
export const WHOLE = 1;
/** Shared through MPS. */
const SHARED = 2;
export const MIG = 3;
/** Shared by time-slicing. */
export const TSLICE = 4;
export const MILLI = 1000;

export const isShared = (mode: number) => mode === SHARED || mode === TSLICE;
export const modeOf = (sharing: SharingMode) => (sharing === 'mps' ? SHARED : TSLICE);

/**
 * The mode a GPU in `mode` would be in after taking a share asked with `sharing` (null: either)
 * on this node, or -1 when it cannot: a fresh GPU takes the asked mode (MPS first when either
 * will do and the node allows it); a shared GPU keeps its mode and takes only shares that allow it.
 */
export function shareTarget(node: IndexedNode, sharing: SharingMode | null, mode: number): number {
  if (mode === FREE) {
    if (sharing === 'mps') return node.mps ? SHARED : -1;
    if (sharing === 'timeslice') return node.timeslice ? TSLICE : -1;
    return node.mps ? SHARED : node.timeslice ? TSLICE : -1;
  }
  if (mode === SHARED) return sharing !== 'timeslice' && node.mps ? SHARED : -1;
  if (mode === TSLICE) return sharing !== 'mps' && node.timeslice ? TSLICE : -1;
  return -1;
}

/**
 * Free capacity: per GPU its mode (free, whole, shared, MIG) with the thousandths used by shares
 * and the MIG compute and memory slices in use; per node free CPU and memory. The rest is derived
 * and kept with it for speed: free whole GPUs per node and per domain, free GPU capacity per node,
 * each node's expected fragmentation and state signature.
 */
export interface PlacementState {
  readonly index: TopologyIndex;
  readonly profile: CompiledProfile;
  readonly gpuMode: Uint8Array;
  readonly gpuMilli: Uint16Array;
  readonly migCompute: Uint8Array;
  readonly migMemory: Uint8Array;
  readonly cpuFree: Int32Array;
  readonly memFree: Int32Array;
  readonly freeWhole: Uint8Array;
  /** Free GPU capacity per node in thousandths of a GPU (a MIG slice counts its compute share). */
  readonly freeMilli: Float64Array;
  readonly nodeFrag: Float64Array;
  readonly nodeSig: Float64Array;
  /** Free whole GPUs per NVLink domain, rack and block. */
  readonly domainFree: { readonly nvlink: Int32Array; readonly rack: Int32Array; readonly block: Int32Array };
}

export interface StateOptions {
  /** Expected requests, for the fragmentation measure and the node choice (default: one whole GPU). */
  workload?: WorkloadProfile;
}
