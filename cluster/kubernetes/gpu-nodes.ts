/**
 * The cluster's GPU nodes as govloop reads them (cluster/kubernetes/placement.ts readTopology):
 * which labels say where a node is, one node, and the whole reading. Types only, shared by
 * placement.ts and held.ts.
 */
import type { TopologyIndex } from '../../governance/topology';

export interface NodeLabelOptions {
  /** Default `govloop.io/gpu-type`; `null`: GPU types are not labelled (govloop cannot place). */
  gpuTypeLabel?: string | null;
  /** Default `govloop.io/rack`, falling back to `topology.kubernetes.io/zone`. */
  rackLabel?: string;
  /** Default `govloop.io/block`, falling back to `topology.kubernetes.io/region`. */
  blockLabel?: string;
  /** Default `govloop.io/nvlink-domain`. */
  nvlinkLabel?: string;
  /** Extended resource of MPS / time-sliced GPUs, when renamed (`nvidia.com/gpu.shared`). */
  sharedGpuResource?: string;
}

/** A GPU node as govloop sees it. */
export interface GpuNode {
  name: string;
  gpuType: string;
  /** Physical GPUs: allocatable `nvidia.com/gpu` / replicas. */
  gpus: number;
  /** Shared replicas per GPU the device plugin advertises (1: not shared). */
  replicas: number;
  sharing: { mps: boolean; timeslice: boolean };
  rack: string;
  block: string;
  /** NVLink domain id; the node's own name when it is a domain of one. */
  nvlink: string;
  /** MIG instances the node advertises, by profile (`3g.40gb` → 2): allocatable `nvidia.com/mig-<profile>`. */
  mig: Record<string, number>;
}

export interface TopologyReading {
  /** The nodes govloop may place on, sorted by name. */
  nodes: GpuNode[];
  /** Their topology index; null when govloop cannot place. */
  index: TopologyIndex | null;
  /** Nodes left out, and why (cordoned, NotReady, a name or GPU count the topology cannot hold). */
  skipped: { node: string; why: string }[];
  /** Labels that did not fit the topology and were worked around (a rack in two blocks …). */
  notes: string[];
  /** Why govloop cannot place on this cluster at all (the kube-scheduler then decides); null when it can. */
  unusable: string | null;
}
