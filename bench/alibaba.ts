/**
 * Loader for the Alibaba GPU cluster trace (clusterdata, cluster-trace-gpu-v2023, the "openb"
 * files the FGD paper, USENIX ATC '23, evaluates on):
 *
 *   openb_node_list_gpu_node.csv  sn,cpu_milli,memory_mib,gpu,model
 *   openb_pod_list_*.csv          name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,
 *                                 creation_time,deletion_time,scheduled_time
 *
 * `gpu_milli` is the share of one GPU (×1000) a pod with num_gpu = 1 asks for; 1000 means the whole
 * GPU. `gpu_spec` lists the GPU models a pod accepts ("V100M16|V100M32"), empty for any. Pods
 * with num_gpu = 0 need CPU and memory only.
 *
 * The trace has no topology, so nodes are grouped by one deterministic rule (docs/decisions/0100):
 *   - NVLink domain: every node is its own domain. An 8-GPU node (G2, G3, 8-GPU V100) is one
 *     NVLink island; on the 1-, 2- and 4-GPU nodes (A10, P100, T4, smaller V100) the GPUs are
 *     PCIe-attached, and the node is still the smallest domain there is.
 *   - Rack: nodes of one GPU model, sorted by `sn`, cut into runs of 8 (`<model>-r00`, …).
 *   - Block: racks of one model, in order, cut into runs of 8 (`<model>-b0`, …).
 *   Models are taken in alphabetical order. Every node allows MPS and time-slicing (the trace's
 *   shared pods run on every model); none has MIG.
 */
import { readFileSync } from 'node:fs';
import type { PlacementRequest, WorkloadProfile } from '../governance/placement';
import { type Topology, type TopologyInput, parseTopology } from '../governance/topology';
import { rng } from './lib';

export const TRACE_DIR = '/work/shared/traces/alibaba-gpu-v2023';
export const DEFAULT_NODES = `${TRACE_DIR}/openb_node_list_gpu_node.csv`;
export const DEFAULT_PODS = `${TRACE_DIR}/openb_pod_list_default.csv`;

export interface AlibabaNode {
  sn: string;
  cpuMilli: number;
  memoryMib: number;
  gpus: number;
  model: string;
}

export interface AlibabaPod {
  name: string;
  cpuMilli: number;
  memoryMib: number;
  numGpu: number;
  gpuMilli: number;
  /** Accepted GPU models; empty for any. */
  gpuSpec: string[];
  qos: string;
  phase: string;
  creationTime: number;
  deletionTime: number;
  scheduledTime: number;
}

/** Parses a header + rows CSV without quoting (the trace has none) into records by column name. */
function readCsv(path: string, required: string[]): Record<string, string>[] {
  const lines = readFileSync(path, 'utf8')
    .split(/\r?\n/)
    .filter((l) => l.trim() !== '');
  const header = (lines.shift() ?? '').split(',').map((h) => h.trim());
  const missing = required.filter((c) => !header.includes(c));
  if (missing.length > 0) throw new Error(`${path}: missing columns ${missing.join(', ')} (header: ${header.join(',')})`);
  return lines.map((line, i) => {
    const cells = line.split(',');
    if (cells.length !== header.length) throw new Error(`${path}:${i + 2}: ${cells.length} cells, header has ${header.length}`);
    return Object.fromEntries(header.map((h, j) => [h, cells[j]!.trim()]));
  });
}

function int(path: string, row: Record<string, string>, col: string): number {
  const v = Number(row[col]);
  if (!Number.isFinite(v)) throw new Error(`${path}: column ${col} is not a number: "${row[col]}"`);
  return v;
}

export function loadNodes(path = DEFAULT_NODES): AlibabaNode[] {
  return readCsv(path, ['sn', 'cpu_milli', 'memory_mib', 'gpu', 'model']).map((r) => ({
    sn: r.sn!,
    cpuMilli: int(path, r, 'cpu_milli'),
    memoryMib: int(path, r, 'memory_mib'),
    gpus: int(path, r, 'gpu'),
    model: r.model!,
  }));
}

export function loadPods(path = DEFAULT_PODS): AlibabaPod[] {
  // multigpu50 has only the first five columns; gpu_spec and the times are optional.
  return readCsv(path, ['name', 'cpu_milli', 'memory_mib', 'num_gpu', 'gpu_milli']).map((r) => ({
    name: r.name!,
    cpuMilli: int(path, r, 'cpu_milli'),
    memoryMib: int(path, r, 'memory_mib'),
    numGpu: int(path, r, 'num_gpu'),
    gpuMilli: int(path, r, 'gpu_milli'),
    gpuSpec: [...new Set((r.gpu_spec ?? '').split('|').filter((s) => s !== ''))].sort(),
    qos: r.qos ?? '',
    phase: r.pod_phase ?? '',
    creationTime: Number(r.creation_time ?? 0),
    deletionTime: Number(r.deletion_time ?? 0),
    scheduledTime: Number(r.scheduled_time ?? 0),
  }));
}

/** Memory per GPU where the model is public; G2 and G3 are anonymized in the trace. */
const MODEL_MEMORY_GB: Record<string, number> = { A10: 24, P100: 16, T4: 16, V100M16: 16, V100M32: 32 };

export const RACK_SIZE = 8;
export const BLOCK_SIZE = 8;

/** The trace's nodes as a topology, by the grouping rule in this file's header. */
export function alibabaTopology(nodes: readonly AlibabaNode[], cluster = 'alibaba-openb'): Topology {
  const gpuNodes = nodes.filter((n) => n.gpus > 0);
  const models = [...new Set(gpuNodes.map((n) => n.model))].sort();
  const blocks: TopologyInput['blocks'] = [];
  for (const model of models) {
    const ofModel = gpuNodes.filter((n) => n.model === model).sort((a, b) => (a.sn < b.sn ? -1 : a.sn > b.sn ? 1 : 0));
    const racks: TopologyInput['blocks'][number]['racks'] = [];
    for (let i = 0; i < ofModel.length; i += RACK_SIZE) {
      racks.push({
        name: `${model}-r${String(racks.length).padStart(2, '0')}`,
        nodes: ofModel.slice(i, i + RACK_SIZE).map((n) => ({
          name: n.sn,
          gpuType: model,
          gpus: n.gpus,
          cpuMilli: n.cpuMilli,
          memoryMib: n.memoryMib,
          nvlinkDomain: n.sn,
          sharing: { mig: false, mps: true, timeslice: true },
        })),
      });
    }
    for (let i = 0; i < racks.length; i += BLOCK_SIZE) blocks.push({ name: `${model}-b${i / BLOCK_SIZE}`, racks: racks.slice(i, i + BLOCK_SIZE) });
  }
  const gpuTypes = Object.fromEntries(models.map((m) => [m, MODEL_MEMORY_GB[m] === undefined ? {} : { memoryGb: MODEL_MEMORY_GB[m] }]));
  return parseTopology({ cluster, gpuTypes, blocks } satisfies TopologyInput, 'alibaba trace nodes');
}

export type PodTopology = 'node' | 'spread';

/**
 * A pod as a placement request. A Kubernetes pod cannot span nodes, so by default a multi-GPU pod
 * must fit on one node ({ node, required }), as in the FGD paper; with 'spread' it may span nodes
 * and only prefers one NVLink domain (a gang of single-GPU workers).
 */
export function podRequest(pod: AlibabaPod, topology: PodTopology = 'node'): PlacementRequest {
  const base: PlacementRequest = { id: pod.name, cpuMilli: pod.cpuMilli, memoryMib: pod.memoryMib };
  if (pod.gpuSpec.length > 0) base.gpuType = pod.gpuSpec;
  if (pod.numGpu === 0) return { id: pod.name, cpuMilli: pod.cpuMilli, memoryMib: pod.memoryMib };
  if (pod.numGpu === 1 && pod.gpuMilli > 0 && pod.gpuMilli < 1000) return { ...base, gpuMilli: pod.gpuMilli };
  return { ...base, gpus: pod.numGpu, topology: topology === 'node' ? { level: 'node', mode: 'required' } : { level: 'nvlink', mode: 'preferred' } };
}

/** GPUs a pod asks for: num_gpu, or its share of one GPU. */
export function podGpus(pod: AlibabaPod): number {
  if (pod.numGpu === 1 && pod.gpuMilli > 0 && pod.gpuMilli < 1000) return pod.gpuMilli / 1000;
  return pod.numGpu;
}

/**
 * The expected workload for the fragmentation measure: every distinct pod shape in the list
 * (CPU, memory, GPUs or share, accepted models), weighted by how often it occurs — the task
 * distribution FGD measures fragmentation against.
 */
export function alibabaWorkload(pods: readonly AlibabaPod[]): WorkloadProfile {
  const classes = new Map<string, { weight: number; pod: AlibabaPod }>();
  for (const p of pods) {
    if (p.numGpu === 0) continue;
    const key = `${p.cpuMilli}|${p.memoryMib}|${p.numGpu}|${p.gpuMilli}|${p.gpuSpec.join('|')}`;
    const c = classes.get(key);
    if (c) c.weight++;
    else classes.set(key, { weight: 1, pod: p });
  }
  return [...classes.values()].map(({ weight, pod }) => {
    const r = podRequest(pod);
    return { weight, gpus: r.gpus, gpuMilli: r.gpuMilli, gpuType: r.gpuType, cpuMilli: r.cpuMilli, memoryMib: r.memoryMib };
  });
}

/**
 * FGD's arrival process: pods drawn uniformly with replacement from the list, no departures,
 * until the GPUs they ask for (shares counted by their fraction) reach the cluster's capacity.
 */
export function samplePods(pods: readonly AlibabaPod[], capacityGpus: number, seed: number): number[] {
  const next = rng(seed);
  const seq: number[] = [];
  let asked = 0;
  while (asked < capacityGpus) {
    const i = Math.floor(next() * pods.length);
    seq.push(i);
    asked += podGpus(pods[i]!);
  }
  return seq;
}
