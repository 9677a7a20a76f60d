/**
 * The FGD paper's own schedulers (USENIX ATC '23, "Beware of Fragmentation: Scheduling GPU-Sharing
 * Workloads with Fragmentation Gradient Descent", §6.1), rebuilt from the scoring rules of the
 * authors' simulator (github.com/hkust-adsl/kubernetes-scheduler-simulator, pkg/simulator/plugin/
 * and pkg/utils/frag.go, with the settings of experiments/run_scripts/generate_run_scripts.py).
 * They are benchmark baselines, not governance policies: each is a Kubernetes score plugin, so a pod
 * lands on one node, every feasible node is scored (percentageOfNodesToScore 100) and the highest
 * integer score wins. Ties go to the node with the smallest name (the artifact's patched selectHost),
 * and since the simulator prefixes every node name with its place in a random permutation, that is a
 * random node order drawn once per run; here it comes from the policy's seed.
 *
 *   random         a uniformly random feasible node; a share goes to a random GPU that fits.
 *   dotProd        Tetris' alignment, as the simulator scores it ("merge" dimensions, "max" norm):
 *                  100 × (1 − ½ (cpuLeft·cpu/128000² + gpuLeft·gpu/8000²)), GPU totals in thousandths;
 *                  the smallest dot product of free and asked resources wins.
 *   gpuClustering  pods of one kind together: 25 × (8000 − gpuLeft) / 8000, plus 75 when every GPU
 *                  pod on the node is of the pod's kind (share, 1-GPU, 2-GPU …), 50 when some are,
 *                  25 on a node without GPU pods, 0 on a node holding only other kinds.
 *   gpuPacking     shared GPUs first (100 − free% of the GPU used / 10, ≥ 50), then free GPUs on a
 *                  node already in use (50 − free GPUs taken, ≥ 33), then an idle node (33 − its GPUs).
 *   paperBestFit   100 × (1 − ½ (cpuLeft − cpu)/128000 − ½ (gpuLeft − gpu)/8000): least left over.
 *   fgd            the paper's FGD: sigmoid((F_before − F_after)/1000) × 100 per node, F the node's
 *                  fragmentation against the typical pods (the most common pod shapes that cover 95 %
 *                  of the list, CPU-only ones included); a share tries every GPU and keeps the best.
 *
 * Shares go to the GPU with the least room that fits ("best" GPU selection) except under random
 * and fgd; whole GPUs go to the node's first free ones. Kubernetes counts a pod that asks no CPU as
 * 100m in scores (`GetNonzeroRequests`), and so do these. CPU, memory, GPU count or share and GPU
 * type are hard constraints (the scheduler's NodeResourcesFit and Open-Gpu-Share filters); memory
 * is not in any score, as in the simulator. Every placement goes through `placeOnNode`, which
 * validates it against the state, so a baseline can never double-book.
 */
import {
  type PlaceResult,
  type Placement,
  type PlacementRequest,
  type PlacementState,
  PlacementReasonCode,
  gpuMilliLeft,
  placeOnNode,
  shareRoom,
} from '../governance/placement';
import type { TopologyIndex } from '../governance/topology';
import { rng } from './lib';

export const PAPER_POLICIES = ['random', 'dotProd', 'gpuClustering', 'gpuPacking', 'paperBestFit', 'fgd'] as const;
export type PaperPolicyName = (typeof PAPER_POLICIES)[number];

/** A policy with a view of its own: told of every placement that is committed. */
export interface Decider {
  decide(state: PlacementState, request: PlacementRequest): PlaceResult;
  committed(placement: Placement, request: PlacementRequest): void;
}

const MAX_SCORE = 100;
const MAX_SPEC_CPU = 128_000;
const MAX_SPEC_GPU = 8_000;
const MILLI = 1000;
/** kube-scheduler's default CPU request for a container that asks none, used in scores. */
const DEFAULT_MILLI_CPU = 100;

/** A pod as the simulator's scores see it (`PodResource`). */
interface PodShape {
  /** Non-zero CPU request (thousandths of a core). */
  cpu: number;
  /** Thousandths of each GPU: 1000 for whole GPUs, the share, 0 for a CPU-only pod. */
  milli: number;
  count: number;
  /** Accepted GPU models; empty for any. */
  types: readonly string[];
  /** Affinity tag for gpuClustering: '' (no GPU), 'share', '<k>-gpu'. */
  tag: string;
  key: string;
}

function podShape(r: PlacementRequest): PodShape {
  const cpu = (r.cpuMilli ?? 0) > 0 ? r.cpuMilli! : DEFAULT_MILLI_CPU;
  const types = r.gpuType === undefined ? [] : typeof r.gpuType === 'string' ? [r.gpuType] : [...r.gpuType].sort();
  const milli = r.gpuMilli ?? (r.gpus !== undefined ? MILLI : 0);
  const count = r.gpus ?? (r.gpuMilli !== undefined ? 1 : 0);
  const tag = count === 0 ? '' : milli < MILLI ? 'share' : `${count}-gpu`;
  return { cpu, milli, count, types, tag, key: `${cpu}|${milli}|${count}|${types.join('|')}` };
}

/** One of the typical pods FGD measures fragmentation against, with its share of the list. */
export interface TypicalPod {
  shape: PodShape;
  freq: number;
}

/**
 * FGD's typical pods (`GetTypicalPods` with the artifact's settings: CPU-only pods included,
 * popularity threshold 95 %, step 1): pod shapes by count, most common first, taken one by one
 * until they cover 95 % of the pods, frequencies renormalized over those taken.
 */
export function typicalPods(requests: readonly PlacementRequest[], threshold = 0.95): TypicalPod[] {
  const counts = new Map<string, { shape: PodShape; n: number }>();
  for (const r of requests) {
    const s = podShape(r);
    const c = counts.get(s.key);
    if (c) c.n++;
    else counts.set(s.key, { shape: s, n: 1 });
  }
  // Count descending; the simulator breaks ties by CPU, GPU share, GPU count, type, all descending.
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  const sorted = [...counts.values()].sort(
    (a, b) =>
      b.n - a.n ||
      b.shape.cpu - a.shape.cpu ||
      b.shape.milli - a.shape.milli ||
      b.shape.count - a.shape.count ||
      cmp(b.shape.types.join('|'), a.shape.types.join('|')),
  );
  const total = requests.length;
  const out: TypicalPod[] = [];
  let cum = 0;
  for (const c of sorted) {
    if (cum >= threshold * total) break;
    out.push({ shape: c.shape, freq: c.n });
    cum += c.n;
  }
  for (const t of out) t.freq /= cum;
  return out;
}

/** A node as the simulator's scores see it (`NodeResource`). */
interface NodeView {
  n: number;
  typeName: string;
  cpuLeft: number;
  cpuCap: number;
  /** Free thousandths per GPU, by GPU index. */
  left: number[];
  totalLeft: number;
  fullyFree: number;
}

function nodeView(st: PlacementState, n: number): NodeView {
  const node = st.index.nodes[n]!;
  const left: number[] = [];
  let totalLeft = 0;
  let fullyFree = 0;
  for (let g = 0; g < node.gpus; g++) {
    const l = gpuMilliLeft(st, n, g);
    left.push(l);
    totalLeft += l;
    if (l === MILLI) fullyFree++;
  }
  return { n, typeName: st.index.gpuTypes[node.type]!.name, cpuLeft: st.cpuFree[n]!, cpuCap: node.cpuMilli, left, totalLeft, fullyFree };
}

/** Open-Gpu-Share's filter plus NodeResourcesFit: type, CPU, memory and GPU room on this node. */
function feasible(st: PlacementState, n: number, r: PlacementRequest, p: PodShape): boolean {
  const node = st.index.nodes[n]!;
  if (st.cpuFree[n]! < (r.cpuMilli ?? 0) || st.memFree[n]! < (r.memoryMib ?? 0)) return false;
  if (p.count === 0) return true;
  if (node.gpus === 0) return false;
  if (p.types.length > 0 && !p.types.includes(st.index.gpuTypes[node.type]!.name)) return false;
  if (p.milli === MILLI) return st.freeWhole[n]! >= p.count;
  for (let g = 0; g < node.gpus; g++) if (shareRoom(st, n, g, r.sharing ?? null) >= p.milli) return true;
  return false;
}

/** A score for the node (higher is better) and, for a share, the GPU to use (-1: the policy's GPU rule). */
type Scorer = (st: PlacementState, v: NodeView, p: PodShape, r: PlacementRequest) => { score: number; gpu: number };

function gpuFor(st: PlacementState, v: NodeView, p: PodShape, r: PlacementRequest, how: 'best' | 'random', next: () => number): number {
  if (p.count === 0 || p.milli === MILLI) return -1;
  let chosen = -1;
  let seen = 0;
  for (let g = 0; g < v.left.length; g++) {
    if (shareRoom(st, v.n, g, r.sharing ?? null) < p.milli) continue;
    if (how === 'best') {
      if (chosen < 0 || v.left[g]! < v.left[chosen]!) chosen = g;
    } else if (Math.floor(next() * ++seen) === 0) chosen = g;
  }
  return chosen;
}

const dotProd: Scorer = (_st, v, p) => {
  if (v.cpuLeft < p.cpu) return { score: 0, gpu: -1 };
  const dot = (v.cpuLeft / MAX_SPEC_CPU) * (p.cpu / MAX_SPEC_CPU) + (v.totalLeft / MAX_SPEC_GPU) * ((p.milli * p.count) / MAX_SPEC_GPU);
  return { score: Math.trunc(MAX_SCORE * (1 - dot / 2)), gpu: -1 };
};

function clusteringScorer(tags: Map<string, number>[]): Scorer {
  return (_st, v, p) => {
    if (p.count === 0) return { score: 0, gpu: -1 };
    const aff = tags[v.n]!;
    const base = Math.trunc(((MAX_SCORE / 4) * (MAX_SPEC_GPU - v.totalLeft)) / MAX_SPEC_GPU);
    const bonus = (aff.get(p.tag) ?? 0) > 0 ? (aff.size === 1 ? 75 : 50) : aff.size === 0 ? 25 : 0;
    return { score: base + bonus, gpu: -1 };
  };
}

const gpuPacking: Scorer = (st, v, p, r) => {
  if (p.milli <= 0) return { score: 0, gpu: -1 };
  const gpus = v.left.length;
  if (v.fullyFree === gpus) return { score: Math.max(Math.trunc(MAX_SCORE / 3) - v.fullyFree, v.fullyFree), gpu: -1 };
  // The GPUs the pod would take, least room first (a stable sort, as the simulator's).
  const order = v.left.map((_, g) => g).sort((a, b) => v.left[a]! - v.left[b]! || a - b);
  let need = p.count;
  let freshTaken = 0;
  const used: number[] = [];
  for (const g of order) {
    if (need === 0) break;
    const room = p.milli === MILLI ? v.left[g]! : shareRoom(st, v.n, g, r.sharing ?? null);
    if (p.milli <= room) {
      need--;
      used.push(g);
      if (v.left[g] === MILLI) freshTaken++;
    }
  }
  if (need > 0) return { score: 0, gpu: -1 };
  if (freshTaken > 0) return { score: Math.max(Math.trunc(MAX_SCORE / 2) - freshTaken, Math.trunc(MAX_SCORE / 3)), gpu: -1 };
  let freePct = 0;
  for (const g of used) freePct += Math.trunc((v.left[g]! * 100) / MILLI);
  return { score: Math.max(MAX_SCORE - Math.trunc(freePct / 10), MAX_SCORE / 2), gpu: -1 };
};

const paperBestFit: Scorer = (_st, v, p) => {
  const gpuReq = p.milli * p.count;
  if (v.cpuLeft < p.cpu || v.totalLeft < gpuReq) return { score: 0, gpu: -1 };
  const s = ((v.cpuLeft - p.cpu) / MAX_SPEC_CPU) * 0.5 + ((v.totalLeft - gpuReq) / MAX_SPEC_GPU) * 0.5;
  return { score: Math.trunc((1 - s) * MAX_SCORE), gpu: -1 };
};

/**
 * FGD's node fragmentation (`NodeGpuShareFragAmountScore`): for each typical pod, weighted by its
 * frequency, the node's free GPU thousandths it could not use. A pod that needs no GPU, may not use
 * this GPU type, or finds too little CPU or too few GPUs with room counts all of them; one that
 * fits counts the GPUs with less room than its share.
 */
function fgdFrag(typeName: string, cpuLeft: number, left: readonly number[], typical: readonly TypicalPod[]): number {
  let total = 0;
  for (const l of left) total += l;
  let frag = 0;
  for (const { shape: p, freq } of typical) {
    let f = total;
    if (p.milli > 0 && (p.types.length === 0 || p.types.includes(typeName)) && cpuLeft >= p.cpu) {
      let hosts = 0;
      let short = 0;
      for (const l of left) {
        if (l >= p.milli) hosts++;
        else short += l;
      }
      if (hosts >= p.count) f = short;
    }
    frag += freq * f;
  }
  return frag;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/**
 * FGD's score, memoized by the node's state signature (`state.nodeSig`, which covers type, free CPU
 * and memory and the GPUs' sorted states) and the pod's shape. For a share the memo keeps the room
 * values whose GPU scores best, and the GPU is the first on this node with one of them.
 */
function fgdScorer(typical: readonly TypicalPod[]): Scorer {
  const memo = new Map<string, { score: number; rooms: number[] }>();
  let profile: unknown = null;
  return (st, v, p, r) => {
    if (st.profile !== profile) {
      memo.clear();
      profile = st.profile;
    }
    const key = `${st.nodeSig[v.n]}#${p.key}#${r.sharing ?? ''}`;
    let hit = memo.get(key);
    if (hit === undefined) {
      const before = fgdFrag(v.typeName, v.cpuLeft, v.left, typical);
      const score = (after: number) => Math.trunc(sigmoid((before - after) / MILLI) * MAX_SCORE);
      if (p.count === 0 || p.milli === MILLI) {
        const left = v.left.slice();
        let need = p.count;
        for (let g = 0; g < left.length && need > 0; g++) {
          if (left[g] === MILLI) {
            left[g] = 0;
            need--;
          }
        }
        hit = { score: score(fgdFrag(v.typeName, v.cpuLeft - p.cpu, left, typical)), rooms: [] };
      } else {
        hit = { score: -1, rooms: [] };
        const tried = new Set<number>();
        for (let g = 0; g < v.left.length; g++) {
          const l = v.left[g]!;
          if (tried.has(l) || shareRoom(st, v.n, g, r.sharing ?? null) < p.milli) continue;
          tried.add(l);
          const left = v.left.slice();
          left[g] = l - p.milli;
          const s = score(fgdFrag(v.typeName, v.cpuLeft - p.cpu, left, typical));
          if (s > hit.score) hit = { score: s, rooms: [l] };
          else if (s === hit.score) hit.rooms.push(l);
        }
      }
      if (memo.size > 2_000_000) memo.clear();
      memo.set(key, hit);
    }
    let gpu = -1;
    if (hit.rooms.length > 0) {
      for (let g = 0; g < v.left.length && gpu < 0; g++) if (hit.rooms.includes(v.left[g]!) && shareRoom(st, v.n, g, r.sharing ?? null) >= p.milli) gpu = g;
    }
    return { score: hit.score, gpu };
  };
}

/** A uniformly random permutation of 0 … n−1 (Fisher–Yates): rank[node]. */
function permutation(n: number, next: () => number): Int32Array {
  const p = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    const t = p[i]!;
    p[i] = p[j]!;
    p[j] = t;
  }
  return p;
}

export interface PaperPolicyOptions {
  /** Seeds the random choices (random node, random GPU, ties between equal scores). */
  seed: number;
  /** The pod list, for FGD's typical pods. */
  requests?: readonly PlacementRequest[];
}

/** One of the paper's schedulers, with its own random stream and, for gpuClustering, its own view of the pods on each node. */
export function paperPolicy(name: PaperPolicyName, options: PaperPolicyOptions): Decider {
  const next = rng(options.seed);
  const policy = `bench:${name}` as const;
  let tags: Map<string, number>[] = [];
  let index: TopologyIndex | null = null;
  let rank: Int32Array = new Int32Array(0);
  let scorer: Scorer | null;
  let gpuRule: 'best' | 'random' = 'best';
  switch (name) {
    case 'random':
      scorer = null;
      gpuRule = 'random';
      break;
    case 'dotProd':
      scorer = dotProd;
      break;
    case 'gpuClustering':
      scorer = clusteringScorer(tags);
      break;
    case 'gpuPacking':
      scorer = gpuPacking;
      break;
    case 'paperBestFit':
      scorer = paperBestFit;
      break;
    case 'fgd':
      scorer = fgdScorer(typicalPods(options.requests ?? []));
      break;
  }
  return {
    decide(st, r) {
      const p = podShape(r);
      if (r.migProfile !== undefined) {
        return {
          placed: false,
          policy,
          requestId: r.id ?? null,
          reason: {
            code: PlacementReasonCode.InvalidRequest,
            message: 'the paper baselines do not model MIG',
            requested: `MIG ${r.migProfile}`,
            level: null,
            largestFit: null,
            clusterFit: null,
          },
        };
      }
      if (index !== st.index) {
        index = st.index;
        tags = st.index.nodes.map(() => new Map<string, number>());
        rank = permutation(st.index.nodes.length, next);
        if (name === 'gpuClustering') scorer = clusteringScorer(tags);
      }
      let best = -1;
      let bestScore = -Infinity;
      let bestGpu = -1;
      let ties = 0;
      for (let n = 0; n < st.index.nodes.length; n++) {
        if (!feasible(st, n, r, p)) continue;
        // Random: every feasible node scores the same, so the tie-break draws one uniformly.
        const v = scorer === null ? null : nodeView(st, n);
        const { score, gpu } = scorer === null || v === null ? { score: 0, gpu: -1 } : scorer(st, v, p, r);
        // Ties: the artifact's kube-scheduler (vendor/.../core/generic_scheduler.go, selectHost) keeps
        // the node with the smallest name, and the simulator names nodes "<rank>-<name>" with the rank
        // a random permutation drawn once per run (simulator.go, syncClusterResourceList): the least
        // rank wins. Random draws uniformly among all feasible nodes.
        const better = score > bestScore || (score === bestScore && (scorer === null ? Math.floor(next() * ++ties) === 0 : rank[n]! < rank[best]!));
        if (score > bestScore) ties = 1;
        if (better) {
          best = n;
          bestScore = score;
          bestGpu = gpu;
        }
      }
      if (best < 0) {
        // No feasible node. An invalid request or an unknown type is worded by placeOnNode's checks.
        const check = placeOnNode(st, r, policy, 0);
        if (!check.placed && check.reason.code !== PlacementReasonCode.InsufficientCapacity) return check;
        const requested = check.placed ? (r.id ?? 'request') : check.reason.requested;
        return {
          placed: false,
          policy,
          requestId: r.id ?? null,
          reason: {
            code: PlacementReasonCode.InsufficientCapacity,
            message: `no node can take ${requested}`,
            requested,
            level: 'node',
            largestFit: null,
            clusterFit: null,
          },
        };
      }
      let gpus: number[] | undefined;
      if (p.count > 0 && p.milli < MILLI) {
        const g = bestGpu >= 0 ? bestGpu : gpuFor(st, nodeView(st, best), p, r, gpuRule, next);
        gpus = [g];
      }
      return placeOnNode(st, r, policy, best, gpus);
    },
    committed(placement, r) {
      const tag = podShape(r).tag;
      if (tag === '' || index === null) return;
      for (const a of placement.assignments) {
        const m = tags[index.nodeIndex.get(a.node) ?? -1];
        if (m !== undefined) m.set(tag, (m.get(tag) ?? 0) + 1);
      }
    },
  };
}
