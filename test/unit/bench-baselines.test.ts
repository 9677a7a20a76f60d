import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type Assignment,
  type PlaceResult,
  type Placement,
  type PlacementRequest,
  type PlacementState,
  audit,
  commit,
  emptyState,
  placeOnNode,
  heldPlacement,
} from '../../governance/placement';
import { type TopologyIndex, type TopologyInput, buildTopologyIndex, parseTopology } from '../../governance/topology';
import { type Decider, PAPER_POLICIES, type PaperPolicyName, paperPolicy, typicalPods } from '../../bench/baselines';

type NodeInput = TopologyInput['blocks'][number]['racks'][number]['nodes'][number];

const SHARE = { mig: false, mps: true, timeslice: true };
const node = (name: string, extra: Partial<NodeInput> = {}): NodeInput => ({
  name,
  gpuType: 'G',
  gpus: 4,
  cpuMilli: 64_000,
  memoryMib: 262_144,
  sharing: SHARE,
  ...extra,
});

function cluster(...nodes: NodeInput[]): TopologyIndex {
  return buildTopologyIndex(parseTopology({ cluster: 'test', gpuTypes: { G: {}, T: {} }, blocks: [{ name: 'b0', racks: [{ name: 'r0', nodes }] }] }));
}

const held = (...assignments: Assignment[]): Placement => heldPlacement(assignments);
const whole = (n: string, ...gpus: number[]): Assignment => ({ kind: 'whole', node: n, gpus, cpuMilli: 0, memoryMib: 0 });
const share = (n: string, gpu: number, milli: number): Assignment => ({
  kind: 'milli',
  node: n,
  gpus: [gpu],
  milli,
  sharing: 'mps',
  cpuMilli: 0,
  memoryMib: 0,
});

/** Runs requests through a decider, committing each placement and telling the decider. */
function run(d: Decider, st: PlacementState, requests: PlacementRequest[]): { state: PlacementState; results: PlaceResult[] } {
  const results: PlaceResult[] = [];
  for (const r of requests) {
    const p = d.decide(st, r);
    results.push(p);
    if (p.placed) {
      st = commit(st, p);
      d.committed(p, r);
    }
  }
  return { state: st, results };
}

const nodeOf = (p: PlaceResult | undefined) => (p?.placed ? p.assignments[0]!.node : null);
const gpuOf = (p: PlaceResult | undefined) => (p?.placed ? p.assignments[0]!.gpus[0] : null);

describe('typicalPods: FGD’s target workload', () => {
  it('takes the most common shapes until they cover 95 % of the pods, CPU-only ones included, and renormalizes', () => {
    const reqs: PlacementRequest[] = [
      ...Array.from({ length: 60 }, () => ({ gpus: 1, cpuMilli: 8_000 })),
      ...Array.from({ length: 30 }, () => ({ gpuMilli: 500, cpuMilli: 4_000 })),
      ...Array.from({ length: 6 }, () => ({ cpuMilli: 2_000 })),
      ...Array.from({ length: 4 }, () => ({ gpus: 8, cpuMilli: 64_000 })),
    ];
    const t = typicalPods(reqs);
    expect(t.map((x) => [x.shape.count, x.shape.milli])).toEqual([
      [1, 1000],
      [1, 500],
      [0, 0],
    ]);
    expect(t.map((x) => x.freq)).toEqual([60 / 96, 30 / 96, 6 / 96]);
  });

  it('counts a pod that asks no CPU as 100m, as Kubernetes scores do', () => {
    expect(typicalPods([{ gpus: 1 }])[0]!.shape.cpu).toBe(100);
  });
});

describe('the paper’s schedulers: scoring rules', () => {
  it('gpuPacking: a shared GPU first, then a free GPU on a node in use, an idle node last', () => {
    const index = cluster(node('a'), node('b'), node('c'));
    const st = commit(commit(emptyState(index), held(share('a', 0, 300))), held(whole('b', 0)));
    const d = paperPolicy('gpuPacking', { seed: 1 });
    const s = d.decide(st, { gpuMilli: 500 });
    expect([nodeOf(s), gpuOf(s)]).toEqual(['a', 0]);
    expect(['a', 'b']).toContain(nodeOf(d.decide(st, { gpus: 1 })));
    // Two free GPUs are there only on a node in use by one whole GPU (b) or on the idle node (c).
    expect(nodeOf(d.decide(st, { gpus: 4 }))).toBe('c');
  });

  it('gpuClustering: a pod joins the node holding only its own kind', () => {
    const index = cluster(node('a'), node('b'), node('c'));
    const d = paperPolicy('gpuClustering', { seed: 3 });
    // Place one share and one whole GPU on nodes chosen by the policy itself, then check where the next of each kind goes.
    const { state, results } = run(d, emptyState(index), [{ gpuMilli: 300 }, { gpus: 1 }]);
    const shareNode = nodeOf(results[0]);
    const wholeNode = nodeOf(results[1]);
    expect(shareNode).not.toBe(wholeNode);
    expect(nodeOf(d.decide(state, { gpuMilli: 200 }))).toBe(shareNode);
    expect(nodeOf(d.decide(state, { gpus: 1 }))).toBe(wholeNode);
  });

  it('paperBestFit: the least CPU and GPU left over', () => {
    const index = cluster(node('a'), node('b', { cpuMilli: 16_000 }), node('c'));
    const st = commit(emptyState(index), held(whole('c', 0)));
    // a: 64 cores, 4 GPUs free; b: 16 cores, 4 GPUs; c: 64 cores, 3 GPUs. ½·48/128 + ½·3/8 for c is more than ½·12/128 + ½·3/8 for b.
    expect(nodeOf(paperPolicy('paperBestFit', { seed: 1 }).decide(st, { gpus: 1, cpuMilli: 4_000 }))).toBe('b');
  });

  it('dotProd: the smallest dot product of free and asked resources', () => {
    // a: 100 × (1 − ½ (128·32/128² + 4·1/8²)) = 84; b: 100 × (1 − ½ (32·32/128² + 4·1/8²)) = 93.
    const index = cluster(node('a', { cpuMilli: 128_000 }), node('b', { cpuMilli: 32_000 }));
    expect(nodeOf(paperPolicy('dotProd', { seed: 1 }).decide(emptyState(index), { gpus: 1, cpuMilli: 32_000 }))).toBe('b');
  });

  it('fgd: a 1-GPU pod keeps a home for the expected 4-GPU pods', () => {
    const index = cluster(node('n0', { gpus: 8 }), node('n1', { gpus: 8 }));
    const st = commit(commit(emptyState(index), held(whole('n0', 0, 1, 2))), held(whole('n1', 0, 1, 2, 3)));
    const d = paperPolicy('fgd', { seed: 1, requests: [{ gpus: 4 }, { gpus: 4 }, { gpus: 1 }] });
    expect(nodeOf(d.decide(st, { gpus: 1 }))).toBe('n0');
  });

  it('fgd: a share takes the GPU whose leftover the expected shares can still use', () => {
    const index = cluster(node('a', { gpus: 2 }));
    // GPU 0 has 600 left, GPU 1 has 400; the workload is shares of 400. A 200 on GPU 0 leaves 400 (usable), on GPU 1 leaves 200 (not).
    const st = commit(commit(emptyState(index), held(share('a', 0, 400))), held(share('a', 1, 600)));
    const d = paperPolicy('fgd', { seed: 1, requests: [{ gpuMilli: 400 }] });
    expect(gpuOf(d.decide(st, { gpuMilli: 200 }))).toBe(0);
  });

  it('random: seeded, so the same seed makes the same choices', () => {
    const index = cluster(...Array.from({ length: 12 }, (_, i) => node(`n${i}`)));
    const reqs = Array.from({ length: 20 }, (): PlacementRequest => ({ gpuMilli: 300 }));
    const a = run(paperPolicy('random', { seed: 7 }), emptyState(index), reqs).results.map(nodeOf);
    const b = run(paperPolicy('random', { seed: 7 }), emptyState(index), reqs).results.map(nodeOf);
    expect(a).toEqual(b);
    expect(new Set(a).size).toBeGreaterThan(1);
  });

  it('ties go to a fixed random order of the nodes, drawn once per run', () => {
    const index = cluster(...Array.from({ length: 8 }, (_, i) => node(`n${i}`)));
    const first = (seed: number) => nodeOf(paperPolicy('gpuPacking', { seed }).decide(emptyState(index), { gpus: 1 }));
    const picks = new Set([1, 2, 3, 4, 5, 6, 7, 8].map(first));
    expect(picks.size).toBeGreaterThan(1);
  });
});

describe('the paper’s schedulers: hard constraints', () => {
  const index = cluster(
    node('g0', { cpuMilli: 8_000 }),
    node('g1', { memoryMib: 16_384 }),
    node('t0', { gpuType: 'T', gpus: 2 }),
    node('ts', { sharing: { mig: false, mps: false, timeslice: true } }),
  );

  it.each(PAPER_POLICIES)('%s honours GPU type, CPU, memory and the sharing mode', (name) => {
    const d = paperPolicy(name, { seed: 1, requests: [{ gpus: 1 }] });
    const st = emptyState(index);
    expect(nodeOf(d.decide(st, { gpus: 1, gpuType: 'T' }))).toBe('t0');
    expect(nodeOf(d.decide(st, { gpus: 2, gpuType: ['T'], cpuMilli: 1_000 }))).toBe('t0');
    expect(['g1', 't0', 'ts']).toContain(nodeOf(d.decide(st, { gpus: 1, cpuMilli: 16_000 })));
    expect(['g0', 't0', 'ts']).toContain(nodeOf(d.decide(st, { gpus: 1, memoryMib: 100_000 })));
    expect(nodeOf(d.decide(st, { gpuMilli: 500, sharing: 'timeslice', gpuType: 'G', cpuMilli: 16_000, memoryMib: 100_000 }))).toBe('ts');
    const refused = d.decide(st, { gpus: 3, gpuType: 'T' });
    expect(refused.placed).toBe(false);
    if (!refused.placed) expect(refused.reason.code).toBe('INSUFFICIENT_CAPACITY');
  });

  it.each(PAPER_POLICIES)('%s refuses what it does not model or what is invalid, by code', (name) => {
    const d = paperPolicy(name, { seed: 1 });
    const st = emptyState(index);
    const mig = d.decide(st, { migProfile: '1g.10gb' });
    expect(mig.placed ? null : mig.reason.code).toBe('INVALID_REQUEST');
    const unknown = d.decide(st, { gpus: 1, gpuType: 'B200' });
    expect(unknown.placed ? null : unknown.reason.code).toBe('GPU_TYPE_UNKNOWN');
  });
});

// ---------------------------------------------------------------------------------------------
// Property: no baseline ever double-books, and none refuses a pod some node could take

const requestArb: fc.Arbitrary<PlacementRequest> = fc.oneof(
  fc.record({ gpus: fc.integer({ min: 1, max: 4 }), cpuMilli: fc.integer({ min: 0, max: 24_000 }), memoryMib: fc.integer({ min: 0, max: 65_536 }) }),
  fc.record({ gpuMilli: fc.integer({ min: 1, max: 999 }), cpuMilli: fc.integer({ min: 0, max: 8_000 }), memoryMib: fc.integer({ min: 0, max: 32_768 }) }),
  fc.record({ gpus: fc.integer({ min: 1, max: 2 }), gpuType: fc.constantFrom('G', 'T') }),
  fc.record({ gpuMilli: fc.integer({ min: 1, max: 999 }), sharing: fc.constantFrom('mps' as const, 'timeslice' as const) }),
  fc.record({ cpuMilli: fc.integer({ min: 0, max: 16_000 }) }),
);

describe('property: the paper’s schedulers never double-book and never hide room', () => {
  const index = cluster(
    node('g0', { cpuMilli: 32_000, memoryMib: 131_072 }),
    node('g1', { gpus: 8, cpuMilli: 48_000 }),
    node('t0', { gpuType: 'T', gpus: 2, cpuMilli: 16_000, memoryMib: 65_536 }),
    node('m0', { sharing: { mig: false, mps: true, timeslice: false } }),
    node('s0', { sharing: { mig: false, mps: false, timeslice: true } }),
  );

  it.each(PAPER_POLICIES)('%s', (name: PaperPolicyName) => {
    fc.assert(
      fc.property(fc.array(requestArb, { minLength: 1, maxLength: 40 }), fc.nat(1000), (reqs, seed) => {
        const d = paperPolicy(name, { seed, requests: reqs });
        let st = emptyState(index);
        const live: Placement[] = [];
        for (const r of reqs) {
          const p = d.decide(st, r);
          if (p.placed) {
            st = commit(st, p);
            d.committed(p, r);
            live.push(p);
          } else {
            // Refused only when no node can take it now.
            const anyNode = index.nodes.some((n) => placeOnNode(st, r, 'bench:check', n.index).placed);
            expect(anyNode).toBe(false);
          }
        }
        const a = audit(index, live);
        expect(a.doubleBookedGpus).toBe(0);
        expect(a.overcommittedNodes).toBe(0);
      }),
      { numRuns: 40 },
    );
  });
});
