/** A request normalized against the state: its kind, count and constraint, and how much of it each node or domain can take (governance/placement.ts). */
import { type Domain, type IndexedNode, TOPOLOGY_LEVELS } from '../topology';
import { TopologyConstraint, PlacementRequest, type PlacementPolicy, PlacementReasonCode, type PlacementReason, type PlacementRefusal } from './types';
import type { PlacementState } from './state';

// ---------------------------------------------------------------------------------------------
// Normalized requests

export interface Demand {
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
export const KEY_SPACE = 1_000_003;

export function refuse(
  policy: PlacementPolicy,
  requestId: string | null,
  reason: Omit<PlacementReason, 'level' | 'largestFit' | 'clusterFit'> & Partial<PlacementReason>,
): PlacementRefusal {
  return { placed: false, policy, requestId, reason: { level: null, largestFit: null, clusterFit: null, ...reason } };
}

export function normalize(state: PlacementState, req: PlacementRequest, policy: PlacementPolicy): Demand | PlacementRefusal {
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
export function staticOk(node: IndexedNode, d: Demand): boolean {
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

export function capacities(st: PlacementState, d: Demand): Int32Array {
  const caps = new Int32Array(st.index.nodes.length);
  for (const node of st.index.nodes) caps[node.index] = wholeCapacity(st, node, d);
  return caps;
}

export function domainCap(domain: Domain, caps: Int32Array): number {
  let s = 0;
  for (const n of domain.nodes) s += caps[n]!;
  return s;
}
