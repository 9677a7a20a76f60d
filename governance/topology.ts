/**
 * The cluster model placement decides over: cluster → block (spine) → rack → node → GPU, with the
 * NVLink domain each node belongs to (the node itself, or a multi-node NVLink domain inside one
 * rack), the GPU types and the MIG profiles each type can be cut into, and which nodes allow
 * MIG, MPS or time-slicing. A zod schema for the config file, and an index built once per topology
 * that the placement functions (`governance/placement.ts`) walk. Pure: no I/O here.
 */
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { fieldErrors } from './intent';

/** Topology levels from the smallest domain to the largest. A node sits inside its NVLink domain. */
export const TOPOLOGY_LEVELS = ['node', 'nvlink', 'rack', 'block', 'cluster'] as const;
export const TopologyLevel = z.enum(TOPOLOGY_LEVELS);
export type TopologyLevel = z.infer<typeof TopologyLevel>;

const name = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/, 'letters, digits, ".", "_" and "-", starting and ending alphanumeric');

/**
 * One MIG profile: `3g.40gb` takes 3 of the GPU's compute slices and 4 of its memory slices.
 * Placement counts slices and ignores MIG's fixed start positions (see docs/decisions/0100).
 */
export const MigProfile = z.strictObject({
  name: z.string().regex(/^\d+g\.\d+gb$/, 'a MIG profile name such as 1g.10gb or 3g.40gb'),
  computeSlices: z.number().int().min(1).max(7),
  memorySlices: z.number().int().min(1).max(8),
});
export type MigProfile = z.infer<typeof MigProfile>;

export const GpuTypeSpec = z.strictObject({
  /** Memory of one GPU; absent for the anonymized models of a public trace. */
  memoryGb: z.number().positive().optional(),
  mig: z
    .strictObject({
      computeSlices: z.number().int().min(1).max(7).default(7),
      memorySlices: z.number().int().min(1).max(8).default(8),
      profiles: z.array(MigProfile).min(1),
    })
    .superRefine((mig, ctx) => {
      const seen = new Set<string>();
      mig.profiles.forEach((p, i) => {
        if (seen.has(p.name)) ctx.addIssue({ code: 'custom', path: ['profiles', i, 'name'], message: `duplicate MIG profile "${p.name}"` });
        seen.add(p.name);
        if (p.computeSlices > mig.computeSlices || p.memorySlices > mig.memorySlices) {
          ctx.addIssue({
            code: 'custom',
            path: ['profiles', i],
            message: `MIG profile ${p.name} (${p.computeSlices}c/${p.memorySlices}m) has more slices than the GPU has (${mig.computeSlices}c/${mig.memorySlices}m)`,
          });
        }
      });
    })
    .optional(),
});
export type GpuTypeSpec = z.infer<typeof GpuTypeSpec>;

export const TopologyNode = z.strictObject({
  name,
  gpuType: z.string().min(1),
  gpus: z.number().int().min(0).max(16),
  cpuMilli: z.number().int().positive(),
  memoryMib: z.number().int().positive(),
  /** The NVLink domain id; defaults to the node's name (a domain of one node). */
  nvlinkDomain: name.optional(),
  /** Which ways of sharing a GPU this node allows; whole GPUs are always allowed. */
  sharing: z
    .strictObject({ mig: z.boolean().default(false), mps: z.boolean().default(false), timeslice: z.boolean().default(false) })
    .default({ mig: false, mps: false, timeslice: false }),
});
export type TopologyNode = z.infer<typeof TopologyNode>;
export type TopologyNodeInput = z.input<typeof TopologyNode>;

export const Rack = z.strictObject({ name, nodes: z.array(TopologyNode).min(1) });
export const Block = z.strictObject({ name, racks: z.array(Rack).min(1) });

export const Topology = z
  .strictObject({
    cluster: name,
    gpuTypes: z.record(z.string().min(1), GpuTypeSpec),
    blocks: z.array(Block).min(1),
  })
  .superRefine((t, ctx) => {
    const seen = { block: new Set<string>(), rack: new Set<string>(), node: new Set<string>() };
    /** NVLink domain → where it was first seen, to keep each domain inside one rack and one GPU type. */
    const nvlink = new Map<string, { rack: string; gpuType: string }>();
    t.blocks.forEach((block, b) => {
      if (seen.block.has(block.name)) ctx.addIssue({ code: 'custom', path: ['blocks', b, 'name'], message: `duplicate block "${block.name}"` });
      seen.block.add(block.name);
      block.racks.forEach((rack, r) => {
        const rackPath = ['blocks', b, 'racks', r];
        if (seen.rack.has(rack.name)) ctx.addIssue({ code: 'custom', path: [...rackPath, 'name'], message: `duplicate rack "${rack.name}"` });
        seen.rack.add(rack.name);
        rack.nodes.forEach((node, n) => {
          const path = [...rackPath, 'nodes', n];
          if (seen.node.has(node.name)) ctx.addIssue({ code: 'custom', path: [...path, 'name'], message: `duplicate node "${node.name}"` });
          seen.node.add(node.name);
          const type = t.gpuTypes[node.gpuType];
          if (type === undefined) {
            ctx.addIssue({
              code: 'custom',
              path: [...path, 'gpuType'],
              message: `unknown GPU type "${node.gpuType}" (gpuTypes: ${Object.keys(t.gpuTypes).join(', ')})`,
            });
          } else if (node.sharing.mig && type.mig === undefined) {
            ctx.addIssue({ code: 'custom', path: [...path, 'sharing', 'mig'], message: `GPU type "${node.gpuType}" has no MIG profiles` });
          }
          const domain = node.nvlinkDomain ?? node.name;
          const first = nvlink.get(domain);
          if (first === undefined) nvlink.set(domain, { rack: rack.name, gpuType: node.gpuType });
          else if (first.rack !== rack.name || first.gpuType !== node.gpuType) {
            ctx.addIssue({
              code: 'custom',
              path: [...path, 'nvlinkDomain'],
              message: `NVLink domain "${domain}" spans racks or GPU types (first seen in rack ${first.rack} with ${first.gpuType})`,
            });
          }
        });
      });
    });
  });
export type Topology = z.infer<typeof Topology>;
export type TopologyInput = z.input<typeof Topology>;

export class TopologyError extends Error {
  constructor(
    readonly source: string,
    readonly errors: { path: string; message: string }[],
  ) {
    super(`invalid topology ${source}:\n${errors.map((e) => `  ${e.path}: ${e.message}`).join('\n')}`);
    this.name = 'TopologyError';
  }
}

/** Validates a topology document; errors name the source (a file) and the path inside it. */
export function parseTopology(doc: unknown, source = '(topology)'): Topology {
  const parsed = Topology.safeParse(doc);
  if (!parsed.success) throw new TopologyError(source, fieldErrors(parsed.error));
  return parsed.data;
}

export function parseTopologyYaml(text: string, source = '(topology)'): Topology {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new TopologyError(source, [{ path: '(document)', message: (err as Error).message }]);
  }
  return parseTopology(doc, source);
}

// ---------------------------------------------------------------------------------------------
// The index: flat arrays the placement functions walk without allocating.

export interface IndexedNode {
  readonly name: string;
  readonly index: number;
  /** Index into `TopologyIndex.gpuTypes`. */
  readonly type: number;
  readonly gpus: number;
  /** Global index of the node's first GPU; its GPUs are `gpuOffset … gpuOffset + gpus - 1`. */
  readonly gpuOffset: number;
  readonly cpuMilli: number;
  readonly memoryMib: number;
  readonly mig: boolean;
  readonly mps: boolean;
  readonly timeslice: boolean;
  /** Index of the node's domain at each level above it. */
  readonly nvlink: number;
  readonly rack: number;
  readonly block: number;
}

/** A topology domain: a node, an NVLink domain, a rack, a block or the cluster. */
export interface Domain {
  readonly level: TopologyLevel;
  readonly id: string;
  readonly index: number;
  /** Nodes inside, in topology order. */
  readonly nodes: readonly number[];
  /** Domains one level down (empty for a node). */
  readonly children: readonly number[];
}

export interface IndexedGpuType {
  readonly name: string;
  readonly memoryGb: number | null;
  readonly migComputeSlices: number;
  readonly migMemorySlices: number;
  readonly migProfiles: ReadonlyMap<string, MigProfile>;
}

export interface TopologyIndex {
  readonly cluster: string;
  readonly gpuTypes: readonly IndexedGpuType[];
  readonly gpuTypeIndex: ReadonlyMap<string, number>;
  readonly nodes: readonly IndexedNode[];
  readonly nodeIndex: ReadonlyMap<string, number>;
  /** Domains per level; `domains.node[i]` is node i, `domains.cluster` has one entry. */
  readonly domains: Readonly<Record<TopologyLevel, readonly Domain[]>>;
  readonly totalGpus: number;
  /** True when every NVLink domain is a single node: then the nvlink level adds nothing to node. */
  readonly nvlinkIsNode: boolean;
}

/** Builds the tree index (domain → nodes, domain → children) of a validated topology. */
export function buildTopologyIndex(topology: Topology): TopologyIndex {
  const gpuTypes: IndexedGpuType[] = Object.entries(topology.gpuTypes).map(([typeName, spec]) => ({
    name: typeName,
    memoryGb: spec.memoryGb ?? null,
    migComputeSlices: spec.mig?.computeSlices ?? 7,
    migMemorySlices: spec.mig?.memorySlices ?? 8,
    migProfiles: new Map((spec.mig?.profiles ?? []).map((p) => [p.name, p])),
  }));
  const gpuTypeIndex = new Map(gpuTypes.map((t, i) => [t.name, i]));
  const nodes: IndexedNode[] = [];
  const nodeIndex = new Map<string, number>();
  const nvlinkIds = new Map<string, number>();
  const nvlinkNodes: number[][] = [];
  const nvlinkRack: number[] = [];
  const racks: { id: string; nodes: number[]; nvlinks: number[] }[] = [];
  const blocks: { id: string; nodes: number[]; racks: number[] }[] = [];
  let gpuOffset = 0;
  for (const block of topology.blocks) {
    const b = blocks.length;
    blocks.push({ id: block.name, nodes: [], racks: [] });
    for (const rack of block.racks) {
      const r = racks.length;
      racks.push({ id: rack.name, nodes: [], nvlinks: [] });
      blocks[b]!.racks.push(r);
      for (const node of rack.nodes) {
        const domainId = node.nvlinkDomain ?? node.name;
        let nv = nvlinkIds.get(domainId);
        if (nv === undefined) {
          nv = nvlinkNodes.length;
          nvlinkIds.set(domainId, nv);
          nvlinkNodes.push([]);
          nvlinkRack.push(r);
          racks[r]!.nvlinks.push(nv);
        }
        const type = gpuTypeIndex.get(node.gpuType);
        if (type === undefined) throw new TopologyError(topology.cluster, [{ path: node.name, message: `unknown GPU type "${node.gpuType}"` }]);
        const i = nodes.length;
        nodes.push({
          name: node.name,
          index: i,
          type,
          gpus: node.gpus,
          gpuOffset,
          cpuMilli: node.cpuMilli,
          memoryMib: node.memoryMib,
          mig: node.sharing.mig,
          mps: node.sharing.mps,
          timeslice: node.sharing.timeslice,
          nvlink: nv,
          rack: r,
          block: b,
        });
        nodeIndex.set(node.name, i);
        nvlinkNodes[nv]!.push(i);
        racks[r]!.nodes.push(i);
        blocks[b]!.nodes.push(i);
        gpuOffset += node.gpus;
      }
    }
  }
  const nvlinkList = [...nvlinkIds.keys()];
  const domains: Record<TopologyLevel, Domain[]> = {
    node: nodes.map((n) => ({ level: 'node', id: n.name, index: n.index, nodes: [n.index], children: [] })),
    nvlink: nvlinkList.map((id, i) => ({ level: 'nvlink', id, index: i, nodes: nvlinkNodes[i]!, children: nvlinkNodes[i]! })),
    rack: racks.map((r, i) => ({ level: 'rack', id: r.id, index: i, nodes: r.nodes, children: r.nvlinks })),
    block: blocks.map((b, i) => ({ level: 'block', id: b.id, index: i, nodes: b.nodes, children: b.racks })),
    cluster: [{ level: 'cluster', id: topology.cluster, index: 0, nodes: nodes.map((n) => n.index), children: blocks.map((_, i) => i) }],
  };
  return {
    cluster: topology.cluster,
    gpuTypes,
    gpuTypeIndex,
    nodes,
    nodeIndex,
    domains,
    totalGpus: gpuOffset,
    nvlinkIsNode: nvlinkNodes.every((n) => n.length === 1),
  };
}

/** The level below `level` (the level its children are at); undefined for node. */
export function childLevel(level: TopologyLevel): TopologyLevel | undefined {
  const i = TOPOLOGY_LEVELS.indexOf(level);
  return i > 0 ? TOPOLOGY_LEVELS[i - 1] : undefined;
}

/** The domain at `level` that contains node `node`. */
export function domainOfNode(index: TopologyIndex, level: TopologyLevel, node: number): Domain {
  const n = index.nodes[node]!;
  const i = level === 'node' ? node : level === 'nvlink' ? n.nvlink : level === 'rack' ? n.rack : level === 'block' ? n.block : 0;
  return index.domains[level][i]!;
}

// ---------------------------------------------------------------------------------------------
// The default cluster: the same topology config/cluster.yaml ships (a test checks they agree).

/** H100 and A100 80GB: 7 compute slices, 8 memory slices, NVIDIA's MIG profiles. */
export const MIG_80GB: MigProfile[] = [
  { name: '1g.10gb', computeSlices: 1, memorySlices: 1 },
  { name: '1g.20gb', computeSlices: 1, memorySlices: 2 },
  { name: '2g.20gb', computeSlices: 2, memorySlices: 2 },
  { name: '3g.40gb', computeSlices: 3, memorySlices: 4 },
  { name: '4g.40gb', computeSlices: 4, memorySlices: 4 },
  { name: '7g.80gb', computeSlices: 7, memorySlices: 8 },
];

/**
 * The default simulated cluster, 320 GPUs: block-0 holds 24 H100×8 nodes in 4 racks of 6, each
 * node its own NVLink domain; block-1 holds 16 A100×8 nodes in 2 racks of 8. The last H100 rack
 * allows MIG; the second A100 rack allows MPS and time-slicing; the first A100 rack allows MIG.
 */
export function defaultTopology(): Topology {
  const node = (n: string, gpuType: string, sharing: TopologyNodeInput['sharing']): TopologyNodeInput => ({
    name: n,
    gpuType,
    gpus: 8,
    cpuMilli: 192_000,
    memoryMib: 2_097_152,
    nvlinkDomain: n,
    sharing,
  });
  const none = { mig: false, mps: false, timeslice: false };
  const h100Racks = Array.from({ length: 4 }, (_, r) => ({
    name: `h100-rack-${r}`,
    nodes: Array.from({ length: 6 }, (_, i) => node(`h100-${String(r * 6 + i).padStart(2, '0')}`, 'H100', r === 3 ? { ...none, mig: true } : none)),
  }));
  const a100Racks = Array.from({ length: 2 }, (_, r) => ({
    name: `a100-rack-${r}`,
    nodes: Array.from({ length: 8 }, (_, i) =>
      node(`a100-${String(r * 8 + i).padStart(2, '0')}`, 'A100', r === 0 ? { ...none, mig: true } : { ...none, mps: true, timeslice: true }),
    ),
  }));
  return parseTopology(
    {
      cluster: 'sim',
      gpuTypes: {
        H100: { memoryGb: 80, mig: { computeSlices: 7, memorySlices: 8, profiles: MIG_80GB } },
        A100: { memoryGb: 80, mig: { computeSlices: 7, memorySlices: 8, profiles: MIG_80GB } },
      },
      blocks: [
        { name: 'block-0', racks: h100Racks },
        { name: 'block-1', racks: a100Racks },
      ],
    } satisfies TopologyInput,
    'defaultTopology()',
  );
}
