/**
 * Timeline replay of the Alibaba GPU trace: pods arrive at their creation times and run for
 * their lifetimes, with tenants, quotas and priority preemption, under two schedulers:
 *
 *   govloop   quota-aware queue (pods within their tenant's quota first, then borrowers; priority,
 *             then size, then arrival), `place` for every decision, reservations against
 *             starvation, checkpoint-aware preemption (below)
 *   fifo      one FIFO queue, head-of-line blocking, `firstFit`, no quotas, no preemption
 *
 *   npm run bench:placement -- --timeline [--nodes FILE] [--pods FILE] [--tenants T] [--load L] [--json]
 *   (or: tsx bench/timeline.ts with the same flags)
 *
 * The rules (docs/decisions/0100). Every rule is deterministic: no randomness, ties broken by
 * arrival and then by the pod's place in the list.
 *   - Lifetime: deletion_time − creation_time (at least 1 s). Pods that no policy could place
 *     even on the empty cluster are left out and counted.
 *   - Cluster: the trace's pod list asks for about as many GPUs in all as the cluster has, so a
 *     timeline on the full cluster can never queue. The replay keeps, per GPU model, the first
 *     ceil(S × n) nodes in sn order (--scale S, default 0.1: 625 of the 6,212 GPUs).
 *   - Compression: replayed as recorded, the pod list keeps the 6,212-GPU cluster below 1% busy
 *     (at most 66 GPUs asked at once), so arrival times are divided by K (lifetimes unchanged), K
 *     chosen so the mean GPU demand over the compressed arrival window, were every pod to start
 *     on arrival, is L × the cluster's GPUs (--load, default 0.9), or as near as K ≤ 10^7 gets.
 *   - Tenant: FNV-1a of the pod's shape (cpu_milli|memory_mib|num_gpu|gpu_milli|gpu_spec) mod T
 *     (--tenants, default 4): a team runs a few job templates, so tenants differ in size and shape.
 *   - Quota: every tenant's nominal quota is capacity / T GPUs (shares count by their fraction).
 *     A tenant may borrow idle capacity beyond it.
 *   - Priority: qos LS and Guaranteed 2, Burstable 1, BE 0.
 *
 * govloop only:
 *   - Order: pods within their tenant's quota first, then borrowers; each by priority, then GPUs
 *     asked (largest first: a small pod fits where a large one does not, so large pods go first
 *     and small ones fill what is left), then arrival. A pod that does not fit does not hold up the
 *     pods behind it (backfill), except through reservations.
 *   - Reservations (against starvation): backfill alone starves pods that need a whole node or an
 *     almost empty GPU, since smaller pods keep taking what frees up. A pod that has waited
 *     --reserve-after seconds (compressed, default 1800) holds a reservation: oldest first, one per
 *     pod shape, at most --reservations at once (default 8). A reservation is the place the pod
 *     fits now or, when it fits nowhere, the node nearest to holding it (least shortfall, counting
 *     GPUs and the CPU and memory the node has per GPU), with the least-used GPU there for a share.
 *     What it holds — the free GPUs or the GPU's free share, the CPU and memory the pod asks for,
 *     and for a whole-GPU pod every shared GPU of the node — no other pod may start on, so it
 *     drains. Reservations are made again at every scheduling pass; preemption ignores them.
 *   - GPU nodes keep their CPU for their GPUs: while GPU pods wait, a CPU-only pod may not take the
 *     CPU or memory that a node's free GPUs need (free GPUs × the node's CPU and memory per GPU).
 *   - Preemption: a pod that does not fit may evict (a) pods of tenants above their quota, when its
 *     own tenant stays within quota (reclaim), each taken only while its tenant still borrows once
 *     the victims before it are gone, and (b) lower-priority pods of its own tenant; never a pod of
 *     higher priority than its own. Victims are taken on one node at a time, cheapest first: least
 *     work lost since the last checkpoint (GPU-seconds), then lowest priority, then youngest; the
 *     node whose victims lose least, then fewest victims, of at most 3 candidate nodes; victims the
 *     new pod does not need are given back (reprieve). A preemption happens only if the new pod
 *     then fits, and only if the GPUs it evicts are no more than the GPUs the new pod takes (it
 *     never leaves GPUs idle to start a pod that needs CPU or memory more than GPUs). At most 20
 *     preemptions per scheduling pass.
 *   - Checkpoints: a running pod checkpoints every --checkpoint run-seconds (default 900, as a
 *     training job saves every 15 minutes; 0: never). An evicted pod goes back to the queue and
 *     resumes from its last checkpoint; the work since then is lost (counted in GPU-s lost).
 *
 * Printed per policy: GPU utilization (time-average of allocated GPUs from the first arrival until
 * the last pod starts, the busy period), when that was, GPU-seconds lost to preemption, per tenant queueing delay (time spent pending, summed over a pod's waits: mean and
 * p99, in compressed seconds) and preemptions suffered. With --idle, where the idle GPUs of the
 * busy period were while pods waited (see IdleFigures).
 */
import { basename } from 'node:path';
import {
  type Placement,
  type PlacementRequest,
  type PlacementState,
  commit,
  emptyState,
  firstFit,
  heldPlacement,
  place,
  release,
} from '../governance/placement';
import { type TopologyIndex, buildTopologyIndex } from '../governance/topology';
import {
  type AlibabaNode,
  type AlibabaPod,
  DEFAULT_NODES,
  DEFAULT_PODS,
  alibabaTopology,
  alibabaWorkload,
  loadNodes,
  loadPods,
  podGpus,
  podRequest,
} from './alibaba';
import { describeMachine, fail, fmt, machine, nowMs, parseFlags, percentile, round, table } from './lib';

/** The defaults the reported figures use (docs/benchmarks.md). */
export const DEFAULT_CHECKPOINT_S = 900;
export const DEFAULT_RESERVE_AFTER_S = 1800;
export const DEFAULT_RESERVATIONS = 8;
const MAX_PREEMPTIONS_PER_PASS = 20;
const PREEMPTION_CANDIDATE_NODES = 3;
/** --idle samples the cluster this often (compressed seconds) while pods wait. */
const IDLE_SAMPLE_S = 10;

export interface TimelineOptions {
  tenants: number;
  load: number;
  /**
   * Damping: a running pod may be preempted only after it has run this long since it last
   * started (compressed seconds), as policies.preemption.minRunSeconds does. Default 0.
   */
  minRunSeconds?: number;
  /** A running pod checkpoints every this many run-seconds; 0: never (an evicted pod restarts from zero). */
  checkpointSeconds?: number;
  /** A pod waiting this long (compressed seconds) may hold a reservation; 0: no reservations. */
  reserveAfterSeconds?: number;
  /** At most this many reservations at once (one per pod shape); 0: none. */
  reservations?: number;
  /** Measure where the idle GPUs were while pods waited (slower). */
  idle?: boolean;
}

/**
 * The scaled-down cluster the timeline runs on: per GPU model, the first ceil(scale × n) of its
 * n nodes in `sn` order, so every model stays (the pods' gpu_spec names them).
 */
export function scaleNodes(nodes: readonly AlibabaNode[], scale: number): AlibabaNode[] {
  if (scale >= 1) return [...nodes];
  const byModel = new Map<string, AlibabaNode[]>();
  for (const n of nodes) {
    if (n.gpus === 0) continue;
    const list = byModel.get(n.model);
    if (list) list.push(n);
    else byModel.set(n.model, [n]);
  }
  const kept: AlibabaNode[] = [];
  for (const list of byModel.values()) {
    list.sort((a, b) => (a.sn < b.sn ? -1 : a.sn > b.sn ? 1 : 0));
    kept.push(...list.slice(0, Math.ceil(scale * list.length)));
  }
  return kept;
}

export interface TenantFigures {
  tenant: string;
  pods: number;
  /** Share of the offered GPU-seconds. */
  offeredShare: number;
  meanDelayS: number;
  p99DelayS: number;
  preemptions: number;
}

/**
 * Mean GPUs idle during the busy period while some pod waited, by where they were (sampled every
 * 10 compressed seconds; a GPU's free share counts by its fraction):
 *   cpuMem     on a node where no waiting GPU pod has the CPU or memory it asks for
 *   fragments  on a node with that CPU and memory, but no waiting pod's GPUs fit there
 *   heldBack   where a waiting pod would fit (head-of-line blocking, reservations, quota order)
 */
export interface IdleFigures {
  cpuMem: number;
  fragments: number;
  heldBack: number;
}

export interface TimelineFigures {
  /** Time-average of allocated GPUs / capacity, from the first arrival until the last pod starts. */
  utilization: number;
  /** When the last pod started, seconds after the first arrival. */
  lastStartS: number;
  /** GPU-seconds of work thrown away by preemption: run since the victim's last checkpoint (included in utilization). */
  wastedGpuS: number;
  meanDelayS: number;
  p99DelayS: number;
  preemptions: number;
  tenants: TenantFigures[];
  decisionsPerSec: number;
  idle?: IdleFigures;
}

export interface TimelineSettings {
  minRunS: number;
  checkpointS: number;
  reserveAfterS: number;
  reservations: number;
}

export interface TimelineResult {
  pods: number;
  unschedulable: number;
  compression: number;
  /** The compressed arrival window, seconds. */
  windowS: number;
  /** Mean GPU demand over that window / capacity: --load, or less where --load is out of reach. */
  offeredLoad: number;
  capacityGpus: number;
  /** govloop's knobs as used. */
  settings: TimelineSettings;
  govloop: TimelineFigures;
  fifo: TimelineFigures;
}

/** FNV-1a, 32 bits: the documented, deterministic tenant rule. */
export function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export function tenantOf(pod: AlibabaPod, tenants: number): number {
  return fnv1a(`${pod.cpuMilli}|${pod.memoryMib}|${pod.numGpu}|${pod.gpuMilli}|${pod.gpuSpec.join('|')}`) % tenants;
}

export function priorityOf(pod: AlibabaPod): number {
  return pod.qos === 'LS' || pod.qos === 'Guaranteed' ? 2 : pod.qos === 'Burstable' ? 1 : 0;
}

/** One pod of a timeline, as the simulation takes it. */
export interface TimelinePod {
  req: PlacementRequest;
  /** Pods of one shape are alike: a shape that failed in a pass is not tried again in it. */
  shape: string;
  tenant: number;
  priority: number;
  /** Seconds (compressed). */
  arrival: number;
  /** Run-seconds of work. */
  lifetime: number;
  /** GPUs asked (a share by its fraction, 0 for CPU only). */
  gpus: number;
}

interface Job extends TimelinePod {
  readonly i: number;
  pendingSince: number;
  waited: number;
  running: Placement | null;
  startedAt: number;
  /** Run-seconds of work kept by the pod's last checkpoint: a restart continues from here. */
  progress: number;
  /** Bumped on every start, so a departure scheduled for an evicted run is ignored. */
  epoch: number;
  preempted: number;
}

/** Binary min-heap of [time, seq, job, epoch] events (seq keeps equal times in order). */
class Events {
  private h: [number, number, Job | null, number][] = [];
  private seq = 0;
  get size(): number {
    return this.h.length;
  }
  peekTime(): number {
    return this.h[0]![0];
  }
  push(t: number, job: Job | null, epoch: number): void {
    const h = this.h;
    h.push([t, this.seq++, job, epoch]);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }
  pop(): [number, number, Job | null, number] {
    const h = this.h;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}
const less = (a: [number, number, unknown, number], b: [number, number, unknown, number]) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

type Assignments = Placement['assignments'];

interface Sim {
  state: PlacementState;
  time: number;
  allocated: number;
  /** ∫ allocated GPUs dt since the first arrival. */
  area: number;
  /** `area` and the time when the last pod started so far. */
  areaAtLastStart: number;
  lastStart: number;
  /** GPU-seconds of work thrown away by preemption. */
  wasted: number;
  pending: Job[];
  running: Set<Job>;
  tenantUse: number[];
  decisions: number;
  /** A running pod is a preemption victim only after it has run this long. */
  minRun: number;
  /** Checkpoint interval in run-seconds; 0: never. */
  checkpoint: number;
  events: Events;
  /** govloop's reservations, by holder, as made at the last pass; `resVersion` changes with them. */
  reservations: Map<Job, Assignments>;
  resVersion: number;
  /** The state less the reservations (and which of them it holds), for the state and version it was made from. */
  view: { of: PlacementState; version: number; st: PlacementState; held: Set<Job> } | null;
  /** GPU pods waiting: while there are any, CPU-only pods keep off what GPU nodes keep for their GPUs. */
  gpuWaiting: number;
  /** The state less the CPU and memory GPU nodes keep for their free GPUs, for the state it was made from. */
  guard: { of: PlacementState; st: PlacementState } | null;
  idle: IdleFigures & { next: number };
}

function start(sim: Sim, job: Job, p: Placement): void {
  sim.state = commit(sim.state, p);
  if (job.gpus > 0) sim.gpuWaiting--;
  job.running = p;
  job.startedAt = sim.time;
  job.waited += sim.time - job.pendingSince;
  job.epoch++;
  sim.running.add(job);
  sim.allocated += job.gpus;
  sim.tenantUse[job.tenant]! += job.gpus;
  sim.areaAtLastStart = sim.area;
  sim.lastStart = sim.time;
  if (sim.reservations.delete(job)) sim.resVersion++;
  sim.events.push(sim.time + job.lifetime - job.progress, job, job.epoch);
}

function stop(sim: Sim, job: Job): void {
  sim.state = release(sim.state, job.running!);
  job.running = null;
  sim.running.delete(job);
  sim.allocated -= job.gpus;
  sim.tenantUse[job.tenant]! -= job.gpus;
}

/**
 * Run-seconds an eviction now would throw away: the work since the pod's last checkpoint, taken
 * every `checkpointS` run-seconds of the pod's work (`progress` kept from earlier runs, `ran` in
 * this one); everything run in this run when it never checkpoints.
 */
export function lostOnEviction(progress: number, ran: number, checkpointS: number): number {
  if (!(checkpointS > 0)) return ran;
  const done = progress + ran;
  return done - Math.max(progress, Math.floor(done / checkpointS) * checkpointS);
}

function advance(sim: Sim, t: number, measureIdle: boolean): void {
  if (measureIdle) {
    if (sim.idle.next < sim.time) sim.idle.next = sim.time;
    if (sim.pending.length > 0) {
      for (; sim.idle.next < t; sim.idle.next += IDLE_SAMPLE_S) sampleIdle(sim);
    } else sim.idle.next = t;
  }
  if (t > sim.time) sim.area += sim.allocated * (t - sim.time);
  sim.time = t;
}

/** Does the request fit on node n of the state? (Shares and whole GPUs; the trace has no MIG.) */
function fitsOn(st: PlacementState, n: number, req: PlacementRequest, ignoreCpuMem = false): boolean {
  const node = st.index.nodes[n]!;
  if (!ignoreCpuMem && (st.cpuFree[n]! < (req.cpuMilli ?? 0) || st.memFree[n]! < (req.memoryMib ?? 0))) return false;
  if (req.gpuType !== undefined && !(typeof req.gpuType === 'string' ? [req.gpuType] : req.gpuType).includes(st.index.gpuTypes[node.type]!.name)) return false;
  if (req.gpus !== undefined) return st.freeWhole[n]! >= req.gpus;
  if (req.gpuMilli !== undefined) {
    for (let g = 0; g < node.gpus; g++) if (st.gpuMilli[node.gpuOffset + g]! + req.gpuMilli <= 1000) return true;
    return false;
  }
  return true;
}

function sampleIdle(sim: Sim): void {
  const st = sim.state;
  const shapes = new Map<string, PlacementRequest>();
  for (const j of sim.pending) if (j.running === null && j.gpus > 0) shapes.set(j.shape, j.req);
  const reqs = [...shapes.values()];
  for (let n = 0; n < st.freeMilli.length; n++) {
    const free = (st.freeMilli[n]! / 1000) * IDLE_SAMPLE_S;
    if (free <= 0 || reqs.length === 0) continue;
    if (reqs.some((r) => fitsOn(st, n, r))) sim.idle.heldBack += free;
    else if (reqs.some((r) => fitsOn(st, n, r, true))) sim.idle.cpuMem += free;
    else sim.idle.fragments += free;
  }
}

const isCpuOnly = (req: PlacementRequest) => req.gpus === undefined && req.gpuMilli === undefined && req.migProfile === undefined;

/**
 * What GPU nodes keep for their GPUs from CPU-only pods: on every node with free GPUs, the CPU
 * and memory those GPUs need (free GPUs × the node's CPU and memory per GPU), as far as free.
 */
export function keptForGpus(st: PlacementState): Assignments {
  const out: Assignments = [];
  for (const node of st.index.nodes) {
    const free = st.freeMilli[node.index]! / 1000;
    if (free <= 0 || node.gpus === 0) continue;
    const cpuMilli = Math.min(st.cpuFree[node.index]!, Math.floor((free * node.cpuMilli) / node.gpus));
    const memoryMib = Math.min(st.memFree[node.index]!, Math.floor((free * node.memoryMib) / node.gpus));
    if (cpuMilli > 0 || memoryMib > 0) out.push({ kind: 'cpu', node: node.name, gpus: [], cpuMilli, memoryMib });
  }
  return out;
}

/** govloop's placement on a state: `place`, with CPU-only pods kept off what GPU nodes keep for their GPUs while GPU pods wait. */
function placeOn(sim: Sim, st: PlacementState, req: PlacementRequest): ReturnType<typeof place> {
  sim.decisions++;
  if (!isCpuOnly(req) || sim.gpuWaiting === 0) return place(st, req);
  if (sim.guard?.of !== st) {
    const kept = keptForGpus(st);
    sim.guard = { of: st, st: kept.length === 0 ? st : commit(st, heldPlacement(kept)) };
  }
  return place(sim.guard.st, req);
}

/**
 * A reservation for a pod that fits nowhere: on the node nearest to holding it — least shortfall,
 * in GPUs plus the missing CPU and memory in units of the node's CPU and memory per GPU; the first
 * such node in topology order — what is free there of what the pod needs: the free GPUs (a whole-GPU
 * pod; its node's shared GPUs are closed too) or the least-used GPU's free share (a share), and
 * the CPU and memory it asks for. Null when no node could ever hold it.
 */
export function reservationFor(st: PlacementState, req: PlacementRequest): Assignments | null {
  const cpu = req.cpuMilli ?? 0;
  const mem = req.memoryMib ?? 0;
  const types = req.gpuType === undefined ? null : typeof req.gpuType === 'string' ? [req.gpuType] : req.gpuType;
  let best: Assignments | null = null;
  let bestShort = Infinity;
  for (const node of st.index.nodes) {
    const n = node.index;
    if (node.cpuMilli < cpu || node.memoryMib < mem) continue;
    if (!isCpuOnly(req) && types !== null && !types.includes(st.index.gpuTypes[node.type]!.name)) continue;
    const perGpu = Math.max(1, node.gpus);
    let short = Math.max(0, cpu - st.cpuFree[n]!) / (node.cpuMilli / perGpu) + Math.max(0, mem - st.memFree[n]!) / (node.memoryMib / perGpu);
    const res = { node: node.name, cpuMilli: Math.min(cpu, st.cpuFree[n]!), memoryMib: Math.min(mem, st.memFree[n]!) };
    const held: Assignments = [];
    if (req.gpus !== undefined) {
      if (node.gpus < req.gpus) continue;
      short += Math.max(0, req.gpus - st.freeWhole[n]!);
      const free: number[] = [];
      for (let g = 0; g < node.gpus; g++) {
        const used = st.gpuMilli[node.gpuOffset + g]!;
        if (used === 0 && free.length < req.gpus) free.push(g);
        else if (used > 0 && used < 1000)
          held.push({ kind: 'milli', node: node.name, gpus: [g], milli: 1000 - used, sharing: 'mps', cpuMilli: 0, memoryMib: 0 });
      }
      held.unshift(free.length > 0 ? { kind: 'whole', gpus: free, ...res } : { kind: 'cpu', gpus: [], ...res });
    } else if (req.gpuMilli !== undefined) {
      let gpu = -1;
      let used = 1000;
      for (let g = 0; g < node.gpus; g++) {
        const u = st.gpuMilli[node.gpuOffset + g]!;
        if (u < used) {
          used = u;
          gpu = g;
        }
      }
      if (gpu < 0) continue; // every GPU held whole
      short += Math.max(0, req.gpuMilli - (1000 - used)) / 1000;
      held.push({ kind: 'milli', gpus: [gpu], milli: Math.min(999, 1000 - used), sharing: 'mps', ...res });
    } else {
      held.push({ kind: 'cpu', gpus: [], ...res });
    }
    if (short < bestShort) {
      bestShort = short;
      best = held;
    }
  }
  return best;
}

/** The state with the reservations taken; one that no longer fits (a preemptor took its room) is left out. */
function viewOf(sim: Sim): { st: PlacementState; held: Set<Job> } {
  if (sim.reservations.size === 0) return { st: sim.state, held: new Set() };
  if (sim.view?.of !== sim.state || sim.view.version !== sim.resVersion) {
    let st = sim.state;
    const held = new Set<Job>();
    for (const [job, r] of sim.reservations) {
      try {
        st = commit(st, heldPlacement(r));
        held.add(job);
      } catch {
        // its room was taken by a preemptor: not held
      }
    }
    sim.view = { of: sim.state, version: sim.resVersion, st, held };
  }
  return sim.view;
}

/** What a pod may use: the state less every reservation but its own. */
function roomFor(sim: Sim, job: Job): PlacementState {
  const view = viewOf(sim);
  const own = sim.reservations.get(job);
  return own !== undefined && view.held.has(job) ? release(view.st, heldPlacement(own)) : view.st;
}

/**
 * govloop's preemption for a job that does not fit: victims on one node at a time, then reprieve.
 * Returns the victims evicted (already stopped and requeued), or null when nothing helps.
 */
function preempt(sim: Sim, index: TopologyIndex, job: Job, quota: number): Job[] | null {
  const ownWithin = sim.tenantUse[job.tenant]! + job.gpus <= quota + 1e-9;
  const eligible = (v: Job) =>
    sim.time - v.startedAt >= sim.minRun &&
    v.priority <= job.priority &&
    ((v.tenant === job.tenant && v.priority < job.priority) || (ownWithin && v.tenant !== job.tenant && sim.tenantUse[v.tenant]! > quota + 1e-9));
  const lost = (v: Job) => v.gpus * lostOnEviction(v.progress, sim.time - v.startedAt, sim.checkpoint);
  const byNode = new Map<string, Job[]>();
  for (const v of sim.running) {
    if (!eligible(v)) continue;
    const node = v.running!.assignments[0]!.node;
    const list = byNode.get(node);
    if (list) list.push(v);
    else byNode.set(node, [v]);
  }
  if (byNode.size === 0) return null;
  const need = job.gpus * 1000;
  const candidates: { node: string; victims: Job[]; count: number; lost: number }[] = [];
  for (const [node, all] of byNode) {
    const n = index.nodeIndex.get(node)!;
    all.sort((a, b) => lost(a) - lost(b) || a.priority - b.priority || b.startedAt - a.startedAt || a.i - b.i);
    // A reclaim victim only while its tenant still borrows, the victims before it gone.
    const left = new Map<number, number>();
    const victims = all.filter((v) => {
      if (v.tenant === job.tenant) return true;
      const use = left.get(v.tenant) ?? sim.tenantUse[v.tenant]!;
      if (use <= quota + 1e-9) return false;
      left.set(v.tenant, use - v.gpus);
      return true;
    });
    // Cheap estimate: how many victims, in order, free enough GPU, CPU and memory.
    let gpu = sim.state.freeMilli[n]!;
    let cpu = sim.state.cpuFree[n]!;
    let mem = sim.state.memFree[n]!;
    let count = 0;
    while (count < victims.length && (gpu < need || cpu < (job.req.cpuMilli ?? 0) || mem < (job.req.memoryMib ?? 0))) {
      const v = victims[count++]!;
      gpu += v.gpus * 1000;
      cpu += v.req.cpuMilli ?? 0;
      mem += v.req.memoryMib ?? 0;
    }
    if (gpu >= need && cpu >= (job.req.cpuMilli ?? 0) && mem >= (job.req.memoryMib ?? 0)) {
      candidates.push({ node, victims, count, lost: victims.slice(0, count).reduce((s, v) => s + lost(v), 0) });
    }
  }
  candidates.sort((a, b) => a.lost - b.lost || a.count - b.count || (a.node < b.node ? -1 : 1));
  for (const c of candidates.slice(0, PREEMPTION_CANDIDATE_NODES)) {
    let trial = sim.state;
    const evicted: Job[] = [];
    for (let k = 0; k < c.victims.length; k++) {
      const v = c.victims[k]!;
      trial = release(trial, v.running!);
      evicted.push(v);
      if (k + 1 < c.count) continue;
      const p = placeOn(sim, trial, job.req);
      if (!p.placed) continue;
      // Reprieve: give back, youngest-evicted last, every victim the placement leaves room for.
      let withJob = commit(trial, p);
      const kept: Job[] = [];
      for (let j = evicted.length - 1; j >= 0; j--) {
        try {
          withJob = commit(withJob, evicted[j]!.running!);
        } catch {
          kept.push(evicted[j]!);
        }
      }
      // Never leave GPUs idle to start a pod: the GPUs evicted are at most the GPUs it takes.
      if (kept.reduce((s, v) => s + v.gpus, 0) > job.gpus + 1e-9) break;
      for (const v of kept) {
        const ran = sim.time - v.startedAt;
        const gone = lostOnEviction(v.progress, ran, sim.checkpoint);
        sim.wasted += v.gpus * gone;
        v.progress += ran - gone;
        stop(sim, v);
        v.preempted++;
        v.pendingSince = sim.time;
        if (v.gpus > 0) sim.gpuWaiting++;
        sim.pending.push(v);
      }
      start(sim, job, p);
      return kept;
    }
  }
  return null;
}

function shapeKey(pod: AlibabaPod): string {
  return `${pod.cpuMilli}|${pod.memoryMib}|${pod.numGpu}|${pod.gpuMilli}|${pod.gpuSpec.join('|')}`;
}

export interface SimulateSettings {
  minRunS?: number;
  checkpointS?: number;
  reserveAfterS?: number;
  reservations?: number;
  idle?: boolean;
}

/**
 * One scheduler over a timeline of pods (in any order; they are taken by arrival). Throws when a
 * pod never started or the cluster is not empty at the end.
 */
export function simulateTimeline(
  policy: 'govloop' | 'fifo',
  index: TopologyIndex,
  pods: readonly TimelinePod[],
  tenants: number,
  workload: ReturnType<typeof alibabaWorkload>,
  settings: SimulateSettings = {},
): TimelineFigures {
  const jobs: Job[] = pods
    .map((p, i) => ({ ...p, i, pendingSince: 0, waited: 0, running: null, startedAt: 0, progress: 0, epoch: 0, preempted: 0 }))
    .sort((a, b) => a.arrival - b.arrival || a.i - b.i);
  const events = new Events();
  for (const j of jobs) events.push(j.arrival, j, -1);
  const quota = index.totalGpus / tenants;
  const reserveAfter = settings.reserveAfterS ?? DEFAULT_RESERVE_AFTER_S;
  const maxReservations = reserveAfter > 0 ? (settings.reservations ?? DEFAULT_RESERVATIONS) : 0;
  const measureIdle = settings.idle ?? false;
  const sim: Sim = {
    state: emptyState(index, { workload }),
    time: jobs[0]?.arrival ?? 0,
    allocated: 0,
    area: 0,
    areaAtLastStart: 0,
    lastStart: jobs[0]?.arrival ?? 0,
    wasted: 0,
    pending: [],
    running: new Set(),
    tenantUse: new Array<number>(tenants).fill(0),
    decisions: 0,
    minRun: settings.minRunS ?? 0,
    checkpoint: settings.checkpointS ?? DEFAULT_CHECKPOINT_S,
    events,
    reservations: new Map(),
    resVersion: 0,
    view: null,
    gpuWaiting: 0,
    guard: null,
    idle: { cpuMem: 0, fragments: 0, heldBack: 0, next: 0 },
  };
  const windowStart = sim.time;
  const t0 = nowMs();

  const fifoPass = () => {
    while (sim.pending.length > 0) {
      const head = sim.pending[0]!;
      sim.decisions++;
      const p = firstFit(sim.state, head.req);
      if (!p.placed) return;
      sim.pending.shift();
      start(sim, head, p);
    }
  };

  /** Reservations for the pods that waited longest: oldest first, one per shape. */
  const reserve = () => {
    sim.reservations = new Map();
    sim.resVersion++;
    if (maxReservations <= 0) return;
    const aged = sim.pending
      .filter((j) => j.running === null && sim.time - j.pendingSince + j.waited >= reserveAfter)
      .sort((a, b) => a.arrival - b.arrival || a.i - b.i);
    const shapes = new Set<string>();
    for (const j of aged) {
      if (sim.reservations.size >= maxReservations) break;
      if (shapes.has(j.shape)) continue;
      shapes.add(j.shape);
      const st = viewOf(sim).st;
      const fit = placeOn(sim, st, j.req);
      const r = fit.placed ? fit.assignments : reservationFor(st, j.req);
      if (r === null) continue;
      sim.reservations.set(j, r);
      sim.resVersion++;
    }
  };

  const govloopPass = () => {
    sim.pending.sort((a, b) => b.priority - a.priority || b.gpus - a.gpus || a.arrival - b.arrival || a.i - b.i);
    reserve();
    let preemptions = 0;
    for (const borrowing of [false, true]) {
      const failed = new Set<string>();
      const still: Job[] = [];
      const queue = sim.pending;
      // Victims evicted during the sweep are requeued onto the fresh sim.pending.
      sim.pending = [];
      for (const job of queue) {
        if (job.running !== null) continue;
        const within = sim.tenantUse[job.tenant]! + job.gpus <= quota + 1e-9;
        if (within === borrowing || failed.has(job.shape)) {
          still.push(job);
          continue;
        }
        const p = placeOn(sim, roomFor(sim, job), job.req);
        if (p.placed) {
          start(sim, job, p);
          continue;
        }
        if (preemptions < MAX_PREEMPTIONS_PER_PASS) {
          const victims = preempt(sim, index, job, quota);
          if (victims !== null) {
            preemptions++;
            failed.clear(); // the state changed shape: earlier failures may fit now
            continue;
          }
        }
        failed.add(job.shape);
        still.push(job);
      }
      sim.pending = [...still, ...sim.pending];
    }
  };
  const pass = policy === 'fifo' ? fifoPass : govloopPass;

  function govloopArrival(job: Job): void {
    const p = placeOn(sim, roomFor(sim, job), job.req);
    if (p.placed) {
      sim.pending.pop();
      start(sim, job, p);
      return;
    }
    if (preempt(sim, index, job, quota) !== null) sim.pending = sim.pending.filter((j) => j !== job);
  }

  while (events.size > 0) {
    const [t, , job, epoch] = events.pop();
    advance(sim, t, measureIdle);
    if (job === null) continue;
    if (epoch === -1) {
      job.pendingSince = t;
      if (job.gpus > 0) sim.gpuWaiting++;
      if (policy === 'fifo') {
        sim.pending.push(job);
        if (sim.pending.length === 1) fifoPass();
      } else {
        // Nothing was freed since the last pass: only the new pod can start (or preempt).
        sim.pending.push(job);
        govloopArrival(job);
      }
    } else if (job.running !== null && epoch === job.epoch) {
      stop(sim, job);
      // Batch departures at the same instant into one pass.
      if (events.size === 0 || events.peekTime() !== t) pass();
    }
  }
  const seconds = (nowMs() - t0) / 1000;
  // Every pod fits the empty cluster, so every pod must have run and the cluster must be empty again.
  const stuck = jobs.filter((j) => j.epoch === 0).length;
  if (stuck > 0 || sim.running.size > 0 || sim.state.freeWhole.reduce((s, x) => s + x, 0) !== index.nodes.reduce((s, n) => s + n.gpus, 0)) {
    throw new Error(`timeline ${policy}: ${stuck} pods never started, ${sim.running.size} still running at the end`);
  }

  const delays = (js: Job[]) => js.map((j) => j.waited).sort((a, b) => a - b);
  const mean = (xs: number[]) => (xs.length === 0 ? 0 : xs.reduce((s, x) => s + x, 0) / xs.length);
  const offered = new Array<number>(tenants).fill(0);
  for (const j of jobs) offered[j.tenant]! += j.gpus * j.lifetime;
  const totalOffered = offered.reduce((s, x) => s + x, 0);
  const all = delays(jobs);
  const busy = Math.max(1e-9, sim.lastStart - windowStart);
  return {
    utilization: round(sim.areaAtLastStart / (busy * index.totalGpus), 4),
    lastStartS: Math.round(sim.lastStart - windowStart),
    wastedGpuS: Math.round(sim.wasted),
    meanDelayS: round(mean(all), 1),
    p99DelayS: round(percentile(all, 99), 1),
    preemptions: jobs.reduce((s, j) => s + j.preempted, 0),
    tenants: Array.from({ length: tenants }, (_, t) => {
      const js = jobs.filter((j) => j.tenant === t);
      const d = delays(js);
      return {
        tenant: `t${t}`,
        pods: js.length,
        offeredShare: round(offered[t]! / Math.max(1e-9, totalOffered), 3),
        meanDelayS: round(mean(d), 1),
        p99DelayS: round(percentile(d, 99), 1),
        preemptions: js.reduce((s, j) => s + j.preempted, 0),
      };
    }),
    decisionsPerSec: Math.round(sim.decisions / Math.max(1e-9, seconds)),
    ...(measureIdle
      ? { idle: { cpuMem: round(sim.idle.cpuMem / busy, 1), fragments: round(sim.idle.fragments / busy, 1), heldBack: round(sim.idle.heldBack / busy, 1) } }
      : {}),
  };
}

/**
 * The K that makes the mean GPU demand over the compressed arrival window [0, span / K] equal to
 * `target` GPUs, when every pod runs at its (compressed) arrival time: bisection on log K, since
 * the demand grows with K. 1 when the trace is already that busy.
 */
export function compressionFor(
  pods: readonly AlibabaPod[],
  t0: number,
  span: number,
  lifetime: (p: AlibabaPod) => number,
  target: number,
): { k: number; demand: number } {
  const demand = (k: number) => {
    const end = span / k;
    let area = 0;
    for (const p of pods) {
      const a = (p.creationTime - t0) / k;
      area += podGpus(p) * Math.max(0, Math.min(end, a + lifetime(p)) - a);
    }
    return area / end;
  };
  if (demand(1) >= target) return { k: 1, demand: demand(1) };
  // Out of reach (a pod list of small shares): every pod arrives within a second or so.
  if (demand(MAX_COMPRESSION) < target) return { k: MAX_COMPRESSION, demand: demand(MAX_COMPRESSION) };
  let lo = 0;
  let hi = Math.log(MAX_COMPRESSION);
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (demand(Math.exp(mid)) < target) lo = mid;
    else hi = mid;
  }
  return { k: Math.exp(hi), demand: demand(Math.exp(hi)) };
}

const MAX_COMPRESSION = 1e7;

/** Runs both schedulers over the pods' timeline. */
export function replayTimeline(index: TopologyIndex, pods: readonly AlibabaPod[], options: TimelineOptions): TimelineResult {
  const workload = alibabaWorkload(pods);
  const empty = emptyState(index, { workload });
  const usable = pods.filter((p) => {
    const r = podRequest(p);
    return place(empty, r).placed && firstFit(empty, r).placed;
  });
  const lifetime = (p: AlibabaPod) => Math.max(1, p.deletionTime - p.creationTime);
  const t0 = Math.min(...usable.map((p) => p.creationTime));
  const span = Math.max(1, Math.max(...usable.map((p) => p.creationTime)) - t0);
  const { k: compression, demand } = compressionFor(usable, t0, span, lifetime, options.load * index.totalGpus);
  const timeline: TimelinePod[] = usable.map((p) => ({
    req: podRequest(p),
    shape: shapeKey(p),
    tenant: tenantOf(p, options.tenants),
    priority: priorityOf(p),
    arrival: (p.creationTime - t0) / compression,
    lifetime: lifetime(p),
    gpus: podGpus(p),
  }));
  const settings: TimelineSettings = {
    minRunS: options.minRunSeconds ?? 0,
    checkpointS: options.checkpointSeconds ?? DEFAULT_CHECKPOINT_S,
    reserveAfterS: options.reserveAfterSeconds ?? DEFAULT_RESERVE_AFTER_S,
    reservations: options.reservations ?? DEFAULT_RESERVATIONS,
  };
  return {
    pods: usable.length,
    unschedulable: pods.length - usable.length,
    compression: round(compression, 1),
    windowS: Math.round(span / compression),
    offeredLoad: round(demand / index.totalGpus, 3),
    capacityGpus: index.totalGpus,
    settings,
    govloop: simulateTimeline('govloop', index, timeline, options.tenants, workload, { ...settings, idle: options.idle }),
    fifo: simulateTimeline('fifo', index, timeline, options.tenants, workload, { idle: options.idle }),
  };
}

export function printTimeline(r: TimelineResult, nodesFile: string, podsFile: string): void {
  console.log(`Timeline replay of the Alibaba GPU trace — ${describeMachine(machine())}`);
  console.log(
    `nodes ${basename(nodesFile)} (${r.capacityGpus} GPUs); pods ${basename(podsFile)}: ${r.pods} replayed, ${r.unschedulable} left out (fit nowhere); ` +
      `arrivals compressed ×${r.compression} into a ${fmt(r.windowS, 0)} s window, offered load ${r.offeredLoad}`,
  );
  const s = r.settings;
  console.log(
    `govloop: checkpoint every ${s.checkpointS > 0 ? `${fmt(s.checkpointS, 0)} s` : 'never'}, ` +
      `${s.reservations > 0 && s.reserveAfterS > 0 ? `up to ${s.reservations} reservations after ${fmt(s.reserveAfterS, 0)} s waiting` : 'no reservations'}` +
      `${s.minRunS > 0 ? `, preemptible after ${fmt(s.minRunS, 0)} s` : ''}\n`,
  );
  const rows = (['govloop', 'fifo'] as const).map((p) => [
    p === 'fifo' ? 'FIFO first-fit' : 'govloop',
    `${(r[p].utilization * 100).toFixed(1)}%`,
    fmt(r[p].lastStartS, 0),
    fmt(r[p].wastedGpuS, 0),
    fmt(r[p].meanDelayS),
    fmt(r[p].p99DelayS),
    r[p].preemptions,
    fmt(r[p].decisionsPerSec, 0),
  ]);
  console.log(
    table(['policy', 'GPU utilization', 'last start s', 'GPU-s lost to preemption', 'mean delay s', 'p99 delay s', 'preemptions', 'decisions/s'], rows),
  );
  if (r.govloop.idle && r.fifo.idle) {
    const idleRows = (['govloop', 'fifo'] as const).map((p) => {
      const i = r[p].idle!;
      return [p === 'fifo' ? 'FIFO first-fit' : 'govloop', fmt(i.cpuMem), fmt(i.fragments), fmt(i.heldBack)];
    });
    console.log('Mean GPUs idle while pods waited (busy period), by where they were:');
    console.log(table(['policy', 'no CPU/memory for a waiting pod', 'GPU fragments no waiting pod fits', 'a waiting pod fits (held back)'], idleRows));
  }
  const tenantRows = r.govloop.tenants.map((t, i) => {
    const f = r.fifo.tenants[i]!;
    return [t.tenant, t.pods, `${(t.offeredShare * 100).toFixed(1)}%`, fmt(t.meanDelayS), fmt(t.p99DelayS), t.preemptions, fmt(f.meanDelayS), fmt(f.p99DelayS)];
  });
  console.log(table(['tenant', 'pods', 'offered GPU-s', 'govloop mean s', 'govloop p99 s', 'govloop preempted', 'FIFO mean s', 'FIFO p99 s'], tenantRows));
}

const usageText = `usage: tsx bench/timeline.ts [--nodes FILE] [--pods FILE] [--tenants T] [--load L] [--scale S] [--min-run S]
                          [--checkpoint S] [--reserve-after S] [--reservations N] [--idle] [--json]
  --nodes          node list CSV (default ${DEFAULT_NODES})
  --pods           pod list CSV with creation/deletion times (default ${DEFAULT_PODS})
  --tenants        tenants the pods are split into (default 4)
  --load           mean GPU demand over the compressed arrival window, as a share of capacity (default 0.9)
  --scale          share of each GPU model's nodes the cluster keeps (default 0.1)
  --min-run        damping: a pod may be preempted only after running this many (compressed) seconds (default 0)
  --checkpoint     govloop: pods checkpoint every S run-seconds; an evicted pod resumes from its last one (default ${DEFAULT_CHECKPOINT_S}; 0: never)
  --reserve-after  govloop: a pod waiting S (compressed) seconds may hold a reservation (default ${DEFAULT_RESERVE_AFTER_S}; 0: none)
  --reservations   govloop: at most N reservations at once, one per pod shape (default ${DEFAULT_RESERVATIONS}; 0: none)
  --idle           also measure where the idle GPUs were while pods waited (slower)
  --json           print one JSON object {pods, unschedulable, compression, capacityGpus, settings, govloop, fifo}`;

/** A flag that may be 0: a whole number of seconds or reservations, at least 0. */
function nonNegative(name: string, value: string): number {
  const n = Number(value);
  if (!(value.trim() !== '' && Number.isFinite(n) && n >= 0)) fail(`--${name} must be a number ≥ 0, got "${value}"\n${usageText}`);
  return n;
}

/** The command: also reached from bench/placement.ts --timeline. */
export function timelineMain(argv = process.argv.slice(2)): void {
  const flags = parseFlags(
    {
      nodes: DEFAULT_NODES,
      pods: DEFAULT_PODS,
      tenants: 4,
      load: 0.9,
      scale: 0.1,
      'min-run': 0,
      checkpoint: String(DEFAULT_CHECKPOINT_S),
      'reserve-after': String(DEFAULT_RESERVE_AFTER_S),
      reservations: String(DEFAULT_RESERVATIONS),
      idle: false,
      json: false,
      timeline: false,
    },
    usageText,
    argv,
  );
  const pods = loadPods(flags.pods);
  if (pods.every((p) => p.creationTime === 0 && p.deletionTime === 0)) {
    console.error(`${flags.pods} has no creation/deletion times: the timeline replay needs them`);
    process.exit(2);
  }
  const index = buildTopologyIndex(alibabaTopology(scaleNodes(loadNodes(flags.nodes), flags.scale)));
  const result = replayTimeline(index, pods, {
    tenants: Math.max(1, Math.floor(flags.tenants)),
    load: flags.load,
    minRunSeconds: flags['min-run'],
    checkpointSeconds: nonNegative('checkpoint', flags.checkpoint),
    reserveAfterSeconds: nonNegative('reserve-after', flags['reserve-after']),
    reservations: Math.floor(nonNegative('reservations', flags.reservations)),
    idle: flags.idle,
  });
  if (flags.json) console.log(JSON.stringify(result));
  else printTimeline(result, flags.nodes, flags.pods);
}

if (process.argv[1] !== undefined && /bench[\\/]timeline\.ts$/.test(process.argv[1])) timelineMain();
