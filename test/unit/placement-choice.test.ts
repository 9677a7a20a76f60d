import { describe, expect, it } from 'vitest';
import {
  type Assignment,
  type PlaceResult,
  type Placement,
  type WorkloadProfile,
  commit,
  emptyState,
  fragmentation,
  gpuMilliLeft,
  heldPlacement,
  place,
  placeOnNode,
  shareRoom,
} from '../../governance/placement';
import { MIG_80GB, type TopologyIndex, type TopologyInput, buildTopologyIndex, parseTopology } from '../../governance/topology';

type NodeInput = TopologyInput['blocks'][number]['racks'][number]['nodes'][number];
type RackInput = TopologyInput['blocks'][number]['racks'][number];

const node = (name: string, extra: Partial<NodeInput> = {}): NodeInput => ({ name, gpuType: 'H100', gpus: 4, cpuMilli: 64_000, memoryMib: 262_144, ...extra });

function topology(...racks: RackInput[]): TopologyIndex {
  return buildTopologyIndex(
    parseTopology({
      cluster: 'test',
      gpuTypes: { H100: { memoryGb: 80, mig: { computeSlices: 7, memorySlices: 8, profiles: MIG_80GB } }, T4: { memoryGb: 16 } },
      blocks: racks.map((r, i) => ({ name: `b${i}`, racks: [r] })),
    }),
  );
}

const held = (...assignments: Assignment[]): Placement => heldPlacement(assignments);
const whole = (n: string, ...gpus: number[]): Assignment => ({ kind: 'whole', node: n, gpus, cpuMilli: 0, memoryMib: 0 });
const nodeOf = (p: PlaceResult) => (p.placed ? p.assignments[0]!.node : null);

describe('place: among nodes whose fragmentation grows alike', () => {
  it('a node in use goes before a fresh one, the fullest for its size first', () => {
    // big has 1 of 8 GPUs free, small 1 of 2: the same free GPU count, but big is the fuller node.
    const index = topology({ name: 'r0', nodes: [node('small', { gpus: 2 }), node('big', { gpus: 8 }), node('fresh')] });
    const st = commit(commit(emptyState(index), held(whole('small', 0))), held(whole('big', 0, 1, 2, 3, 4, 5, 6)));
    expect(nodeOf(place(st, { gpus: 1 }))).toBe('big');
  });

  it('a fresh node is opened in the GPU type with the largest free share', () => {
    const index = topology(
      { name: 'h', nodes: [node('h0'), node('h1')] },
      { name: 't', nodes: [node('t0', { gpuType: 'T4' }), node('t1', { gpuType: 'T4' })] },
    );
    // H100 is half used (h0 full), T4 untouched: a 4-GPU job that fits either type opens a T4 node.
    const st = commit(emptyState(index), held(whole('h0', 0, 1, 2, 3)));
    expect(nodeOf(place(st, { gpus: 4, topology: { level: 'node', mode: 'required' } }))).toBe('t0');
  });

  it('growths within 20 thousandths of a GPU count as equal: a rare class does not open a fresh node', () => {
    // big (7 of 8 free) and fresh2 (2 of 2 free). The 8-core job takes away the 60-core class's CPU
    // either way; that class's free GPUs on big (6) weigh more than on fresh2 (1), but at weight
    // 0.002 the difference is 10 thousandths of a GPU, so the node in use wins.
    const index = topology({ name: 'r0', nodes: [node('fresh2', { gpus: 2 }), node('big', { gpus: 8 })] });
    const rare = (w: number): WorkloadProfile => [
      { weight: 1 - w, gpus: 1 },
      { weight: w, gpus: 1, cpuMilli: 60_000 },
    ];
    const at = (w: number) => commit(emptyState(index, { workload: rare(w) }), held(whole('big', 0)));
    expect(nodeOf(place(at(0.002), { gpus: 1, cpuMilli: 8_000 }))).toBe('big');
    // At weight 0.01 the difference is 50 thousandths: the fresh node, where less is stranded, wins.
    expect(nodeOf(place(at(0.01), { gpus: 1, cpuMilli: 8_000 }))).toBe('fresh2');
  });
});

describe('placeOnNode: a node chosen by a caller, checked like place', () => {
  const index = topology({
    name: 'r0',
    nodes: [node('n0', { cpuMilli: 8_000 }), node('mps', { sharing: { mps: true } }), node('mig', { sharing: { mig: true } })],
  });
  const n = (name: string) => index.nodeIndex.get(name)!;

  it('places whole GPUs on the first free ones, or on the ones given, and explains itself', () => {
    const st = commit(emptyState(index), held(whole('n0', 0)));
    const p = placeOnNode(st, { gpus: 2 }, 'bench:test', n('n0'));
    expect(p.placed && p.assignments).toEqual([{ kind: 'whole', node: 'n0', gpus: [1, 2], cpuMilli: 0, memoryMib: 0 }]);
    if (p.placed) {
      expect(p.policy).toBe('bench:test');
      expect(p.explanation.fragmentationAfter).toBeCloseTo(fragmentation(commit(st, p)), 9);
    }
    const q = placeOnNode(st, { gpus: 1 }, 'bench:test', n('n0'), [3]);
    expect(q.placed && q.assignments[0]!.gpus).toEqual([3]);
  });

  it('refuses, by code, what does not fit there now', () => {
    const st = commit(emptyState(index), held(whole('n0', 0)));
    const code = (p: PlaceResult) => (p.placed ? null : p.reason.code);
    expect(code(placeOnNode(st, { gpus: 1 }, 'bench:test', n('n0'), [0]))).toBe('INSUFFICIENT_CAPACITY');
    expect(code(placeOnNode(st, { gpus: 4 }, 'bench:test', n('n0')))).toBe('INSUFFICIENT_CAPACITY');
    expect(code(placeOnNode(st, { gpus: 1, cpuMilli: 9_000 }, 'bench:test', n('n0')))).toBe('INSUFFICIENT_CAPACITY');
    expect(code(placeOnNode(st, { gpuMilli: 300 }, 'bench:test', n('n0')))).toBe('INSUFFICIENT_CAPACITY');
    expect(code(placeOnNode(st, { gpuMilli: 300, sharing: 'timeslice' }, 'bench:test', n('mps')))).toBe('SHARING_UNSUPPORTED');
    expect(code(placeOnNode(st, { gpus: 0 }, 'bench:test', n('n0')))).toBe('INVALID_REQUEST');
  });

  it('packs a share onto the GPU with least room that fits, or onto the one given; reads room per GPU', () => {
    let st = emptyState(index);
    const a = placeOnNode(st, { gpuMilli: 600 }, 'bench:test', n('mps'));
    expect(a.placed && a.assignments[0]).toMatchObject({ kind: 'milli', gpus: [0], milli: 600, sharing: 'mps' });
    if (a.placed) st = commit(st, a);
    expect(gpuMilliLeft(st, n('mps'), 0)).toBe(400);
    expect(gpuMilliLeft(st, n('mps'), 1)).toBe(1000);
    expect(shareRoom(st, n('mps'), 0, null)).toBe(400);
    expect(shareRoom(st, n('mps'), 0, 'timeslice')).toBe(0);
    expect(shareRoom(st, n('n0'), 0, null)).toBe(0);
    const b = placeOnNode(st, { gpuMilli: 300 }, 'bench:test', n('mps'));
    expect(b.placed && b.assignments[0]!.gpus).toEqual([0]);
    const c = placeOnNode(st, { gpuMilli: 300 }, 'bench:test', n('mps'), [2]);
    expect(c.placed && c.assignments[0]!.gpus).toEqual([2]);
    expect(placeOnNode(st, { gpuMilli: 500 }, 'bench:test', n('mps'), [0]).placed).toBe(false);
  });

  it('places a MIG slice on a GPU that has room for it', () => {
    const p = placeOnNode(emptyState(index), { migProfile: '3g.40gb' }, 'bench:test', n('mig'));
    expect(p.placed && p.assignments[0]).toMatchObject({ kind: 'mig', node: 'mig', gpus: [0], migProfile: '3g.40gb' });
  });
});
