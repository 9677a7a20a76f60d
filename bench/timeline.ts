/**
 * Timeline replay of the Alibaba GPU trace: pods arrive at their creation times and run for
 * their lifetimes, with tenants, quotas and priority preemption, under two schedulers:
 *
 *   govloop   quota-aware queue (pods within their tenant's quota first, then borrowers; priority,
 *             then arrival), `place` for every decision, preemption (below)
 *   fifo      one FIFO queue, head-of-line blocking, `firstFit`, no quotas, no preemption
 *
 *   npm run bench:placement -- --timeline [--nodes FILE] [--pods FILE] [--tenants T] [--load L] [--json]
 *   (or: tsx bench/timeline.ts with the same flags)
 *
 * The rules (docs/decisions/0100):
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
 *   - Preemption (govloop only): a pod that does not fit may evict (a) pods of tenants above their
 *     quota, when its own tenant stays within quota (reclaim), and (b) lower-priority pods of its
 *     own tenant. Victims are taken on one node at a time (lowest priority, then youngest first),
 *     on at most 3 candidate nodes; victims the new pod does not need are given back (reprieve).
 *     An evicted pod goes back to the queue and later restarts from the beginning.
 *
 * Printed per policy: GPU utilization (time-average of allocated GPUs from the first arrival until
 * the last pod starts, the busy period), when that was, GPU-seconds lost to preemption, per tenant queueing delay (time spent pending, summed over a pod's waits: mean and
 * p99, in compressed seconds) and preemptions suffered.
 */
import { basename } from 'node:path';
import { type Placement, type PlacementRequest, type PlacementState, commit, emptyState, firstFit, place, release } from '../governance/placement';
import { type TopologyIndex, buildTopologyIndex } from '../governance/topology';
import { type AlibabaNode, type AlibabaPod, DEFAULT_NODES, DEFAULT_PODS, alibabaTopology, alibabaWorkload, loadNodes, loadPods, podGpus, podRequest } from './alibaba';
import { describeMachine, fmt, machine, nowMs, parseFlags, percentile, round, table } from './lib';

export interface TimelineOptions {
  tenants: number;
  load: number;
  /**
   * Damping: a running pod may be preempted only after it has run this long (compressed
   * seconds), so pods are not restarted over and over (the gpushare100 replay without it).
   */
  minRunSeconds?: number;
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

export interface TimelineFigures {
  /** Time-average of allocated GPUs / capacity, from the first arrival until the last pod starts. */
  utilization: number;
  /** When the last pod started, seconds after the first arrival. */
  lastStartS: number;
  /** GPU-seconds of runs cut short by preemption (included in utilization). */
  wastedGpuS: number;
  meanDelayS: number;
  p99DelayS: number;
  preemptions: number;
  tenants: TenantFigures[];
  decisionsPerSec: number;
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

interface Job {
  readonly i: number;
  readonly req: PlacementRequest;
  readonly shape: string;
  readonly tenant: number;
  readonly priority: number;
  readonly arrival: number;
  readonly lifetime: number;
  readonly gpus: number;
  pendingSince: number;
  waited: number;
  running: Placement | null;
  startedAt: number;
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

interface Sim {
  state: PlacementState;
  time: number;
  allocated: number;
  /** ∫ allocated GPUs dt since the first arrival. */
  area: number;
  /** `area` and the time when the last pod started so far. */
  areaAtLastStart: number;
  lastStart: number;
  /** GPU-seconds of runs cut short by preemption. */
  wasted: number;
  pending: Job[];
  running: Set<Job>;
  tenantUse: number[];
  decisions: number;
  /** A running pod is a preemption victim only after it has run this long. */
  minRun: number;
  events: Events;
}

function start(sim: Sim, job: Job, p: Placement): void {
  sim.state = commit(sim.state, p);
  job.running = p;
  job.startedAt = sim.time;
  job.waited += sim.time - job.pendingSince;
  job.epoch++;
  sim.running.add(job);
  sim.allocated += job.gpus;
  sim.tenantUse[job.tenant]! += job.gpus;
  sim.areaAtLastStart = sim.area;
  sim.lastStart = sim.time;
  sim.events.push(sim.time + job.lifetime, job, job.epoch);
}

function stop(sim: Sim, job: Job): void {
  sim.state = release(sim.state, job.running!);
  job.running = null;
  sim.running.delete(job);
  sim.allocated -= job.gpus;
  sim.tenantUse[job.tenant]! -= job.gpus;
}

function advance(sim: Sim, t: number): void {
  if (t > sim.time) sim.area += sim.allocated * (t - sim.time);
  sim.time = t;
}

/**
 * govloop's preemption for a job that does not fit: victims on one node at a time, then reprieve.
 * Returns the victims evicted (already stopped and requeued), or null when nothing helps.
 */
function preempt(sim: Sim, index: TopologyIndex, job: Job, quota: number): Job[] | null {
  const ownWithin = sim.tenantUse[job.tenant]! + job.gpus <= quota + 1e-9;
  const eligible = (v: Job) =>
    sim.time - v.startedAt >= sim.minRun && ((ownWithin && v.tenant !== job.tenant && sim.tenantUse[v.tenant]! > quota + 1e-9) || (v.tenant === job.tenant && v.priority < job.priority));
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
  const candidates: { node: string; victims: Job[]; count: number }[] = [];
  for (const [node, victims] of byNode) {
    const n = index.nodeIndex.get(node)!;
    victims.sort((a, b) => a.priority - b.priority || b.startedAt - a.startedAt);
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
    if (gpu >= need && cpu >= (job.req.cpuMilli ?? 0) && mem >= (job.req.memoryMib ?? 0)) candidates.push({ node, victims, count });
  }
  candidates.sort((a, b) => a.count - b.count || (a.node < b.node ? -1 : 1));
  for (const c of candidates.slice(0, 3)) {
    let trial = sim.state;
    const evicted: Job[] = [];
    for (let k = 0; k < c.victims.length; k++) {
      const v = c.victims[k]!;
      trial = release(trial, v.running!);
      evicted.push(v);
      if (k + 1 < c.count) continue;
      sim.decisions++;
      const p = place(trial, job.req);
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
      for (const v of kept) {
        sim.wasted += v.gpus * (sim.time - v.startedAt);
        stop(sim, v);
        v.preempted++;
        v.pendingSince = sim.time;
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

function simulate(policy: 'govloop' | 'fifo', index: TopologyIndex, jobsIn: readonly Job[], tenants: number, workload: ReturnType<typeof alibabaWorkload>, minRun = 0): TimelineFigures {
  const jobs: Job[] = jobsIn.map((j) => ({ ...j }));
  const events = new Events();
  for (const j of jobs) events.push(j.arrival, j, -1);
  const quota = index.totalGpus / tenants;
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
    minRun,
    events,
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

  const govloopPass = () => {
    sim.pending.sort((a, b) => b.priority - a.priority || a.arrival - b.arrival || a.i - b.i);
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
        sim.decisions++;
        const p = place(sim.state, job.req);
        if (p.placed) {
          start(sim, job, p);
          continue;
        }
        if (preemptions < 20) {
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

  while (events.size > 0) {
    const [t, , job, epoch] = events.pop();
    advance(sim, t);
    if (job === null) continue;
    if (epoch === -1) {
      job.pendingSince = t;
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
  function govloopArrival(job: Job): void {
    sim.decisions++;
    const p = place(sim.state, job.req);
    if (p.placed) {
      sim.pending.pop();
      start(sim, job, p);
      return;
    }
    if (preempt(sim, index, job, quota) !== null) sim.pending = sim.pending.filter((j) => j !== job);
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
  return {
    utilization: round(sim.areaAtLastStart / (Math.max(1e-9, sim.lastStart - windowStart) * index.totalGpus), 4),
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
        offeredShare: round(offered[t]! / totalOffered, 3),
        meanDelayS: round(mean(d), 1),
        p99DelayS: round(percentile(d, 99), 1),
        preemptions: js.reduce((s, j) => s + j.preempted, 0),
      };
    }),
    decisionsPerSec: Math.round(sim.decisions / seconds),
  };
}

/**
 * The K that makes the mean GPU demand over the compressed arrival window [0, span / K] equal to
 * `target` GPUs, when every pod runs at its (compressed) arrival time: bisection on log K, since
 * the demand grows with K. 1 when the trace is already that busy.
 */
export function compressionFor(pods: readonly AlibabaPod[], t0: number, span: number, lifetime: (p: AlibabaPod) => number, target: number): { k: number; demand: number } {
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
  const jobs: Job[] = usable
    .map((p, i) => ({
      i,
      req: podRequest(p),
      shape: shapeKey(p),
      tenant: tenantOf(p, options.tenants),
      priority: priorityOf(p),
      arrival: (p.creationTime - t0) / compression,
      lifetime: lifetime(p),
      gpus: podGpus(p),
      pendingSince: 0,
      waited: 0,
      running: null,
      startedAt: 0,
      epoch: 0,
      preempted: 0,
    }))
    .sort((a, b) => a.arrival - b.arrival || a.i - b.i);
  return {
    pods: usable.length,
    unschedulable: pods.length - usable.length,
    compression: round(compression, 1),
    windowS: Math.round(span / compression),
    offeredLoad: round(demand / index.totalGpus, 3),
    capacityGpus: index.totalGpus,
    govloop: simulate('govloop', index, jobs, options.tenants, workload, options.minRunSeconds ?? 0),
    fifo: simulate('fifo', index, jobs, options.tenants, workload),
  };
}

export function printTimeline(r: TimelineResult, nodesFile: string, podsFile: string): void {
  console.log(`Timeline replay of the Alibaba GPU trace — ${describeMachine(machine())}`);
  console.log(
    `nodes ${basename(nodesFile)} (${r.capacityGpus} GPUs); pods ${basename(podsFile)}: ${r.pods} replayed, ${r.unschedulable} left out (fit nowhere); ` +
      `arrivals compressed ×${r.compression} into a ${fmt(r.windowS, 0)} s window, offered load ${r.offeredLoad}\n`,
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
  console.log(table(['policy', 'GPU utilization', 'last start s', 'preempted GPU-s', 'mean delay s', 'p99 delay s', 'preemptions', 'decisions/s'], rows));
  const tenantRows = r.govloop.tenants.map((t, i) => {
    const f = r.fifo.tenants[i]!;
    return [t.tenant, t.pods, `${(t.offeredShare * 100).toFixed(1)}%`, fmt(t.meanDelayS), fmt(t.p99DelayS), t.preemptions, fmt(f.meanDelayS), fmt(f.p99DelayS)];
  });
  console.log(table(['tenant', 'pods', 'offered GPU-s', 'govloop mean s', 'govloop p99 s', 'govloop preempted', 'FIFO mean s', 'FIFO p99 s'], tenantRows));
}

const usageText = `usage: tsx bench/timeline.ts [--nodes FILE] [--pods FILE] [--tenants T] [--load L] [--min-run S] [--json]
  --nodes    node list CSV (default ${DEFAULT_NODES})
  --pods     pod list CSV with creation/deletion times (default ${DEFAULT_PODS})
  --tenants  tenants the pods are split into (default 4)
  --load     mean GPU demand over the compressed arrival window, as a share of capacity (default 0.9)
  --scale    share of each GPU model's nodes the cluster keeps (default 0.1)
  --min-run  damping: a pod may be preempted only after running this many (compressed) seconds (default 0)
  --json     print one JSON object {pods, unschedulable, compression, capacityGpus, govloop, fifo}`;

/** The command: also reached from bench/placement.ts --timeline. */
export function timelineMain(argv = process.argv.slice(2)): void {
  const flags = parseFlags({ nodes: DEFAULT_NODES, pods: DEFAULT_PODS, tenants: 4, load: 0.9, scale: 0.1, 'min-run': 0, json: false, timeline: false }, usageText, argv);
  const pods = loadPods(flags.pods);
  if (pods.every((p) => p.creationTime === 0 && p.deletionTime === 0)) {
    console.error(`${flags.pods} has no creation/deletion times: the timeline replay needs them`);
    process.exit(2);
  }
  const index = buildTopologyIndex(alibabaTopology(scaleNodes(loadNodes(flags.nodes), flags.scale)));
  const result = replayTimeline(index, pods, { tenants: Math.max(1, Math.floor(flags.tenants)), load: flags.load, minRunSeconds: flags['min-run'] });
  if (flags.json) console.log(JSON.stringify(result));
  else printTimeline(result, flags.nodes, flags.pods);
}

if (process.argv[1] !== undefined && /bench[\\/]timeline\.ts$/.test(process.argv[1])) timelineMain();
