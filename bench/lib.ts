/**
 * What both benchmarks share: the machine they ran on, flag parsing, percentiles and the
 * printed table. Figures are only comparable with the machine and load next to them, so every
 * report starts with `machine()`.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import Table from 'cli-table3';

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  freeMemoryGiB: number;
  node: string;
  platform: string;
  arch: string;
  /** 1, 5 and 15 minute load averages when the benchmark started: other processes show up here. */
  loadAverage: [number, number, number];
}

export function machine(): Machine {
  const cpu = cpus();
  const gib = (b: number) => Math.round((b / 2 ** 30) * 10) / 10;
  const [l1, l5, l15] = loadavg();
  return {
    cpuModel: cpu[0]?.model.trim() ?? 'unknown',
    cores: cpu.length,
    memoryGiB: gib(totalmem()),
    freeMemoryGiB: gib(freemem()),
    node: process.version,
    platform: process.platform,
    arch: process.arch,
    loadAverage: [round(l1 ?? 0, 2), round(l5 ?? 0, 2), round(l15 ?? 0, 2)],
  };
}

export function describeMachine(m: Machine): string {
  return `${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB (${m.freeMemoryGiB} free), Node ${m.node} ${m.platform}/${m.arch}, load average ${m.loadAverage.join(' / ')}`;
}

export interface FlagSpec {
  /** Default value; flags with a number default must be given a positive number. */
  [name: string]: number | string | boolean | undefined;
}

/**
 * Parses `--name value` flags against their defaults: a number default makes a positive-number
 * flag, a string default (or undefined) a string flag, a boolean default a switch. Unknown flags
 * and bad numbers exit 2 with the flag named, like the CLI.
 */
export function parseFlags<T extends FlagSpec>(defaults: T, usage: string, argv = process.argv.slice(2)): T {
  const options: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const [name, d] of Object.entries(defaults)) options[name] = { type: typeof d === 'boolean' ? 'boolean' : 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values as Record<string, string | boolean | undefined>;
  } catch (err) {
    fail(`${(err as Error).message}\n${usage}`);
  }
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  const out: FlagSpec = { ...defaults };
  for (const [name, d] of Object.entries(defaults)) {
    const v = values[name];
    if (v === undefined) continue;
    if (typeof d === 'number') {
      const n = Number(v);
      if (!(Number.isFinite(n) && n > 0)) fail(`--${name} must be a positive number, got "${String(v)}"\n${usage}`);
      out[name] = n;
    } else {
      out[name] = v;
    }
  }
  return out as T;
}

export function fail(message: string): never {
  console.error(message);
  process.exit(2);
}

/** Nearest-rank percentile of an ascending array (p in 0..100); NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** Distribution of latencies (or any sample), rounded for printing. */
export function summarize(values: readonly number[], digits = 2): Summary {
  const s = [...values].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return {
    n: s.length,
    min: round(s[0] ?? Number.NaN, digits),
    p50: round(percentile(s, 50), digits),
    p90: round(percentile(s, 90), digits),
    p99: round(percentile(s, 99), digits),
    max: round(s[s.length - 1] ?? Number.NaN, digits),
    mean: round(mean, digits),
  };
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Milliseconds since an arbitrary origin, from the monotonic high-resolution clock. */
export const nowMs = (): number => performance.now();

/** 1234567.8 → "1,234,568" (whole numbers) or keeps `digits` decimals below 100. */
export function fmt(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return '—';
  return Math.abs(x) >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(digits);
}

export function table(head: string[], rows: (string | number)[][]): string {
  const t = new Table({ head, style: { head: [], border: [] } });
  for (const r of rows) t.push(r.map(String));
  return t.toString();
}

/** Small, fast, seeded PRNG (mulberry32): the same seed gives the same pod sequence everywhere. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** CPU seconds used so far: by this process (all its threads) and by each group of process ids. */
export interface CpuSnapshot {
  self: number;
  groups: Record<string, number>;
}

const CLOCK_TICKS = 100;
/** utime + stime in seconds and the parent, from a /proc …/stat file (a process's or a thread's); throws once it has gone. */
function readStat(path: string): { cpu: number; ppid: number } {
  const stat = readFileSync(path, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { cpu: (Number(f[11]) + Number(f[12])) / CLOCK_TICKS, ppid: Number(f[1]) };
}

/** utime + stime of a process in seconds, and its parent; null once it has gone (Linux /proc). */
function procStat(pid: number): { cpu: number; ppid: number } | null {
  try {
    return readStat(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
}

/** CPU seconds of each of this process's threads, by thread id (Linux /proc): where the worker process's CPU goes. */
export function threadCpu(): Map<number, { name: string; cpu: number }> {
  const out = new Map<number, { name: string; cpu: number }>();
  let tids: string[] = [];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    return out;
  }
  for (const t of tids) {
    try {
      const { cpu } = readStat(`/proc/self/task/${t}/stat`);
      const name = Number(t) === process.pid ? 'main' : readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim();
      out.set(Number(t), { name, cpu });
    } catch {
      // the thread ended
    }
  }
  return out;
}

/**
 * The threads that used the most CPU between two threadCpu() readings, in ms per unit of work:
 * "main" is the event loop (activities, the client, the SDK's polling); the workflow thread is the
 * busiest other "node" thread; "tokio-…" are the SDK core's.
 */
export function busiestThreads(
  a: ReturnType<typeof threadCpu>,
  b: ReturnType<typeof threadCpu>,
  units: number,
  top = 6,
): { thread: string; msPerUnit: number }[] {
  return [...b.entries()]
    .map(([tid, t]) => ({ thread: `${t.name}#${tid}`, cpu: t.cpu - (a.get(tid)?.cpu ?? 0) }))
    .sort((x, y) => y.cpu - x.cpu)
    .slice(0, top)
    .map((t) => ({ thread: t.thread, msPerUnit: units > 0 ? Math.round((t.cpu * 1000) / units) : 0 }));
}

/** Every process below `root` (children, their children, ...): e.g. the Temporal server the bench started. */
export function descendants(root: number): number[] {
  let pids: number[] = [];
  try {
    pids = readdirSync('/proc')
      .filter((d) => /^\d+$/.test(d))
      .map(Number);
  } catch {
    return [];
  }
  const parent = new Map(pids.map((p) => [p, procStat(p)?.ppid ?? 0]));
  const below = (p: number): boolean => {
    for (let q = parent.get(p); q !== undefined && q > 1; q = parent.get(q)) if (q === root) return true;
    return false;
  };
  return pids.filter(below);
}

export function cpuSnapshot(groups: Record<string, readonly number[]>): CpuSnapshot {
  const u = process.cpuUsage();
  return {
    self: (u.user + u.system) / 1e6,
    groups: Object.fromEntries(Object.entries(groups).map(([k, pids]) => [k, pids.reduce((a, p) => a + (procStat(p)?.cpu ?? 0), 0)])),
  };
}

/** CPU milliseconds per unit of work between two snapshots: this process ("worker") and each group. */
export function cpuPer(a: CpuSnapshot, b: CpuSnapshot, units: number): Record<string, number> {
  const per = (x: number) => (units > 0 ? Math.round((x * 1000) / units) : 0);
  const out: Record<string, number> = { worker: per(b.self - a.self) };
  for (const k of Object.keys(b.groups)) out[k] = per(b.groups[k]! - (a.groups[k] ?? 0));
  out.total = Object.values(out).reduce((x, y) => x + y, 0);
  return out;
}
