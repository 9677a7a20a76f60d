/**
 * Topology-aware gang placement: pure functions over a topology index and a capacity state.
 *
 * `place(state, request)` decides where an all-or-nothing request goes and explains itself; it
 * never changes `state`. `commit(state, placement)` returns the state with the placement applied,
 * `release(state, placement)` the state with it taken back. The rules (docs/decisions/0100):
 *
 * 1. Smallest domain first: one node, then one NVLink domain, one rack, one block, the cluster.
 *    A `required` level bounds the search; a `preferred` level may be exceeded, and the placement
 *    says so (`explanation.constraint.satisfied: false`).
 * 2. Among the domains of the chosen level, best fit: the one with the least capacity that still
 *    holds the job, so large free domains stay whole. Inside a domain wider than a node, whole
 *    children are taken largest first and the remainder goes to the smallest child that holds it.
 * 3. Among single nodes, the node whose expected fragmentation grows least (the fragmentation
 *    gradient of FGD, USENIX ATC '23) against the workload profile the state was built with,
 *    growths within FRAGMENTATION_TOLERANCE (20 thousandths of a GPU) of the least counting as
 *    equal; among those, the node with the smallest free share of its GPUs (a node in use before a
 *    fresh one), then the GPU type with the largest free share, then the less capable node, then
 *    the fullest NVLink domain, rack and block, so whole domains stay whole for the gangs that need
 *    them (`preferredOver`).
 *    On the node, a share or a MIG slice takes the GPU where fragmentation grows least, then the
 *    one with least room left, so it lands on a GPU already in use before a fresh GPU is cut.
 *
 * `firstFit` and `bestFit` are the per-node baselines the benchmark compares against; they honour
 * hard constraints (type, sharing, a `required` level) but never search for a smaller domain.
 * `placeOnNode`, `gpuMilliLeft` and `shareRoom` let a per-node policy defined elsewhere (the FGD
 * paper's schedulers in bench/baselines.ts) read the state and place through the same checks.
 *
 * State is a struct of typed arrays, copied on commit/release (≈ 30k numbers on the Alibaba trace's
 * 1,213 nodes). The per-node fragmentation evaluation is memoized on the compiled workload profile
 * (keyed by the node's state signature and the request shape), which keeps a decision over ~1,200
 * nodes well under a millisecond; the memo never changes an answer.
 */
import { z } from 'zod';
import { type Domain, type IndexedNode, TOPOLOGY_LEVELS, TopologyLevel, type TopologyIndex, childLevel } from './topology';

// ---------------------------------------------------------------------------------------------
// Requests and results

export const TopologyConstraint = z.strictObject({ level: TopologyLevel, mode: z.enum(['required', 'preferred']) });
export type TopologyConstraint = z.infer<typeof TopologyConstraint>;

/**
 * What a job asks for, all or nothing. Exactly one of `gpus` (whole GPUs, may span nodes),
 * `gpuMilli` (a share of one GPU, 1–999 thousandths, through MPS or time-slicing) or `migProfile`
 * (one MIG instance); none of them is a CPU-only request. `cpuMilli`/`memoryMib` are for the whole
 * job; a gang spread over nodes charges each node in proportion to the GPUs it gets.
 */
export const PlacementRequest = z
  .strictObject({
    id: z.string().optional(),
    gpus: z.number().int().positive().optional(),
    gpuMilli: z.number().int().min(1).max(999).optional(),
    migProfile: z
      .string()
      .regex(/^\d+g\.\d+gb$/)
      .optional(),
    sharing: z.enum(['mps', 'timeslice']).optional(),
    gpuType: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
    cpuMilli: z.number().int().nonnegative().optional(),
    memoryMib: z.number().int().nonnegative().optional(),
    topology: TopologyConstraint.optional(),
  })
  .refine((r) => [r.gpus, r.gpuMilli, r.migProfile].filter((x) => x !== undefined).length <= 1, {
    message: 'at most one of gpus, gpuMilli and migProfile',
  });
export type PlacementRequest = z.infer<typeof PlacementRequest>;

interface AssignmentBase {
  node: string;
  /** GPU indexes on the node (0-based). */
  gpus: number[];
  cpuMilli: number;
  memoryMib: number;
}
export type Assignment =
  | (AssignmentBase & { kind: 'whole' })
  | (AssignmentBase & { kind: 'milli'; milli: number; sharing: SharingMode })
  | (AssignmentBase & { kind: 'mig'; migProfile: string })
  | (AssignmentBase & { kind: 'cpu' });

/** `bench:<name>`: a per-node policy defined outside this module (the benchmark's paper baselines, via `placeOnNode`). */
export type PlacementPolicy = 'govloop' | 'firstFit' | 'bestFit' | `bench:${string}`;

/** How a GPU is shared: MPS and time-slicing never mix on one GPU. */
export type SharingMode = 'mps' | 'timeslice';

export interface Placement {
  placed: true;
  policy: PlacementPolicy;
  requestId: string | null;
  assignments: Assignment[];
  /** The smallest domain that holds every assignment. */
  domain: { level: TopologyLevel; id: string };
  explanation: {
    chosenLevel: TopologyLevel;
    /** One line per smaller level that could not hold the job, smallest first. */
    whyNotSmaller: string[];
    /** fragmentation(state) once this placement is committed. */
    fragmentationAfter: number;
    /** The request's topology constraint and whether the placement stays inside it. */
    constraint: TopologyConstraint & { satisfied: boolean };
    summary: string;
  };
}

export const PlacementReasonCode = {
  InvalidRequest: 'INVALID_REQUEST',
  GpuTypeUnknown: 'GPU_TYPE_UNKNOWN',
  MigProfileUnknown: 'MIG_PROFILE_UNKNOWN',
  SharingUnsupported: 'SHARING_UNSUPPORTED',
  InsufficientCapacity: 'INSUFFICIENT_CAPACITY',
  TopologyUnsatisfiable: 'TOPOLOGY_UNSATISFIABLE',
} as const;
export type PlacementReasonCode = (typeof PlacementReasonCode)[keyof typeof PlacementReasonCode];

export interface PlacementReason {
  code: PlacementReasonCode;
  message: string;
  /** The request, in words: "16 × H100", "gpuMilli 470 (any type)". */
  requested: string;
  /** The widest level the request allowed. */
  level: TopologyLevel | null;
  /** GPUs (or shares) the best single domain of that level could hold; null when not relevant. */
  largestFit: number | null;
  /** GPUs the whole cluster could hold for this request, ignoring topology. */
  clusterFit: number | null;
}

export interface PlacementRefusal {
  placed: false;
  policy: PlacementPolicy;
  requestId: string | null;
  reason: PlacementReason;
}

export type PlaceResult = Placement | PlacementRefusal;

// ---------------------------------------------------------------------------------------------
// Workload profile: what the fragmentation measure is measured against

/** One class of expected requests and its share of arrivals (weights need not sum to 1). */
export interface WorkloadClass {
  weight: number;
  gpus?: number;
  gpuMilli?: number;
  migProfile?: string;
  gpuType?: string | readonly string[];
  cpuMilli?: number;
  memoryMib?: number;
}
export type WorkloadProfile = readonly WorkloadClass[];

/** Without a profile, fragmentation is measured against "one whole GPU of any type". */
export const DEFAULT_WORKLOAD: WorkloadProfile = [{ weight: 1, gpus: 1 }];

const K_WHOLE = 0;
const K_MILLI = 1;
const K_MIG = 2;

interface ProfileClass {
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
interface CompiledProfile {
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

interface NodeEval {
  /** Change in the node's expected fragmentation (milli-GPU). */
  delta: number;
  /** For shares and MIG: the state code of the GPU to use (any GPU in that state will do). */
  pick: number;
  /** For shares and MIG: free capacity left on that GPU, for the best-fit tie-break. */
  leftOnGpu: number;
}

// ---------------------------------------------------------------------------------------------
// State

const FREE = 0;
const WHOLE = 1;
/** Shared through MPS. */
const SHARED = 2;
const MIG = 3;
/** Shared by time-slicing. */
const TSLICE = 4;
const MILLI = 1000;

const isShared = (mode: number) => mode === SHARED || mode === TSLICE;
const modeOf = (sharing: SharingMode) => (sharing === 'mps' ? SHARED : TSLICE);

/**
 * The mode a GPU in `mode` would be in after taking a share asked with `sharing` (null: either)
 * on this node, or -1 when it cannot: a fresh GPU takes the asked mode (MPS first when either
 * will do and the node allows it); a shared GPU keeps its mode and takes only shares that allow it.
 */
function shareTarget(node: IndexedNode, sharing: SharingMode | null, mode: number): number {
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
// Normalized requests

interface Demand {
  kind: 'whole' | 'milli' | 'mig' | 'cpu';
  /** GPUs in all (whole) or 1 (share, MIG) or 0 (CPU only). */
  count: number;
  milli: number;
  migProfile: string;
  /** Per GPU type: allowed by gpuType and, for MIG, offering the profile. */
  typeOk: Uint8Array;
  sharing: 'mps' | 'timeslice' | null;
  cpu: number;
  mem: number;
  constraint: TopologyConstraint;
  reqId: number;
  words: string;
}

const CLUSTER_PREFERRED: TopologyConstraint = { level: 'cluster', mode: 'preferred' };
const KEY_SPACE = 1_000_003;

function refuse(
  policy: PlacementPolicy,
  requestId: string | null,
  reason: Omit<PlacementReason, 'level' | 'largestFit' | 'clusterFit'> & Partial<PlacementReason>,
): PlacementRefusal {
  return { placed: false, policy, requestId, reason: { level: null, largestFit: null, clusterFit: null, ...reason } };
}

function normalize(state: PlacementState, req: PlacementRequest, policy: PlacementPolicy): Demand | PlacementRefusal {
  const { index } = state;
  const id = req.id ?? null;
  const given = [req.gpus, req.gpuMilli, req.migProfile].filter((x) => x !== undefined).length;
  const cpu = req.cpuMilli ?? 0;
  const mem = req.memoryMib ?? 0;
  const bad = (message: string) => refuse(policy, id, { code: PlacementReasonCode.InvalidRequest, message, requested: describeRequest(req) });
  if (given > 1) return bad('at most one of gpus, gpuMilli and migProfile');
  if (req.gpus !== undefined && !(Number.isInteger(req.gpus) && req.gpus > 0)) return bad(`gpus must be a positive integer, got ${req.gpus}`);
  if (req.gpuMilli !== undefined && !(Number.isInteger(req.gpuMilli) && req.gpuMilli >= 1 && req.gpuMilli <= 999)) {
    return bad(`gpuMilli must be an integer from 1 to 999 (use gpus for whole GPUs), got ${req.gpuMilli}`);
  }
  if (!(Number.isInteger(cpu) && cpu >= 0 && Number.isInteger(mem) && mem >= 0)) return bad('cpuMilli and memoryMib must be non-negative integers');
  const constraint = req.topology ?? CLUSTER_PREFERRED;
  if (!TOPOLOGY_LEVELS.includes(constraint.level)) return bad(`unknown topology level "${String(constraint.level)}"`);

  const typeOk = new Uint8Array(index.gpuTypes.length);
  const names = req.gpuType === undefined ? null : typeof req.gpuType === 'string' ? [req.gpuType] : req.gpuType;
  if (names === null) typeOk.fill(1);
  else {
    for (const t of names) {
      const i = index.gpuTypeIndex.get(t);
      if (i === undefined) {
        return refuse(policy, id, {
          code: PlacementReasonCode.GpuTypeUnknown,
          message: `unknown GPU type "${t}" (cluster ${index.cluster} has ${index.gpuTypes.map((x) => x.name).join(', ')})`,
          requested: describeRequest(req),
        });
      }
      typeOk[i] = 1;
    }
  }
  let kind: Demand['kind'] = 'cpu';
  if (req.gpus !== undefined) kind = 'whole';
  else if (req.gpuMilli !== undefined) kind = 'milli';
  else if (req.migProfile !== undefined) {
    kind = 'mig';
    let known = false;
    index.gpuTypes.forEach((t, i) => {
      if (!t.migProfiles.has(req.migProfile!)) typeOk[i] = 0;
      else if (typeOk[i] === 1) known = true;
    });
    if (!known) {
      return refuse(policy, id, {
        code: PlacementReasonCode.MigProfileUnknown,
        message: `no ${names === null ? '' : 'allowed '}GPU type in cluster ${index.cluster} offers MIG profile ${req.migProfile}`,
        requested: describeRequest(req),
      });
    }
  }
  const sharing = kind === 'milli' ? (req.sharing ?? null) : null;
  const count = kind === 'whole' ? req.gpus! : kind === 'cpu' ? 0 : 1;
  const milli = kind === 'milli' ? req.gpuMilli! : 0;
  // The memo key: what a node evaluation depends on (node eligibility is checked before it).
  const key = `${kind}|${count}|${milli}|${sharing ?? ''}|${req.migProfile ?? ''}|${cpu}|${mem}`;
  const cp = state.profile;
  let reqId = cp.reqIds.get(key);
  if (reqId === undefined) {
    if (cp.next.req >= KEY_SPACE) {
      cp.reqIds.clear();
      cp.memo.clear();
      cp.next.req = 0;
    }
    reqId = cp.next.req++;
    cp.reqIds.set(key, reqId);
  }
  const d: Demand = { kind, count, milli, migProfile: req.migProfile ?? '', typeOk, sharing, cpu, mem, constraint, reqId, words: describeRequest(req) };
  // A request no node could ever take, whatever is free: say so rather than "no capacity".
  if (!index.nodes.some((n) => staticOk(n, d))) {
    const what = kind === 'milli' ? `${sharing ?? 'MPS or time-slicing'} sharing` : kind === 'mig' ? `MIG ${req.migProfile}` : 'these GPU types';
    return refuse(policy, id, {
      code: PlacementReasonCode.SharingUnsupported,
      message: `no node of an allowed GPU type allows ${what}`,
      requested: d.words,
    });
  }
  return d;
}

function describeRequest(req: PlacementRequest): string {
  const types = req.gpuType === undefined ? 'any type' : typeof req.gpuType === 'string' ? req.gpuType : req.gpuType.join('|');
  const res = `${req.cpuMilli ?? 0}m CPU, ${req.memoryMib ?? 0} MiB`;
  if (req.gpus !== undefined) return `${req.gpus} GPU${req.gpus === 1 ? '' : 's'} (${types}), ${res}`;
  if (req.gpuMilli !== undefined) return `${req.gpuMilli}/1000 of a GPU (${types}${req.sharing ? `, ${req.sharing}` : ''}), ${res}`;
  if (req.migProfile !== undefined) return `MIG ${req.migProfile} (${types}), ${res}`;
  return `no GPU, ${res}`;
}

/** Can this node ever serve the demand (type, sharing mode, enough GPUs at all)? */
function staticOk(node: IndexedNode, d: Demand): boolean {
  if (d.kind === 'cpu') return true;
  if (d.typeOk[node.type] !== 1 || node.gpus === 0) return false;
  if (d.kind === 'milli') return d.sharing === 'mps' ? node.mps : d.sharing === 'timeslice' ? node.timeslice : node.mps || node.timeslice;
  if (d.kind === 'mig') return node.mig;
  return true;
}

/** Whole GPUs of a gang this node can take, with its share of the job's CPU and memory. */
function wholeCapacity(st: PlacementState, node: IndexedNode, d: Demand): number {
  if (!staticOk(node, d)) return 0;
  const n = node.index;
  let k = st.freeWhole[n]!;
  if (d.cpu > 0) k = Math.min(k, Math.floor((st.cpuFree[n]! * d.count) / d.cpu));
  if (d.mem > 0) k = Math.min(k, Math.floor((st.memFree[n]! * d.count) / d.mem));
  return k;
}

// ---------------------------------------------------------------------------------------------
// Per-node fragmentation (FGD): free GPU capacity a class of the expected workload cannot use.

const gpuCode = (mode: number, milli: number, c: number, m: number) => mode * 10_000_000 + milli * 100 + c * 10 + m;

function freeOf(mode: number, milli: number, c: number, cTotal: number): number {
  return mode === FREE ? MILLI : isShared(mode) ? MILLI - milli : mode === MIG ? ((cTotal - c) * MILLI) / cTotal : 0;
}

// Scratch copies of one node's GPUs for hypothetical states (single-threaded, never escapes a call).
const S_MODE = new Uint8Array(64);
const S_MILLI = new Uint16Array(64);
const S_C = new Uint8Array(64);
const S_M = new Uint8Array(64);

function loadScratch(st: PlacementState, node: IndexedNode): void {
  for (let g = 0; g < node.gpus; g++) {
    const x = node.gpuOffset + g;
    S_MODE[g] = st.gpuMode[x]!;
    S_MILLI[g] = st.gpuMilli[x]!;
    S_C[g] = st.migCompute[x]!;
    S_M[g] = st.migMemory[x]!;
  }
}

/** Expected fragmentation of a node whose GPUs are in the scratch arrays. */
function scratchFrag(st: PlacementState, node: IndexedNode, cpuFree: number, memFree: number): number {
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
function refreshNode(st: PlacementState, node: IndexedNode): void {
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
function evalNode(st: PlacementState, node: IndexedNode, d: Demand): NodeEval | null {
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

const EPS = 1e-9;

function compileProfile(index: TopologyIndex, profile: WorkloadProfile): CompiledProfile {
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

// ---------------------------------------------------------------------------------------------
// govloop placement

/** Places an all-or-nothing request; never changes `state`. */
export function place(state: PlacementState, request: PlacementRequest): PlaceResult {
  const d = normalize(state, request, 'govloop');
  if ('placed' in d) return d;
  const id = request.id ?? null;
  const { index } = state;
  if (d.kind !== 'whole' || d.count === 1) {
    const n = bestNode(state, d, index.domains.cluster[0]!.nodes);
    if (n < 0) return refuse('govloop', id, capacityReason(state, d, 'node'));
    return placedOn(state, d, 'govloop', id, [singleNodeAssignment(state, index.nodes[n]!, d)], [], 'node');
  }
  const maxLevel = d.constraint.mode === 'required' ? d.constraint.level : 'cluster';
  const whyNot: string[] = [];
  let nodeCap: Int32Array | null = null;
  for (const level of TOPOLOGY_LEVELS) {
    if (level === 'node') {
      const n = bestNode(state, d, index.domains.cluster[0]!.nodes);
      if (n >= 0) return placedOn(state, d, 'govloop', id, [singleNodeAssignment(state, index.nodes[n]!, d)], whyNot, 'node');
      nodeCap = capacities(state, d);
      whyNot.push(`node: no node can take ${d.words} (at most ${maxOf(nodeCap)})`);
    } else if (level === 'nvlink' && index.nvlinkIsNode) {
      whyNot.push('nvlink: every NVLink domain is a single node');
    } else {
      const caps = nodeCap ?? capacities(state, d);
      const chosen = bestDomain(state, index.domains[level], caps, d.count);
      if (chosen.domain !== null) {
        const picks: [number, number][] = [];
        distribute(state, chosen.domain, d.count, caps, picks);
        return placedOn(state, d, 'govloop', id, gangAssignments(state, d, picks), whyNot, level);
      }
      whyNot.push(`${level}: no ${levelNoun(level)} can take ${d.words} (at most ${chosen.largest})`);
    }
    if (level === maxLevel) break;
  }
  return refuse('govloop', id, capacityReason(state, d, maxLevel, nodeCap ?? capacities(state, d)));
}

/**
 * Fragmentation growths (thousandths of a GPU) within this much of the least count as equal. The
 * growth is an expectation over the workload profile, and its smallest differences come from rare
 * classes (a class of weight 0.002 that loses an 8-GPU node's CPU moves it by 16): chasing them
 * costs more than it saves, and the tie-breaks below decide better. FGD's own scheduler does the same
 * through its integer scores (one step ≈ 40 near zero). Measured on the Alibaba trace
 * (`npm run bench:placement`, 5 seeds), with the tie-breaks of `preferredOver`: 20 leaves 10 % fewer
 * GPUs unallocated than exact comparison on the default pod list, 22 % fewer on gpuspec10 and about
 * as many on gpushare100 and multigpu50. Below 10 it changes little; from 10 to 40 it helps, by an
 * amount that moves with the value.
 */
const FRAGMENTATION_TOLERANCE = 20;

/** GPUs per GPU type and per NVLink domain, rack and block of an index (for free shares). */
interface IndexTotals {
  readonly typeGpus: Float64Array;
  readonly nvlink: Float64Array;
  readonly rack: Float64Array;
  readonly block: Float64Array;
}
const TOTALS = new WeakMap<TopologyIndex, IndexTotals>();

function totalsOf(index: TopologyIndex): IndexTotals {
  let t = TOTALS.get(index);
  if (t === undefined) {
    const of = (level: 'nvlink' | 'rack' | 'block') =>
      Float64Array.from(index.domains[level], (dom) => dom.nodes.reduce((s, n) => s + index.nodes[n]!.gpus, 0));
    const typeGpus = new Float64Array(index.gpuTypes.length);
    for (const node of index.nodes) typeGpus[node.type]! += node.gpus;
    t = { typeGpus, nvlink: of('nvlink'), rack: of('rack'), block: of('block') };
    TOTALS.set(index, t);
  }
  return t;
}

const share = (free: number, total: number) => (total > 0 ? free / total : 0);

/**
 * The node for a single-node demand, -1 when none: the least fragmentation growth, within
 * FRAGMENTATION_TOLERANCE; among those, by `preferredOver`.
 */
function bestNode(st: PlacementState, d: Demand, nodes: readonly number[]): number {
  const { index } = st;
  const cand: number[] = [];
  const growth: number[] = [];
  let least = Infinity;
  for (const n of nodes) {
    const node = index.nodes[n]!;
    if (st.cpuFree[n]! < d.cpu || st.memFree[n]! < d.mem || !staticOk(node, d)) continue;
    if (d.kind === 'whole' && st.freeWhole[n]! < d.count) continue;
    const ev = evalNode(st, node, d);
    if (ev === null) continue;
    cand.push(n);
    growth.push(ev.delta);
    if (ev.delta < least) least = ev.delta;
  }
  if (cand.length === 0) return -1;
  const totals = totalsOf(index);
  const typeFree = new Float64Array(index.gpuTypes.length);
  for (const node of index.nodes) typeFree[node.type]! += st.freeMilli[node.index]!;
  for (let t = 0; t < typeFree.length; t++) typeFree[t] = share(typeFree[t]!, totals.typeGpus[t]! * MILLI);
  let best = -1;
  for (let i = 0; i < cand.length; i++) {
    if (growth[i]! > least + FRAGMENTATION_TOLERANCE + EPS) continue;
    if (best < 0 || preferredOver(st, totals, typeFree, cand[i]!, best)) best = cand[i]!;
  }
  return best;
}

/**
 * Between two nodes whose fragmentation growth counts as equal, is `a` better than `b`? In order:
 * 1. the smaller free share of the node's GPU capacity: a node in use before a fresh one, and the
 *    fullest for its size (best fit by share, so that small nodes are not always filled first);
 * 2. the GPU type with the larger free share: a fresh node is opened in the type with most room,
 *    which keeps every type within reach of the requests that need it;
 * 3. the less capable node (the smaller weight of profile classes that could run on it were it
 *    empty): within a type, the node with less CPU or memory goes first, and the bigger one is
 *    kept for the requests only it can take;
 * 4. the fullest NVLink domain (when domains are wider than a node), rack and block, by share, so
 *    that whole domains stay whole for the gangs that need them;
 * 5. topology order (the earlier node).
 */
function preferredOver(st: PlacementState, totals: IndexTotals, typeFree: Float64Array, a: number, b: number): boolean {
  const { index } = st;
  const A = index.nodes[a]!;
  const B = index.nodes[b]!;
  let x = share(st.freeMilli[a]!, A.gpus * MILLI);
  let y = share(st.freeMilli[b]!, B.gpus * MILLI);
  if (x !== y) return x < y;
  x = typeFree[A.type]!;
  y = typeFree[B.type]!;
  if (x !== y) return x > y;
  x = st.profile.capability[a]!;
  y = st.profile.capability[b]!;
  if (x !== y) return x < y;
  if (!index.nvlinkIsNode) {
    x = share(st.domainFree.nvlink[A.nvlink]!, totals.nvlink[A.nvlink]!);
    y = share(st.domainFree.nvlink[B.nvlink]!, totals.nvlink[B.nvlink]!);
    if (x !== y) return x < y;
  }
  x = share(st.domainFree.rack[A.rack]!, totals.rack[A.rack]!);
  y = share(st.domainFree.rack[B.rack]!, totals.rack[B.rack]!);
  if (x !== y) return x < y;
  x = share(st.domainFree.block[A.block]!, totals.block[A.block]!);
  y = share(st.domainFree.block[B.block]!, totals.block[B.block]!);
  return x < y;
}

function capacities(st: PlacementState, d: Demand): Int32Array {
  const caps = new Int32Array(st.index.nodes.length);
  for (const node of st.index.nodes) caps[node.index] = wholeCapacity(st, node, d);
  return caps;
}

function maxOf(a: Int32Array): number {
  let m = 0;
  for (const x of a) if (x > m) m = x;
  return m;
}

function domainCap(domain: Domain, caps: Int32Array): number {
  let s = 0;
  for (const n of domain.nodes) s += caps[n]!;
  return s;
}

function domainFreeOf(st: PlacementState, domain: Domain): number {
  if (domain.level === 'nvlink' || domain.level === 'rack' || domain.level === 'block') return st.domainFree[domain.level][domain.index]!;
  let s = 0;
  for (const n of domain.nodes) s += st.freeWhole[n]!;
  return s;
}

/** Best fit among domains of one level: the least capacity that still holds `need`. */
function bestDomain(st: PlacementState, domains: readonly Domain[], caps: Int32Array, need: number): { domain: Domain | null; largest: number } {
  let best: Domain | null = null;
  let bCap = 0;
  let bFree = 0;
  let largest = 0;
  for (const dom of domains) {
    const cap = domainCap(dom, caps);
    if (cap > largest) largest = cap;
    if (cap < need) continue;
    const free = domainFreeOf(st, dom);
    if (best === null || cap < bCap || (cap === bCap && free < bFree)) {
      best = dom;
      bCap = cap;
      bFree = free;
    }
  }
  return { domain: best, largest };
}

/**
 * Spreads `need` GPUs over a domain using as few children as it can: while no child holds the
 * rest, take the largest child whole; then the smallest child that holds the rest.
 */
function distribute(st: PlacementState, domain: Domain, need: number, caps: Int32Array, out: [number, number][]): void {
  if (domain.level === 'node') {
    out.push([domain.index, need]);
    return;
  }
  const level = childLevel(domain.level)!;
  const children = domain.children.map((i) => st.index.domains[level][i]!).filter((c) => domainCap(c, caps) > 0);
  const used = new Set<number>();
  let rest = need;
  while (rest > 0) {
    let fit: Domain | null = null;
    let fitCap = Infinity;
    let big: Domain | null = null;
    let bigCap = 0;
    for (const c of children) {
      if (used.has(c.index)) continue;
      const cap = domainCap(c, caps);
      if (cap >= rest && cap < fitCap) {
        fit = c;
        fitCap = cap;
      }
      if (cap > bigCap) {
        big = c;
        bigCap = cap;
      }
    }
    if (fit !== null) {
      distribute(st, fit, rest, caps, out);
      return;
    }
    if (big === null) throw new Error(`placement: domain ${domain.id} cannot hold ${need} GPUs (internal error)`);
    used.add(big.index);
    distribute(st, big, bigCap, caps, out);
    rest -= bigCap;
  }
}

/** Splits the job's CPU and memory over a gang's nodes in proportion to GPUs, summing exactly. */
function gangAssignments(st: PlacementState, d: Demand, picks: [number, number][]): Assignment[] {
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

function freeGpus(st: PlacementState, node: IndexedNode, k: number): number[] {
  const gpus: number[] = [];
  for (let g = 0; g < node.gpus && gpus.length < k; g++) if (st.gpuMode[node.gpuOffset + g] === FREE) gpus.push(g);
  return gpus;
}

function singleNodeAssignment(st: PlacementState, node: IndexedNode, d: Demand): Assignment {
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
function shareOf(st: PlacementState, node: IndexedNode, gpu: number, d: Demand): SharingMode {
  return shareTarget(node, d.sharing, st.gpuMode[node.gpuOffset + gpu]!) === TSLICE ? 'timeslice' : 'mps';
}

function levelNoun(level: TopologyLevel): string {
  return level === 'nvlink' ? 'NVLink domain' : level;
}

function capacityReason(st: PlacementState, d: Demand, level: TopologyLevel, caps?: Int32Array): Omit<PlacementReason, never> {
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
function placedOn(
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

// ---------------------------------------------------------------------------------------------
// Audit

export interface AuditResult {
  /** GPUs held more than they have: whole twice, whole plus shares, shares above 1000, MIG slices above the GPU's, shares and MIG mixed, MPS and time-slice shares mixed. */
  doubleBookedGpus: number;
  /** Nodes whose CPU or memory is committed beyond capacity. */
  overcommittedNodes: number;
  /** GPUs in use, counting shares and MIG slices by their fraction. */
  allocatedGpus: number;
}

/** Recounts a set of live placements from scratch, independently of any state: the double-booking check. */
export function audit(index: TopologyIndex, placements: readonly Placement[]): AuditResult {
  const whole = new Uint8Array(index.totalGpus);
  const milli = new Int32Array(index.totalGpus);
  const milliTs = new Int32Array(index.totalGpus);
  const migC = new Int32Array(index.totalGpus);
  const migM = new Int32Array(index.totalGpus);
  const cpu = new Float64Array(index.nodes.length);
  const mem = new Float64Array(index.nodes.length);
  for (const p of placements) {
    for (const a of p.assignments) {
      const n = index.nodeIndex.get(a.node)!;
      const node = index.nodes[n]!;
      cpu[n]! += a.cpuMilli;
      mem[n]! += a.memoryMib;
      const mig = a.kind === 'mig' ? index.gpuTypes[node.type]!.migProfiles.get(a.migProfile) : undefined;
      for (const g of a.gpus) {
        const x = node.gpuOffset + g;
        if (a.kind === 'whole') whole[x]!++;
        else if (a.kind === 'milli' && a.sharing === 'timeslice') milliTs[x]! += a.milli;
        else if (a.kind === 'milli') milli[x]! += a.milli;
        else if (mig !== undefined) {
          migC[x]! += mig.computeSlices;
          migM[x]! += mig.memorySlices;
        }
      }
    }
  }
  let doubleBooked = 0;
  let allocated = 0;
  for (const node of index.nodes) {
    const t = index.gpuTypes[node.type]!;
    for (let g = 0; g < node.gpus; g++) {
      const x = node.gpuOffset + g;
      const kinds = (whole[x]! > 0 ? 1 : 0) + (milli[x]! > 0 ? 1 : 0) + (milliTs[x]! > 0 ? 1 : 0) + (migC[x]! > 0 ? 1 : 0);
      if (kinds > 1 || whole[x]! > 1 || milli[x]! > MILLI || milliTs[x]! > MILLI || migC[x]! > t.migComputeSlices || migM[x]! > t.migMemorySlices)
        doubleBooked++;
      allocated += whole[x]! + (milli[x]! + milliTs[x]!) / MILLI + migC[x]! / t.migComputeSlices;
    }
  }
  let over = 0;
  for (const node of index.nodes) if (cpu[node.index]! > node.cpuMilli || mem[node.index]! > node.memoryMib) over++;
  return { doubleBookedGpus: doubleBooked, overcommittedNodes: over, allocatedGpus: allocated };
}
