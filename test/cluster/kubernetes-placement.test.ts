/**
 * govloop placement on Kubernetes, the pure part (cluster/kubernetes/placement.ts): Nodes → the
 * placement topology, Jobs and pods → what is held, and the decision `place()` makes from them.
 * The backend's use of it against the recorded and the real API server is in
 * ./kubernetes.test.ts and ./kubernetes-apiserver.test.ts.
 */
import type { V1Job, V1Node, V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { Annotation, jobManifest, type Placement } from '../../cluster/kubernetes/manifests';
import {
  type HeldGpus,
  decidePlacement,
  heldByJobs,
  heldByPods,
  parseQuantity,
  placementState,
  readTopology,
  usedGpus,
} from '../../cluster/kubernetes/placement';
import { aJob } from './support';

interface NodeShape {
  type?: string | null;
  gpus?: number;
  rack?: string;
  block?: string;
  nvlink?: string;
  zone?: string;
  region?: string;
  sharing?: 'mps' | 'time-slicing';
  replicas?: number;
  unschedulable?: boolean;
  ready?: 'True' | 'False' | 'Unknown' | null;
  /** MIG instances advertised, by profile (allocatable `nvidia.com/mig-<profile>`). */
  mig?: Record<string, number>;
}

export function gpuNode(name: string, s: NodeShape = {}): V1Node {
  const labels: Record<string, string> = { 'kubernetes.io/hostname': name };
  if (s.type !== null) labels['govloop.io/gpu-type'] = s.type ?? 'H100';
  if (s.rack) labels['govloop.io/rack'] = s.rack;
  if (s.block) labels['govloop.io/block'] = s.block;
  if (s.nvlink) labels['govloop.io/nvlink-domain'] = s.nvlink;
  if (s.zone) labels['topology.kubernetes.io/zone'] = s.zone;
  if (s.region) labels['topology.kubernetes.io/region'] = s.region;
  if (s.sharing) labels['nvidia.com/gpu.sharing-strategy'] = s.sharing;
  if (s.replicas) labels['nvidia.com/gpu.replicas'] = String(s.replicas);
  return {
    metadata: { name, labels },
    spec: s.unschedulable ? { unschedulable: true } : {},
    status: {
      allocatable: {
        cpu: '95500m',
        memory: '1056Gi',
        'nvidia.com/gpu': String((s.gpus ?? 8) * (s.replicas ?? 1)),
        pods: '110',
        ...Object.fromEntries(Object.entries(s.mig ?? {}).map(([p, n]) => [`nvidia.com/mig-${p}`, String(n)])),
      },
      conditions:
        s.ready === null
          ? []
          : [
              {
                type: 'Ready',
                status: s.ready ?? 'True',
                reason: s.ready === 'False' ? 'KubeletNotReady' : s.ready === 'Unknown' ? 'NodeStatusUnknown' : 'KubeletReady',
              },
            ],
    },
  };
}

/** A govloop Job as the backend stores it, in a phase. */
function storedJob(
  taskId: string,
  gpus: number,
  placement: Placement,
  phase: 'Suspended' | 'Running' | 'Succeeded' | 'Preempted',
  sharing: 'exclusive' | 'mps' | `mig:${string}` = 'exclusive',
  gpuMilli?: number,
): V1Job {
  const spec = { ...aJob(taskId).gpus(gpus, sharing).build(), ...(gpuMilli !== undefined ? { gpuMilli } : {}) };
  const job = jobManifest(spec, placement, { namespace: 'govloop', cluster: 'c' });
  job.metadata!.uid = `uid-${taskId}`;
  if (phase === 'Running' || phase === 'Succeeded') job.spec!.suspend = false;
  if (phase === 'Succeeded') job.status = { conditions: [{ type: 'Complete', status: 'True' }] };
  if (phase === 'Preempted') {
    delete job.metadata!.annotations![Annotation.nodes];
    job.metadata!.annotations![Annotation.preemptedAt] = '2026-01-01T00:00:00Z';
  }
  return job;
}

function gpuPod(
  ns: string,
  name: string,
  node: string | null,
  limits: Record<string, string>,
  extra: { phase?: string; jobName?: string; govloop?: boolean } = {},
): V1Pod {
  return {
    metadata: {
      name,
      namespace: ns,
      labels: {
        ...(extra.jobName ? { 'batch.kubernetes.io/job-name': extra.jobName } : {}),
        ...(extra.govloop ? { 'app.kubernetes.io/managed-by': 'govloop' } : {}),
      },
    },
    spec: { ...(node ? { nodeName: node } : {}), containers: [{ name: 'c', image: 'x', resources: { limits } }] },
    status: { phase: extra.phase ?? 'Running' },
  };
}

describe('parseQuantity', () => {
  it.each([
    ['16', 16],
    ['15500m', 15.5],
    ['64Gi', 64 * 2 ** 30],
    ['131072Ki', 131072 * 1024],
    ['1G', 1e9],
    ['1e3', 1000],
    ['0.5', 0.5],
    ['bogus', null],
  ])('%s → %s', (q, want) => {
    expect(parseQuantity(q)).toBe(want);
  });
});

describe('readTopology: Nodes → blocks, racks, NVLink domains', () => {
  const shape = (r: ReturnType<typeof readTopology>) =>
    r.index === null
      ? null
      : r.index.domains.block.map((b) => [
          b.id,
          b.children.map((rk) => [r.index!.domains.rack[rk]!.id, r.index!.domains.rack[rk]!.nodes.map((n) => r.index!.nodes[n]!.name)]),
        ]);

  it('builds the tree from govloop.io/block, govloop.io/rack and govloop.io/nvlink-domain', () => {
    const r = readTopology(
      [
        gpuNode('n3', { block: 'b1', rack: 'r2' }),
        gpuNode('n1', { block: 'b0', rack: 'r0', nvlink: 'nvl-a' }),
        gpuNode('n2', { block: 'b0', rack: 'r1' }),
        gpuNode('n0', { block: 'b0', rack: 'r0', nvlink: 'nvl-a' }),
      ],
      'gpu-east',
    );
    expect(r.unusable).toBeNull();
    expect(shape(r)).toEqual([
      [
        'b0',
        [
          ['r0', ['n0', 'n1']],
          ['r1', ['n2']],
        ],
      ],
      ['b1', [['r2', ['n3']]]],
    ]);
    expect(r.index!.domains.nvlink.map((d) => [d.id, d.nodes.length])).toEqual([
      ['nvl-a', 2],
      ['n2', 1],
      ['n3', 1],
    ]);
    expect(r.index!.totalGpus).toBe(32);
  });

  it('falls back to topology.kubernetes.io/zone and /region, else a rack per node in one block', () => {
    const r = readTopology([gpuNode('a', { zone: 'z1', region: 'eu' }), gpuNode('b', { zone: 'z1', region: 'eu' }), gpuNode('c')], 'c');
    expect(shape(r)).toEqual([
      ['eu', [['z1', ['a', 'b']]]],
      ['default', [['c', ['c']]]],
    ]);
  });

  it('names a rack found in two blocks <block>.<rack>, and splits an NVLink domain that spans racks', () => {
    const r = readTopology([gpuNode('a', { block: 'b0', rack: 'rack-1', nvlink: 'x' }), gpuNode('b', { block: 'b1', rack: 'rack-1', nvlink: 'x' })], 'c');
    expect(shape(r)).toEqual([
      ['b0', [['b0.rack-1', ['a']]]],
      ['b1', [['b1.rack-1', ['b']]]],
    ]);
    expect(r.notes).toEqual([
      'rack "rack-1" is in blocks b0, b1: named <block>.rack-1',
      'node b: NVLink domain "x" spans racks or GPU types; the node is a domain of its own',
    ]);
  });

  it('leaves out cordoned and NotReady nodes, nodes without the GPU-type label, and more than 16 GPUs; reads shared replicas', () => {
    const r = readTopology(
      [
        gpuNode('ok'),
        gpuNode('cordoned', { unschedulable: true }),
        gpuNode('down', { ready: 'Unknown' }),
        gpuNode('unlabelled', { type: null }),
        gpuNode('huge', { gpus: 32 }),
        gpuNode('mps', { sharing: 'mps', replicas: 4, gpus: 8 }),
      ],
      'c',
    );
    expect(r.nodes.map((n) => [n.name, n.gpus, n.replicas, n.sharing])).toEqual([
      ['mps', 8, 4, { mps: true, timeslice: false }],
      ['ok', 8, 1, { mps: false, timeslice: false }],
    ]);
    expect(r.skipped).toEqual([
      { node: 'cordoned', why: 'cordoned (spec.unschedulable)' },
      { node: 'down', why: 'not Ready (NodeStatusUnknown)' },
      { node: 'huge', why: '32 GPUs: the placement topology holds at most 16 per node' },
      { node: 'unlabelled', why: 'has 8 nvidia.com/gpu but no govloop.io/gpu-type label' },
    ]);
  });

  it('is unusable, saying why, when no node carries the GPU-type label or the label is off', () => {
    expect(readTopology([gpuNode('x', { type: null })], 'c').unusable).toBe(
      'no schedulable Node carries the label govloop.io/gpu-type; left out: x (has 8 nvidia.com/gpu but no govloop.io/gpu-type label)',
    );
    expect(readTopology([], 'c').unusable).toBe('no schedulable Node carries the label govloop.io/gpu-type');
    expect(readTopology([gpuNode('x')], 'c', { gpuTypeLabel: null }).unusable).toMatch(/turned off/);
    // Another label name for the GPU type.
    const other = readTopology([{ ...gpuNode('x', { type: null }), metadata: { name: 'x', labels: { 'example.com/gpu': 'A100' } } }], 'c', {
      gpuTypeLabel: 'example.com/gpu',
    });
    expect(other.nodes.map((n) => [n.name, n.gpuType])).toEqual([['x', 'A100']]);
  });
});

describe('what is held', () => {
  it('heldByJobs: pinned Jobs that are Running or Suspended-and-placed hold their nodes; preempted and finished ones do not', () => {
    const jobs = [
      storedJob('running-gang', 16, { kind: 'nodes', nodes: ['n0', 'n1'] }, 'Running'),
      storedJob('created', 4, { kind: 'nodes', nodes: ['n2'] }, 'Suspended'),
      storedJob('preempted', 8, { kind: 'nodes', nodes: ['n3'] }, 'Preempted'),
      storedJob('done', 8, { kind: 'nodes', nodes: ['n3'] }, 'Succeeded'),
      storedJob('anywhere', 8, { kind: 'any' }, 'Running'),
      storedJob('share', 1, { kind: 'nodes', nodes: ['n4'] }, 'Running', 'mps', 250),
    ];
    expect(heldByJobs(jobs).map((h) => ({ ...h, owner: undefined }))).toEqual([
      { taskId: 'running-gang', node: 'n0', kind: 'whole', gpus: 8, owner: undefined },
      { taskId: 'running-gang', node: 'n1', kind: 'whole', gpus: 8, owner: undefined },
      { taskId: 'created', node: 'n2', kind: 'whole', gpus: 4, owner: undefined },
      { taskId: 'share', node: 'n4', kind: 'share', milli: 250, sharing: 'mps', owner: undefined },
    ]);
  });

  it('heldByPods: bound, unfinished pods by their GPU limits; pods of counted Jobs, unbound and finished pods not', () => {
    const reading = readTopology([gpuNode('n0'), gpuNode('shared', { sharing: 'time-slicing', replicas: 4 })], 'c');
    const nodes = reading.nodes;
    const pods = [
      gpuPod('ml', 'notebook', 'n0', { 'nvidia.com/gpu': '2' }),
      gpuPod('ml', 'pending', null, { 'nvidia.com/gpu': '1' }),
      gpuPod('ml', 'finished', 'n0', { 'nvidia.com/gpu': '1' }, { phase: 'Succeeded' }),
      gpuPod('govloop', 'gl-x-0', 'n0', { 'nvidia.com/gpu': '8' }, { jobName: 'gl-x', govloop: true }),
      gpuPod('govloop', 'gl-any-0', 'n0', { 'nvidia.com/gpu': '4' }, { jobName: 'gl-any', govloop: true }),
      gpuPod('ml', 'slice', 'shared', { 'nvidia.com/gpu': '2' }),
      gpuPod('ml', 'mig', 'n0', { 'nvidia.com/mig-3g.40gb': '2' }),
      gpuPod('ml', 'cpu', 'n0', { cpu: '4' }),
    ];
    const held = heldByPods(pods, new Set(['govloop/gl-x']), nodes);
    expect(
      held.map((h) => [h.owner, h.node, h.kind === 'whole' ? h.gpus : h.kind === 'share' ? `${h.milli}/${h.sharing}` : `${h.count}×${h.profile}=${h.units}`]),
    ).toEqual([
      ['Pod ml/notebook', 'n0', 2],
      ['Pod govloop/gl-any-0', 'n0', 4],
      ['Pod ml/slice', 'shared', '250/timeslice'],
      ['Pod ml/slice', 'shared', '250/timeslice'],
      ['Pod ml/mig', 'n0', `2×3g.40gb=${2 * (3 / 7)}`],
    ]);
    // In use, as the simulated cluster counts: n0's 6 whole GPUs (MIG is not nvidia.com/gpu), and
    // the one GPU of `shared` both quarter shares are packed onto.
    expect(Object.fromEntries(usedGpus(reading, held))).toEqual({ n0: 6, shared: 1 });
    // Without a topology (GPU-type label off): whole GPUs, plus shares rounded up to GPUs.
    expect(Object.fromEntries(usedGpus(readTopology([gpuNode('n0')], 'c', { gpuTypeLabel: null }), [...held, ...held]))).toEqual({ n0: 12, shared: 1 });
  });

  it('placementState takes held whole GPUs and shares; more than a node has is counted as far as it goes and said', () => {
    const r = readTopology([gpuNode('n0', { gpus: 8 }), gpuNode('m0', { sharing: 'mps', gpus: 2 })], 'c');
    const held: HeldGpus[] = [
      { owner: 'a', taskId: 'a', node: 'n0', kind: 'whole', gpus: 6 },
      { owner: 'b', taskId: 'b', node: 'n0', kind: 'whole', gpus: 4 },
      { owner: 'c', taskId: 'c', node: 'm0', kind: 'share', milli: 600, sharing: 'mps' },
      { owner: 'd', taskId: 'd', node: 'm0', kind: 'share', milli: 300, sharing: 'mps' },
      { owner: 'e', taskId: 'e', node: 'n0', kind: 'share', milli: 300, sharing: 'timeslice' },
      { owner: 'f', taskId: null, node: 'elsewhere', kind: 'whole', gpus: 8 },
    ];
    const { state, notes } = placementState(r.index!, held);
    const n0 = r.index!.nodeIndex.get('n0')!;
    const m0 = r.index!.nodeIndex.get('m0')!;
    expect(state.freeWhole[n0]).toBe(0);
    // Both shares on one GPU of m0 (600 + 300 ≤ 1000): its second GPU stays whole.
    expect(state.freeWhole[m0]).toBe(1);
    expect(notes).toEqual([
      'b holds 4 GPUs on n0, which has 2 free: counted 2',
      'e holds a timeslice share on n0, which is not labelled for timeslice: not counted',
    ]);
  });
});

describe('decidePlacement', () => {
  const reading = readTopology(
    [
      gpuNode('a0', { block: 'b0', rack: 'ra' }),
      gpuNode('a1', { block: 'b0', rack: 'ra' }),
      gpuNode('b0', { block: 'b0', rack: 'rb' }),
      gpuNode('b1', { block: 'b0', rack: 'rb' }),
      gpuNode('s0', { block: 'b1', rack: 'rs', sharing: 'mps', replicas: 4, gpus: 4, type: 'A100' }),
    ],
    'gpu-east',
  );
  const whole = (node: string, gpus: number, taskId = node): HeldGpus => ({ owner: taskId, taskId, node, kind: 'whole', gpus });
  const ask = (gpus: number, more: Partial<Parameters<typeof decidePlacement>[2]> = {}) => ({ gpus, gpuType: 'H100', sharing: 'exclusive' as const, ...more });

  const cases: { name: string; held: HeldGpus[]; ask: Parameters<typeof decidePlacement>[2]; want: unknown }[] = [
    { name: 'best fit: the partly used node before an empty one', held: [whole('a1', 5)], ask: ask(3), want: { kind: 'nodes', nodes: ['a1'] } },
    { name: 'a whole node when one is free', held: [whole('a0', 1), whole('a1', 1), whole('b0', 1)], ask: ask(8), want: { kind: 'nodes', nodes: ['b1'] } },
    { name: 'a 16-GPU gang on the two nodes of one rack', held: [whole('a0', 1)], ask: ask(16), want: { kind: 'nodes', nodes: ['b0', 'b1'] } },
    {
      name: '12 GPUs that place() splits 8 + 4 are split evenly 6 + 6 in the same domain',
      held: [whole('a0', 2)],
      ask: ask(12),
      want: { kind: 'nodes', nodes: ['a0', 'a1'] },
    },
    { name: 'a share of an MPS GPU', held: [], ask: { gpus: 1, gpuType: 'A100', sharing: 'mps', gpuMilli: 250 }, want: { kind: 'nodes', nodes: ['s0'] } },
  ];
  it.each(cases)('$name', (c) => {
    const d = decidePlacement(reading, c.held, c.ask, 'gpu-east');
    expect(d.decision).toMatchObject(c.want as object);
    expect(d.note).toBeNull();
    expect(d.decision.kind === 'nodes' && d.decision.explanation).toBeTruthy();
  });

  it('says so when an uneven split is evened out', () => {
    const d = decidePlacement(reading, [whole('a0', 2)], ask(12), 'gpu-east');
    expect(d.decision.kind === 'nodes' && d.decision.explanation).toMatch(/on 2 nodes in rack ra; split evenly as 2 × 6 GPUs/);
    // Already even: no word about it.
    const even = decidePlacement(reading, [whole('a0', 2), whole('a1', 2)], ask(12), 'gpu-east');
    expect(even.decision).toMatchObject({ kind: 'nodes', nodes: ['a0', 'a1'] });
    expect(even.decision.kind === 'nodes' && even.decision.explanation).not.toMatch(/split evenly/);
  });

  it('no room: the reason the task queues with (GPU_CAPACITY_BUSY), from the placement', () => {
    const d = decidePlacement(reading, [whole('a0', 8), whole('a1', 8), whole('b0', 8)], ask(16), 'gpu-east');
    expect(d.decision).toMatchObject({ kind: 'none', reason: { code: 'GPU_CAPACITY_BUSY', requested: 16, policy: 'cluster/gpu-east' } });
    expect(d.decision.kind === 'none' && d.decision.reason.message).toMatch(/^placement: /);
  });

  it('no room when no even split fits (7 + 3 free: 10 GPUs cannot be 5 + 5)', () => {
    const d = decidePlacement(reading, [whole('a0', 1), whole('a1', 5), whole('b0', 8), whole('b1', 8)], ask(10), 'gpu-east');
    expect(d.decision).toMatchObject({ kind: 'none', reason: { code: 'GPU_CAPACITY_BUSY' } });
    expect(d.decision.kind === 'none' && d.decision.reason.message).toMatch(/only as 7 \+ 3; one Job gives every pod the same GPUs/);
  });

  it('a required rack: two half-empty racks do not make one', () => {
    const held = [whole('a0', 4), whole('b0', 4)];
    expect(decidePlacement(reading, held, ask(16, { topology: { level: 'rack', mode: 'required' } }), 'gpu-east').decision.kind).toBe('none');
    expect(decidePlacement(reading, held, ask(8, { topology: { level: 'rack', mode: 'required' } }), 'gpu-east').decision).toMatchObject({ kind: 'nodes' });
  });

  it('leaves MIG no node advertises, shares without gpuMilli, CPU-only jobs and unlabelled clusters to the kube-scheduler, saying why', () => {
    expect(decidePlacement(reading, [], { gpus: 1, gpuType: 'A100', sharing: 'mig:3g.40gb' }, 'c')).toMatchObject({
      decision: { kind: 'any' },
      note: expect.stringMatching(/no schedulable A100 Node advertises nvidia.com\/mig-3g.40gb/),
    });
    expect(decidePlacement(reading, [], { gpus: 1, gpuType: 'A100', sharing: 'mps' }, 'c')).toMatchObject({
      decision: { kind: 'any' },
      note: expect.stringMatching(/without gpuMilli/),
    });
    expect(decidePlacement(reading, [], { gpus: 0, gpuType: '', sharing: 'exclusive' }, 'c')).toMatchObject({ decision: { kind: 'any' }, note: null });
    expect(decidePlacement(readTopology([gpuNode('x', { type: null })], 'c'), [], ask(8), 'c')).toMatchObject({
      decision: { kind: 'any' },
      note: expect.stringMatching(/no schedulable Node carries the label govloop.io\/gpu-type/),
    });
  });
});

describe('decidePlacement: MIG instances the GPU operator partitioned ahead of time', () => {
  // m0: an A100 cut into 2 × 3g.40gb + 1 × 1g.10gb; m1: 4 × 3g.40gb; w: whole GPUs, no MIG.
  const reading = readTopology(
    [
      gpuNode('m0', { type: 'A100', gpus: 0, mig: { '3g.40gb': 2, '1g.10gb': 1 } }),
      gpuNode('m1', { type: 'A100', gpus: 0, mig: { '3g.40gb': 4 } }),
      gpuNode('w', { type: 'A100', gpus: 8 }),
    ],
    'c',
  );
  const mig = (gpus: number, profile = '3g.40gb') => ({ gpus, gpuType: 'A100', sharing: `mig:${profile}` as const });
  const notebook = heldByPods(
    [
      {
        metadata: { name: 'nb', namespace: 'ml' },
        spec: { nodeName: 'm1', containers: [{ name: 'c', resources: { limits: { 'nvidia.com/mig-3g.40gb': '1' } } }] },
        status: { phase: 'Running' },
      },
    ],
    new Set(),
    reading.nodes,
  );

  it('reads the instances each node advertises, by profile', () => {
    expect(reading.nodes.map((n) => [n.name, n.mig])).toEqual([
      ['m0', { '3g.40gb': 2, '1g.10gb': 1 }],
      ['m1', { '3g.40gb': 4 }],
      ['w', {}],
    ]);
  });

  it('pins to the node where fewest instances of the profile stay free; counts what pods and govloop Jobs hold', () => {
    // m0 has 2 free, m1 has 3 (one held by a notebook): 2 go to m0, 3 to m1.
    expect(decidePlacement(reading, notebook, mig(2), 'c').decision).toMatchObject({
      kind: 'nodes',
      nodes: ['m0'],
      explanation: expect.stringMatching(/2 of its 2 free MIG 3g.40gb instances \(of 2\)/),
    });
    expect(decidePlacement(reading, notebook, mig(3), 'c').decision).toMatchObject({ kind: 'nodes', nodes: ['m1'] });
    // A govloop Job holding both of m0's: one more goes to m1.
    const job = heldByJobs([storedJob('mig-job', 2, { kind: 'nodes', nodes: ['m0'] }, 'Running', 'mig:3g.40gb')]);
    expect(job).toEqual([expect.objectContaining({ kind: 'mig', node: 'm0', profile: '3g.40gb', count: 2 })]);
    expect(decidePlacement(reading, [...notebook, ...job], mig(1), 'c').decision).toMatchObject({ kind: 'nodes', nodes: ['m1'] });
    expect(decidePlacement(reading, [...notebook, ...job], mig(1, '1g.10gb'), 'c').decision).toMatchObject({ kind: 'nodes', nodes: ['m0'] });
  });

  it('no node with enough free instances: the task waits, told the most one node has', () => {
    const d = decidePlacement(reading, notebook, mig(4), 'gpu-east').decision;
    expect(d).toMatchObject({ kind: 'none', reason: { code: 'GPU_CAPACITY_BUSY', limit: 3, requested: 4, policy: 'cluster/gpu-east' } });
    expect(d.kind === 'none' && d.reason.message).toBe('placement: 4 MIG 3g.40gb instance(s) of A100: at most 3 free on one node (m0 2/2, m1 3/4)');
  });
});
