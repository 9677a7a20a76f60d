import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type Assignment,
  type PlaceResult,
  type Placement,
  type PlacementReasonCode,
  type PlacementRequest,
  type PlacementState,
  type WorkloadProfile,
  PlacementStateError,
  audit,
  bestFit,
  commit,
  emptyState,
  firstFit,
  fragmentation,
  heldPlacement,
  place,
  release,
  usage,
} from '../../governance/placement';
import {
  MIG_80GB,
  TOPOLOGY_LEVELS,
  type TopologyIndex,
  type TopologyInput,
  type TopologyLevel,
  buildTopologyIndex,
  parseTopology,
} from '../../governance/topology';

// ---------------------------------------------------------------------------------------------
// Fluent builders for hand-built topologies

type NodeInput = TopologyInput['blocks'][number]['racks'][number]['nodes'][number];

class NodeBuilder {
  private n: NodeInput;
  constructor(name: string) {
    this.n = { name, gpuType: 'H100', gpus: 4, cpuMilli: 64_000, memoryMib: 262_144, sharing: { mig: false, mps: false, timeslice: false } };
  }
  gpus(k: number): this {
    this.n.gpus = k;
    return this;
  }
  type(t: string): this {
    this.n.gpuType = t;
    return this;
  }
  cpu(milli: number): this {
    this.n.cpuMilli = milli;
    return this;
  }
  mem(mib: number): this {
    this.n.memoryMib = mib;
    return this;
  }
  nvlink(domain: string): this {
    this.n.nvlinkDomain = domain;
    return this;
  }
  mig(): this {
    this.n.sharing = { ...this.n.sharing, mig: true };
    return this;
  }
  mps(): this {
    this.n.sharing = { ...this.n.sharing, mps: true };
    return this;
  }
  timeslice(): this {
    this.n.sharing = { ...this.n.sharing, timeslice: true };
    return this;
  }
  build(): NodeInput {
    return { ...this.n };
  }
}
const aNode = (name: string) => new NodeBuilder(name);

class TopologyBuilder {
  private blocks: TopologyInput['blocks'] = [];
  private types: TopologyInput['gpuTypes'] = {
    H100: { memoryGb: 80, mig: { computeSlices: 7, memorySlices: 8, profiles: MIG_80GB } },
    T4: { memoryGb: 16 },
  };
  /** Adds a rack to the named block (created on first use). */
  rack(block: string, rack: string, ...nodes: NodeBuilder[]): this {
    let b = this.blocks.find((x) => x.name === block);
    if (b === undefined) {
      b = { name: block, racks: [] };
      this.blocks.push(b);
    }
    b.racks.push({ name: rack, nodes: nodes.map((n) => n.build()) });
    return this;
  }
  index(): TopologyIndex {
    return buildTopologyIndex(parseTopology({ cluster: 'test', gpuTypes: this.types, blocks: this.blocks }));
  }
}
const aTopology = () => new TopologyBuilder();

/** `count` nodes named `<prefix>n<i>`, configured alike; `pairs` groups them two by two into NVLink domains. */
function nodes(prefix: string, count: number, configure: (b: NodeBuilder, i: number) => NodeBuilder = (b) => b): NodeBuilder[] {
  return Array.from({ length: count }, (_, i) => configure(aNode(`${prefix}n${i}`), i));
}
const pairs = (prefix: string) => (b: NodeBuilder, i: number) => b.nvlink(`${prefix}nv${i >> 1}`);

/**
 * Two blocks of 4-GPU nodes. b0: racks r0, r1, each 4 nodes in two NVLink domains of 2 nodes
 * (8 GPUs per domain, 16 per rack). b1: rack r2, 4 nodes, each its own NVLink domain. 48 GPUs.
 */
const nvlinkCluster = () =>
  aTopology()
    .rack('b0', 'r0', ...nodes('r0', 4, pairs('r0')))
    .rack('b0', 'r1', ...nodes('r1', 4, pairs('r1')))
    .rack('b1', 'r2', ...nodes('r2', 4))
    .index();

/** Single-node NVLink domains of 8 GPUs: b0 has r0 (2 nodes) and r1 (2 nodes); b1 has r2 (2 nodes of T4). */
const mixedCluster = () =>
  aTopology()
    .rack('b0', 'r0', ...nodes('r0', 2, (b) => b.gpus(8)))
    .rack('b0', 'r1', ...nodes('r1', 2, (b) => b.gpus(8)))
    .rack('b1', 'r2', ...nodes('r2', 2, (b) => b.gpus(8).type('T4')))
    .index();

/** One rack of MIG nodes (2 × 2 H100) and one of sharing nodes: MPS-only, timeslice-only, both. */
const sharingCluster = () =>
  aTopology()
    .rack('b0', 'mig', aNode('m0').gpus(2).mig(), aNode('m1').gpus(2).mig())
    .rack('b0', 'share', aNode('mps0').gpus(2).mps(), aNode('ts0').gpus(2).timeslice(), aNode('both0').gpus(2).mps().timeslice())
    .index();

// ---------------------------------------------------------------------------------------------
// Helpers

const held = (...assignments: Assignment[]): Placement => heldPlacement(assignments);
const whole = (node: string, ...gpus: number[]): Assignment => ({ kind: 'whole', node, gpus, cpuMilli: 0, memoryMib: 0 });

function stateWith(index: TopologyIndex, busy: Assignment[] = [], workload?: WorkloadProfile): PlacementState {
  let st = emptyState(index, workload === undefined ? {} : { workload });
  for (const a of busy) st = commit(st, held(a));
  return st;
}

/** Places the requests in order, committing each; throws if one is refused. */
function placeAll(st: PlacementState, requests: PlacementRequest[]): { state: PlacementState; placements: Placement[] } {
  const placements: Placement[] = [];
  for (const r of requests) {
    const p = place(st, r);
    if (!p.placed) throw new Error(`set-up request ${JSON.stringify(r)} refused: ${p.reason.message}`);
    st = commit(st, p);
    placements.push(p);
  }
  return { state: st, placements };
}

const nodesOf = (p: PlaceResult) => (p.placed ? p.assignments.map((a) => a.node).sort() : []);
const gpuCount = (p: Placement) => p.assignments.reduce((s, a) => s + (a.kind === 'whole' ? a.gpus.length : 0), 0);
const rank = (l: TopologyLevel) => TOPOLOGY_LEVELS.indexOf(l);

// ---------------------------------------------------------------------------------------------
// Gang placement on whole GPUs

interface GangCase {
  name: string;
  index: () => TopologyIndex;
  busy?: Assignment[];
  request: PlacementRequest;
  wantLevel?: TopologyLevel;
  wantDomain?: string;
  wantNodes?: string[];
  wantSatisfied?: boolean;
  /** Prefixes of explanation.whyNotSmaller, in order. */
  wantWhyNot?: string[];
  wantRefused?: PlacementReasonCode;
}

const gangCases: GangCase[] = [
  {
    name: 'an 8-GPU job lands in one free NVLink domain',
    index: nvlinkCluster,
    request: { gpus: 8 },
    wantLevel: 'nvlink',
    wantDomain: 'r0nv0',
    wantNodes: ['r0n0', 'r0n1'],
    wantWhyNot: ['node: no node can take 8 GPUs'],
  },
  {
    name: 'an 8-GPU job skips an NVLink domain with one GPU taken',
    index: nvlinkCluster,
    busy: [whole('r0n0', 0)],
    request: { gpus: 8 },
    wantLevel: 'nvlink',
    wantDomain: 'r0nv1',
    wantNodes: ['r0n2', 'r0n3'],
  },
  {
    name: 'an 8-GPU job goes to a rack when no NVLink domain is whole, and says why',
    index: nvlinkCluster,
    busy: [whole('r0n0', 0), whole('r0n2', 0), whole('r1n0', 0), whole('r1n2', 0)],
    request: { gpus: 8 },
    wantLevel: 'rack',
    wantWhyNot: ['node: no node can take 8 GPUs', 'nvlink: no NVLink domain can take 8 GPUs (any type), 0m CPU, 0 MiB (at most 7)'],
  },
  {
    name: 'an 8-GPU job that requires an NVLink domain is refused rather than spread',
    index: nvlinkCluster,
    busy: [whole('r0n0', 0), whole('r0n2', 0), whole('r1n0', 0), whole('r1n2', 0)],
    request: { gpus: 8, topology: { level: 'nvlink', mode: 'required' } },
    wantRefused: 'TOPOLOGY_UNSATISFIABLE',
  },
  {
    name: 'a 16-GPU job lands in one rack',
    index: nvlinkCluster,
    request: { gpus: 16 },
    wantLevel: 'rack',
    wantNodes: ['r0n0', 'r0n1', 'r0n2', 'r0n3'],
    wantWhyNot: ['node:', 'nvlink:'],
  },
  {
    name: 'a 16-GPU job takes the whole rack, not the one with a GPU taken',
    index: nvlinkCluster,
    busy: [whole('r0n3', 3)],
    request: { gpus: 16 },
    wantLevel: 'rack',
    wantDomain: 'r1',
  },
  {
    name: 'a 12-GPU job picks the rack with the least room that holds it (best fit)',
    index: nvlinkCluster,
    busy: [whole('r0n0', 0)],
    request: { gpus: 12 },
    wantLevel: 'rack',
    wantDomain: 'r0',
  },
  {
    name: 'a 12-GPU job in a rack takes one NVLink domain whole and the rest on one node',
    index: nvlinkCluster,
    request: { gpus: 12 },
    wantLevel: 'rack',
    wantDomain: 'r0',
    wantNodes: ['r0n0', 'r0n1', 'r0n2'],
  },
  {
    name: 'a 24-GPU job is spread over a block when it only prefers a rack, and says so',
    index: nvlinkCluster,
    request: { gpus: 24, topology: { level: 'rack', mode: 'preferred' } },
    wantLevel: 'block',
    wantDomain: 'b0',
    wantSatisfied: false,
    wantWhyNot: ['node:', 'nvlink:', 'rack: no rack can take 24 GPUs'],
  },
  {
    name: 'a 24-GPU job that requires a rack is never spread wider',
    index: nvlinkCluster,
    request: { gpus: 24, topology: { level: 'rack', mode: 'required' } },
    wantRefused: 'TOPOLOGY_UNSATISFIABLE',
  },
  {
    name: 'a job preferring an NVLink domain that gets one is satisfied',
    index: nvlinkCluster,
    request: { gpus: 6, topology: { level: 'nvlink', mode: 'preferred' } },
    wantLevel: 'nvlink',
    wantSatisfied: true,
  },
  {
    name: 'a 40-GPU job spans the cluster',
    index: nvlinkCluster,
    request: { gpus: 40 },
    wantLevel: 'cluster',
    wantDomain: 'test',
  },
  { name: 'a 49-GPU job exceeds the cluster', index: nvlinkCluster, request: { gpus: 49 }, wantRefused: 'INSUFFICIENT_CAPACITY' },
  {
    name: 'a 4-GPU job fills the half-used NVLink domain, keeping whole ones whole',
    index: nvlinkCluster,
    busy: [whole('r0n2', 0, 1, 2, 3)],
    request: { gpus: 4 },
    wantLevel: 'node',
    wantNodes: ['r0n3'],
  },
  {
    name: 'a 2-GPU job goes to the node with 2 GPUs left (best fit)',
    index: nvlinkCluster,
    busy: [whole('r1n1', 0), whole('r2n2', 0, 1)],
    request: { gpus: 2 },
    wantLevel: 'node',
    wantNodes: ['r2n2'],
  },
  {
    name: 'gpuType T4 lands on a T4 node only',
    index: mixedCluster,
    request: { gpus: 4, gpuType: 'T4' },
    wantLevel: 'node',
    wantDomain: 'r2n0',
  },
  {
    name: 'gpuType T4 for 16 GPUs is refused: only 16 T4 exist and 2 are taken',
    index: mixedCluster,
    busy: [whole('r2n0', 0, 1)],
    request: { gpus: 16, gpuType: 'T4' },
    wantRefused: 'INSUFFICIENT_CAPACITY',
  },
  {
    name: 'a list of GPU types allows either',
    index: mixedCluster,
    busy: [
      whole('r0n0', 0, 1, 2, 3, 4, 5, 6, 7),
      whole('r0n1', 0, 1, 2, 3, 4, 5, 6, 7),
      whole('r1n0', 0, 1, 2, 3, 4, 5, 6, 7),
      whole('r1n1', 0, 1, 2, 3, 4, 5, 6, 7),
    ],
    request: { gpus: 8, gpuType: ['H100', 'T4'] },
    wantLevel: 'node',
    wantNodes: ['r2n0'],
  },
  { name: 'an unknown GPU type is refused by name', index: mixedCluster, request: { gpus: 1, gpuType: 'B200' }, wantRefused: 'GPU_TYPE_UNKNOWN' },
  {
    name: 'CPU is honoured: a node without the CPU is passed over',
    index: () => aTopology().rack('b0', 'r0', aNode('small').cpu(4_000), aNode('big').cpu(64_000)).index(),
    // Best fit alone would pick "small" (2 GPUs free against 4).
    busy: [whole('small', 0, 1)],
    request: { gpus: 1, cpuMilli: 8_000 },
    wantNodes: ['big'],
  },
  {
    name: 'memory is honoured: nowhere has 300 GiB',
    index: () => aTopology().rack('b0', 'r0', aNode('a'), aNode('b')).index(),
    request: { gpus: 1, memoryMib: 300 * 1024 },
    wantRefused: 'INSUFFICIENT_CAPACITY',
  },
  {
    name: 'a gang charges each node its share of CPU: 8 GPUs at 80 cores do not fit two 32-core nodes of 4 GPUs',
    index: () =>
      aTopology()
        .rack('b0', 'r0', ...nodes('r0', 2, (b) => b.cpu(32_000).nvlink('nv')))
        .index(),
    request: { gpus: 8, cpuMilli: 80_000 },
    wantRefused: 'INSUFFICIENT_CAPACITY',
  },
  {
    name: 'an invalid request is refused, not thrown',
    index: nvlinkCluster,
    request: { gpus: 0 },
    wantRefused: 'INVALID_REQUEST',
  },
];

describe('place: whole-GPU gangs', () => {
  it.each(gangCases)('$name', (c) => {
    const index = c.index();
    const st = stateWith(index, c.busy);
    const p = place(st, c.request);
    if (c.wantRefused !== undefined) {
      expect(p.placed, JSON.stringify(p)).toBe(false);
      if (!p.placed) expect(p.reason.code).toBe(c.wantRefused);
      return;
    }
    expect(p.placed, p.placed ? '' : p.reason.message).toBe(true);
    if (!p.placed) return;
    expect(gpuCount(p)).toBe(c.request.gpus);
    if (c.wantLevel !== undefined) expect(p.domain.level).toBe(c.wantLevel);
    if (c.wantDomain !== undefined) expect(p.domain.id).toBe(c.wantDomain);
    if (c.wantNodes !== undefined) expect(nodesOf(p)).toEqual(c.wantNodes);
    if (c.wantSatisfied !== undefined) expect(p.explanation.constraint.satisfied).toBe(c.wantSatisfied);
    if (c.wantWhyNot !== undefined) {
      expect(p.explanation.whyNotSmaller).toHaveLength(c.wantWhyNot.length);
      c.wantWhyNot.forEach((w, i) => expect(p.explanation.whyNotSmaller[i]).toContain(w));
    }
    // The placement holds: committing it succeeds and nothing is double-booked.
    const after = commit(st, p);
    expect(audit(index, [p]).doubleBookedGpus).toBe(0);
    expect(p.explanation.fragmentationAfter).toBeCloseTo(fragmentation(after), 9);
    expect(p.explanation.summary).toContain(p.domain.id);
  });

  it('explains a refusal: the widest level, the largest domain fit and the cluster fit', () => {
    const st = stateWith(nvlinkCluster(), [whole('r0n0', 0)]);
    const p = place(st, { gpus: 20, topology: { level: 'rack', mode: 'required' } });
    expect(p.placed).toBe(false);
    if (p.placed) return;
    expect(p.reason).toMatchObject({ code: 'TOPOLOGY_UNSATISFIABLE', level: 'rack', largestFit: 16, clusterFit: 47 });
    expect(p.reason.message).toContain('required rack');
  });

  it('a preferred-level placement that is met says nothing about spreading', () => {
    const p = place(stateWith(nvlinkCluster()), { gpus: 8, topology: { level: 'rack', mode: 'preferred' } });
    expect(p.placed && p.explanation.summary).not.toMatch(/not met/);
  });

  it('a preferred-level placement that is not met says so in the summary', () => {
    const p = place(stateWith(nvlinkCluster()), { gpus: 24, topology: { level: 'nvlink', mode: 'preferred' } });
    expect(p.placed && p.explanation.summary).toMatch(/preferred NVLink domain not met/);
  });

  it('the baselines honour a required level too', () => {
    const st = stateWith(nvlinkCluster());
    for (const policy of [firstFit, bestFit]) {
      const p = policy(st, { gpus: 24, topology: { level: 'rack', mode: 'required' } });
      expect(p.placed).toBe(false);
      const q = policy(st, { gpus: 8, topology: { level: 'nvlink', mode: 'required' } });
      expect(q.placed && q.domain.level).toBe('nvlink');
    }
  });

  it('never changes the state it is given', () => {
    const st = stateWith(nvlinkCluster());
    const before = usage(st);
    const p = place(st, { gpus: 8 });
    expect(p.placed).toBe(true);
    expect(usage(st)).toEqual(before);
  });
});

// ---------------------------------------------------------------------------------------------
// Fractional requests: MIG slices and shared GPUs

interface ShareCase {
  name: string;
  /** Placed (and committed) in order before the request. */
  before?: PlacementRequest[];
  request: PlacementRequest;
  /** Node and GPU index the request lands on, as "node/gpu". */
  wantGpu?: string;
  /** The request lands on the same GPU as the `before` request with this index. */
  wantSameGpuAs?: number;
  /** The request lands on a GPU none of the `before` requests use. */
  wantFreshGpu?: boolean;
  wantRefused?: PlacementReasonCode;
}

const gpuOf = (p: Placement) => `${p.assignments[0]!.node}/${p.assignments[0]!.gpus[0]}`;

const shareCases: ShareCase[] = [
  { name: 'a MIG slice lands on a MIG node', request: { migProfile: '1g.10gb' }, wantGpu: 'm0/0' },
  { name: 'a second MIG slice packs onto the GPU already cut', before: [{ migProfile: '3g.40gb' }], request: { migProfile: '4g.40gb' }, wantSameGpuAs: 0 },
  {
    name: 'seven 1g.10gb fill one GPU before another is cut',
    before: Array.from({ length: 6 }, () => ({ migProfile: '1g.10gb' })),
    request: { migProfile: '1g.10gb' },
    wantSameGpuAs: 0,
  },
  {
    name: 'the eighth 1g.10gb cuts a new GPU',
    before: Array.from({ length: 7 }, () => ({ migProfile: '1g.10gb' })),
    request: { migProfile: '1g.10gb' },
    wantFreshGpu: true,
  },
  {
    name: 'MIG memory slices count too: 4 × 1g.20gb fill 8 memory slices',
    before: Array.from({ length: 4 }, () => ({ migProfile: '1g.20gb' })),
    request: { migProfile: '1g.10gb' },
    wantFreshGpu: true,
  },
  {
    name: 'a MIG slice picks the fullest GPU that still fits (best fit)',
    before: [{ migProfile: '4g.40gb' }, { migProfile: '4g.40gb' }, { migProfile: '2g.20gb' }],
    request: { migProfile: '1g.10gb' },
    wantSameGpuAs: 2,
  },
  { name: 'an unknown MIG profile is refused', request: { migProfile: '9g.90gb' }, wantRefused: 'MIG_PROFILE_UNKNOWN' },
  { name: 'a MIG profile on a type without MIG is refused', request: { migProfile: '1g.10gb', gpuType: 'T4' }, wantRefused: 'MIG_PROFILE_UNKNOWN' },
  { name: 'an MPS share lands on an MPS node', request: { gpuMilli: 300, sharing: 'mps' }, wantGpu: 'mps0/0' },
  {
    name: 'MPS shares pack onto one GPU',
    before: [
      { gpuMilli: 300, sharing: 'mps' },
      { gpuMilli: 300, sharing: 'mps' },
    ],
    request: { gpuMilli: 400, sharing: 'mps' },
    wantSameGpuAs: 0,
  },
  {
    name: 'a share that does not fit the used GPU takes a fresh one',
    before: [{ gpuMilli: 700, sharing: 'mps' }],
    request: { gpuMilli: 400, sharing: 'mps' },
    wantFreshGpu: true,
  },
  {
    name: 'time-slice shares pack onto one GPU',
    before: [{ gpuMilli: 500, sharing: 'timeslice' }],
    request: { gpuMilli: 500, sharing: 'timeslice' },
    wantSameGpuAs: 0,
  },
  {
    name: 'a time-slice share never joins an MPS GPU, even on a node that allows both',
    // Four 500s fill mps0; the 200 goes to both0 GPU 0, which becomes an MPS GPU.
    before: [...Array.from({ length: 4 }, () => ({ gpuMilli: 500, sharing: 'mps' as const })), { gpuMilli: 200, sharing: 'mps' }],
    request: { gpuMilli: 200, sharing: 'timeslice' },
    wantFreshGpu: true,
  },
  {
    name: 'a share with no sharing mode packs onto a shared GPU of either mode',
    before: [{ gpuMilli: 500, sharing: 'timeslice' }],
    request: { gpuMilli: 300 },
    wantSameGpuAs: 0,
  },
  { name: 'a share on a type whose nodes do not share is refused', request: { gpuMilli: 500, gpuType: 'T4' }, wantRefused: 'SHARING_UNSUPPORTED' },
  { name: 'a gpuMilli of 1000 is refused (ask for gpus: 1)', request: { gpuMilli: 1000 }, wantRefused: 'INVALID_REQUEST' },
  { name: 'gpus and gpuMilli together are refused', request: { gpus: 1, gpuMilli: 500 }, wantRefused: 'INVALID_REQUEST' },
];

describe('place: fractional requests', () => {
  const index = aTopology()
    .rack('b0', 'mig', aNode('m0').gpus(2).mig(), aNode('m1').gpus(2).mig())
    .rack('b0', 'share', aNode('mps0').gpus(2).mps(), aNode('ts0').gpus(2).timeslice(), aNode('both0').gpus(2).mps().timeslice())
    .rack('b1', 't4', aNode('t0').type('T4').gpus(2))
    .index();

  it.each(shareCases)('$name', (c) => {
    const { state, placements } = placeAll(emptyState(index), c.before ?? []);
    const p = place(state, c.request);
    if (c.wantRefused !== undefined) {
      expect(p.placed).toBe(false);
      if (!p.placed) expect(p.reason.code).toBe(c.wantRefused);
      return;
    }
    expect(p.placed, p.placed ? '' : p.reason.message).toBe(true);
    if (!p.placed) return;
    expect(p.assignments).toHaveLength(1);
    expect(p.assignments[0]!.gpus).toHaveLength(1);
    if (c.wantGpu !== undefined) expect(gpuOf(p)).toBe(c.wantGpu);
    if (c.wantSameGpuAs !== undefined) expect(gpuOf(p)).toBe(gpuOf(placements[c.wantSameGpuAs]!));
    if (c.wantFreshGpu) expect(placements.map(gpuOf)).not.toContain(gpuOf(p));
    const all = [...placements, p];
    commit(state, p);
    expect(audit(index, all).doubleBookedGpus).toBe(0);
  });

  it('packs a stream of mixed MIG slices into as few GPUs as the slices need', () => {
    const profiles = ['3g.40gb', '2g.20gb', '1g.10gb', '1g.10gb', '3g.40gb', '4g.40gb', '2g.20gb', '1g.10gb'];
    const { placements } = placeAll(
      emptyState(index),
      profiles.map((m) => ({ migProfile: m })),
    );
    const compute = profiles.reduce((s, m) => s + Number(m[0]), 0); // 17 compute slices → at least 3 GPUs
    expect(new Set(placements.map(gpuOf)).size).toBe(Math.ceil(compute / 7));
  });

  it('packs shares by their thousandths: ten shares of 200 on two GPUs', () => {
    const { placements, state } = placeAll(
      emptyState(index),
      Array.from({ length: 10 }, () => ({ gpuMilli: 200, sharing: 'mps' as const })),
    );
    expect(new Set(placements.map(gpuOf)).size).toBe(2);
    expect(usage(state).allocatedGpus).toBeCloseTo(2, 9);
  });

  it('a whole-GPU job never takes a GPU that holds a share or a slice', () => {
    const { state, placements } = placeAll(emptyState(index), [{ migProfile: '1g.10gb' }, { gpuMilli: 100, sharing: 'mps' }]);
    const p = place(state, { gpus: 2, topology: { level: 'node', mode: 'required' } });
    expect(p.placed).toBe(true);
    if (!p.placed) return;
    expect(placements.map(gpuOf)).not.toContain(`${p.assignments[0]!.node}/${p.assignments[0]!.gpus[0]}`);
    expect(audit(index, [...placements, p]).doubleBookedGpus).toBe(0);
  });

  it('first fit and best fit place shares too, honouring the sharing mode', () => {
    const one = aTopology().rack('b0', 'r0', aNode('both0').gpus(2).mps().timeslice()).index();
    for (const policy of [firstFit, bestFit]) {
      let st = emptyState(one);
      const a = policy(st, { gpuMilli: 500, sharing: 'mps' });
      expect(a.placed).toBe(true);
      if (!a.placed) return;
      st = commit(st, a);
      const b = policy(st, { gpuMilli: 400, sharing: 'timeslice' });
      expect(b.placed).toBe(true);
      if (b.placed) expect(gpuOf(b)).not.toBe(gpuOf(a));
      const c = policy(st, { gpuMilli: 400, sharing: 'mps' });
      if (c.placed) expect(gpuOf(c)).toBe(gpuOf(a));
    }
  });
});

describe('place: the fragmentation gradient against a workload profile', () => {
  it('puts a 1-GPU job where it leaves 4-GPU jobs a home, when 4-GPU jobs are expected', () => {
    // n0 has 5 free, n1 has 4 free. Best fit alone would pick n1 (fewer free) and strand n1's 3;
    // against a workload of 4-GPU jobs, n0 (5 → 4) keeps both nodes able to take one.
    const index = aTopology().rack('b0', 'r0', aNode('n0').gpus(8), aNode('n1').gpus(8)).index();
    const workload: WorkloadProfile = [{ weight: 1, gpus: 4 }];
    const st = stateWith(index, [whole('n0', 0, 1, 2), whole('n1', 0, 1, 2, 3)], workload);
    const p = place(st, { gpus: 1 });
    expect(nodesOf(p)).toEqual(['n0']);
    expect(nodesOf(bestFit(st, { gpus: 1 }))).toEqual(['n1']);
    if (p.placed) expect(p.explanation.fragmentationAfter).toBeCloseTo(fragmentation(commit(st, p)), 9);
  });
});

// ---------------------------------------------------------------------------------------------
// commit / release

describe('commit and release', () => {
  it('refuse to double-book a GPU', () => {
    const index = nvlinkCluster();
    const st = stateWith(index, [whole('r0n0', 1)]);
    expect(() => commit(st, held(whole('r0n0', 1)))).toThrow(PlacementStateError);
    expect(() => commit(st, held({ kind: 'milli', node: 'r0n0', gpus: [1], milli: 100, sharing: 'mps', cpuMilli: 0, memoryMib: 0 }))).toThrow(
      PlacementStateError,
    );
  });

  it('refuse a stale placement: place twice on the same state, commit both', () => {
    const st = stateWith(nvlinkCluster());
    const p = place(st, { gpus: 8 });
    expect(p.placed).toBe(true);
    if (!p.placed) return;
    const once = commit(st, p);
    expect(() => commit(once, p)).toThrow(/not free/);
  });

  it('refuse to release what is not held, and to exceed CPU', () => {
    const index = nvlinkCluster();
    const st = emptyState(index);
    expect(() => release(st, held(whole('r0n0', 0)))).toThrow(PlacementStateError);
    expect(() => commit(st, held({ ...whole('r0n0', 0), cpuMilli: 65_000 }))).toThrow(/CPU/);
    expect(() => commit(st, held(whole('nope', 0)))).toThrow(/unknown node/);
    expect(() => commit(st, held(whole('r0n0', 4)))).toThrow(/no GPU 4/);
  });

  it('refuse a share on a node that does not allow its sharing mode', () => {
    const st = emptyState(sharingCluster());
    expect(() => commit(st, held({ kind: 'milli', node: 'mps0', gpus: [0], milli: 100, sharing: 'timeslice', cpuMilli: 0, memoryMib: 0 }))).toThrow(
      /timeslice/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Property: random sequences of place / commit / release on small random topologies

const arbTopology = fc
  .record({
    blocks: fc.array(
      fc.array(
        fc.array(
          fc.record({
            gpus: fc.integer({ min: 0, max: 4 }),
            t4: fc.boolean(),
            mig: fc.boolean(),
            mps: fc.boolean(),
            timeslice: fc.boolean(),
            cpu: fc.integer({ min: 1, max: 8 }),
            joinPrevious: fc.boolean(),
          }),
          { minLength: 1, maxLength: 3 },
        ),
        { minLength: 1, maxLength: 2 },
      ),
      { minLength: 1, maxLength: 2 },
    ),
  })
  .map(({ blocks }) => {
    const b = aTopology();
    blocks.forEach((racks, bi) =>
      racks.forEach((rackNodes, ri) => {
        let domain = 0;
        let prevType = '';
        const built = rackNodes.map((n, ni) => {
          const type = n.t4 ? 'T4' : 'H100';
          // Nodes of one type may join the previous node's NVLink domain (inside the rack).
          if (!(n.joinPrevious && type === prevType)) domain++;
          prevType = type;
          let nb = aNode(`b${bi}r${ri}n${ni}`)
            .type(type)
            .gpus(n.gpus)
            .cpu(n.cpu * 1000)
            .mem(n.cpu * 4096)
            .nvlink(`b${bi}r${ri}nv${domain}`);
          if (n.mig && !n.t4) nb = nb.mig();
          if (n.mps) nb = nb.mps();
          if (n.timeslice) nb = nb.timeslice();
          return nb;
        });
        b.rack(`b${bi}`, `b${bi}r${ri}`, ...built);
      }),
    );
    return b.index();
  });

const arbRequest: fc.Arbitrary<PlacementRequest> = fc
  .record({
    shape: fc.constantFrom('whole', 'whole', 'milli', 'mig', 'cpu'),
    gpus: fc.integer({ min: 1, max: 7 }),
    milli: fc.integer({ min: 1, max: 999 }),
    mig: fc.constantFrom(...MIG_80GB.map((p) => p.name)),
    sharing: fc.constantFrom(undefined, 'mps' as const, 'timeslice' as const),
    gpuType: fc.constantFrom(undefined, 'H100', 'T4', ['H100', 'T4']),
    cpu: fc.integer({ min: 0, max: 3000 }),
    mem: fc.integer({ min: 0, max: 8192 }),
    topology: fc.option(fc.record({ level: fc.constantFrom(...TOPOLOGY_LEVELS), mode: fc.constantFrom('required' as const, 'preferred' as const) }), {
      nil: undefined,
    }),
  })
  .map((r) => {
    const base: PlacementRequest = { cpuMilli: r.cpu, memoryMib: r.mem };
    if (r.gpuType !== undefined) base.gpuType = r.gpuType;
    if (r.shape === 'whole') return { ...base, gpus: r.gpus, ...(r.topology ? { topology: r.topology } : {}) };
    if (r.shape === 'milli') return { ...base, gpuMilli: r.milli, ...(r.sharing ? { sharing: r.sharing } : {}) };
    if (r.shape === 'mig') return { ...base, migProfile: r.mig };
    return base;
  });

const arbOp = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant('place' as const), request: arbRequest, policy: fc.constantFrom('govloop', 'firstFit', 'bestFit') }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('release' as const), pick: fc.nat() }) },
);

/** The state's per-GPU and per-node counters, to compare states exactly. */
function snapshot(st: PlacementState) {
  return {
    gpuMode: [...st.gpuMode],
    gpuMilli: [...st.gpuMilli],
    migCompute: [...st.migCompute],
    migMemory: [...st.migMemory],
    cpuFree: [...st.cpuFree],
    memFree: [...st.memFree],
    freeWhole: [...st.freeWhole],
    domainFree: [...st.domainFree.nvlink, -1, ...st.domainFree.rack, -1, ...st.domainFree.block],
  };
}

function checkInvariants(index: TopologyIndex, st: PlacementState, live: Placement[]): void {
  const a = audit(index, live);
  expect(a.doubleBookedGpus).toBe(0);
  expect(a.overcommittedNodes).toBe(0);
  expect(usage(st).allocatedGpus).toBeCloseTo(a.allocatedGpus, 6);
  for (const node of index.nodes) {
    const t = index.gpuTypes[node.type]!;
    for (let g = 0; g < node.gpus; g++) {
      const x = node.gpuOffset + g;
      expect(st.gpuMilli[x]).toBeLessThanOrEqual(1000);
      expect(st.migCompute[x]).toBeLessThanOrEqual(t.migComputeSlices);
      expect(st.migMemory[x]).toBeLessThanOrEqual(t.migMemorySlices);
    }
    expect(st.cpuFree[node.index]).toBeGreaterThanOrEqual(0);
    expect(st.memFree[node.index]).toBeGreaterThanOrEqual(0);
  }
  const f = fragmentation(st);
  expect(f).toBeGreaterThanOrEqual(0);
  expect(f).toBeLessThanOrEqual(1 + 1e-9);
}

/** What a placement must respect, whoever made it. */
function checkPlacement(index: TopologyIndex, req: PlacementRequest, p: Placement): void {
  const types = req.gpuType === undefined ? null : typeof req.gpuType === 'string' ? [req.gpuType] : req.gpuType;
  if (req.topology?.mode === 'required') expect(rank(p.domain.level)).toBeLessThanOrEqual(rank(req.topology.level));
  if (req.gpus !== undefined) expect(gpuCount(p)).toBe(req.gpus);
  expect(p.assignments.reduce((s, a) => s + a.cpuMilli, 0)).toBe(req.cpuMilli ?? 0);
  expect(p.assignments.reduce((s, a) => s + a.memoryMib, 0)).toBe(req.memoryMib ?? 0);
  for (const a of p.assignments) {
    const node = index.nodes[index.nodeIndex.get(a.node)!]!;
    if (a.kind !== 'cpu' && types !== null) expect(types).toContain(index.gpuTypes[node.type]!.name);
    if (a.kind === 'mig') expect(node.mig).toBe(true);
    if (a.kind === 'milli') {
      expect(a.sharing === 'mps' ? node.mps : node.timeslice).toBe(true);
      if (req.sharing !== undefined) expect(a.sharing).toBe(req.sharing);
    }
  }
}

describe('property: no GPU is ever double-booked', () => {
  it('holds over random place / commit / release sequences, and release restores the state exactly', () => {
    fc.assert(
      fc.property(arbTopology, fc.array(arbOp, { minLength: 1, maxLength: 40 }), (index, ops) => {
        const empty = snapshot(emptyState(index));
        let st = emptyState(index);
        const live: Placement[] = [];
        for (const op of ops) {
          if (op.op === 'place') {
            const decide = op.policy === 'govloop' ? place : op.policy === 'firstFit' ? firstFit : bestFit;
            const p = decide(st, op.request);
            if (!p.placed) continue;
            checkPlacement(index, op.request, p);
            const before = snapshot(st);
            const next = commit(st, p);
            // Taking it back at once gives the state it came from, counter for counter.
            expect(snapshot(release(next, p))).toEqual(before);
            st = next;
            live.push(p);
          } else if (live.length > 0) {
            const [p] = live.splice(op.pick % live.length, 1);
            st = release(st, p!);
          }
          checkInvariants(index, st, live);
        }
        // Releasing everything that is left, in any order, gives the empty cluster back.
        for (const p of live) st = release(st, p);
        expect(snapshot(st)).toEqual(empty);
        expect(usage(st).allocatedGpus).toBeCloseTo(0, 9);
      }),
      { numRuns: 300 },
    );
  });

  it('a refusal never hides capacity: a whole-GPU job the cluster can hold with no constraint is placed', () => {
    fc.assert(
      fc.property(arbTopology, fc.array(arbRequest, { maxLength: 15 }), fc.integer({ min: 1, max: 8 }), (index, setup, k) => {
        let st = emptyState(index);
        for (const r of setup) {
          const p = place(st, r);
          if (p.placed) st = commit(st, p);
        }
        const p = place(st, { gpus: k });
        expect(p.placed).toBe(usage(st).wholeGpusFree >= k);
      }),
      { numRuns: 200 },
    );
  });
});
