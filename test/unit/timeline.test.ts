import { describe, expect, it } from 'vitest';
import { type Assignment, type PlacementRequest, type WorkloadProfile, commit, emptyState, heldPlacement, place } from '../../governance/placement';
import { type TopologyIndex, buildTopologyIndex } from '../../governance/topology';
import { type AlibabaNode, alibabaTopology } from '../../bench/alibaba';
import { type SimulateSettings, type TimelinePod, keptForGpus, lostOnEviction, reservationFor, simulateTimeline } from '../../bench/timeline';

// Small hand-built timelines for govloop's rules in bench/timeline.ts (the header lists them).

const WORKLOAD: WorkloadProfile = [{ weight: 1, gpus: 1 }];

function cluster(nodes: Partial<AlibabaNode>[]): TopologyIndex {
  return buildTopologyIndex(
    alibabaTopology(nodes.map((n, i) => ({ sn: `node-${String(i).padStart(2, '0')}`, cpuMilli: 32_000, memoryMib: 131_072, gpus: 1, model: 'T4', ...n }))),
  );
}

let seq = 0;
function pod(p: Partial<TimelinePod> & { arrival: number; lifetime: number }): TimelinePod {
  const req: PlacementRequest = p.req ?? { id: `p${seq++}`, gpus: 1, cpuMilli: 1000, memoryMib: 1024 };
  const gpus = req.gpus ?? (req.gpuMilli !== undefined ? req.gpuMilli / 1000 : 0);
  return { req, shape: JSON.stringify({ ...req, id: undefined }), tenant: 0, priority: 0, gpus, ...p };
}

const NO_RESERVATIONS: SimulateSettings = { reservations: 0 };

describe('lostOnEviction', () => {
  it('loses everything run when the pod never checkpoints', () => {
    expect(lostOnEviction(0, 2500, 0)).toBe(2500);
    expect(lostOnEviction(1800, 500, 0)).toBe(500);
  });

  it('loses only the work since the last checkpoint', () => {
    expect(lostOnEviction(0, 2500, 900)).toBe(700); // checkpoints at 900 and 1800
    expect(lostOnEviction(0, 500, 900)).toBe(500); // none yet
    expect(lostOnEviction(1800, 500, 900)).toBe(500); // resumed at 1800, next checkpoint at 2700
    expect(lostOnEviction(1800, 1000, 900)).toBe(100); // checkpointed at 2700
    expect(lostOnEviction(0, 1800, 900)).toBe(0); // evicted right at a checkpoint
  });
});

describe('checkpoints: an evicted pod resumes from its last checkpoint', () => {
  // One GPU. A best-effort pod runs 3000 s from t=0; a latency-sensitive pod of the same tenant
  // arrives at t=1000 and evicts it (priority preemption); a third pod waits for the GPU.
  const index = cluster([{}]);
  const pods = [
    pod({ arrival: 0, lifetime: 3000, priority: 0 }),
    pod({ arrival: 1000, lifetime: 100, priority: 2 }),
    pod({ arrival: 1200, lifetime: 10, priority: 0 }),
  ];

  it('with checkpoints every 900 s it loses 100 s and finishes 900 s earlier', () => {
    const r = simulateTimeline('govloop', index, pods, 1, WORKLOAD, { ...NO_RESERVATIONS, checkpointS: 900 });
    expect(r.preemptions).toBe(1);
    expect(r.wastedGpuS).toBe(100); // ran 1000 s, checkpointed at 900
    // Resumed at 1100 with 900 s kept: 2100 s more, so the third pod starts at 3200.
    expect(r.lastStartS).toBe(3200);
  });

  it('without checkpoints it restarts from zero', () => {
    const r = simulateTimeline('govloop', index, pods, 1, WORKLOAD, { ...NO_RESERVATIONS, checkpointS: 0 });
    expect(r.preemptions).toBe(1);
    expect(r.wastedGpuS).toBe(1000);
    expect(r.lastStartS).toBe(4100); // 1100 + 3000
  });

  it('FIFO never preempts', () => {
    const r = simulateTimeline('fifo', index, pods, 1, WORKLOAD);
    expect(r.preemptions).toBe(0);
    expect(r.wastedGpuS).toBe(0);
    expect(r.lastStartS).toBe(3100); // the second pod at 3000, the third at 3100
  });
});

describe('preemption', () => {
  it('does not evict when the freed room still cannot hold the new pod', () => {
    // node-00: 8 cores, runs a best-effort pod; node-01: 32 cores, runs a latency-sensitive pod.
    // The new latency-sensitive pod needs 16 cores: evicting the best-effort pod does not help.
    const index = cluster([{ cpuMilli: 8000 }, { cpuMilli: 32_000 }]);
    const pods = [
      pod({ arrival: 0, lifetime: 5000, priority: 0, req: { id: 'be', gpus: 1, cpuMilli: 4000, memoryMib: 1024 } }),
      pod({ arrival: 0, lifetime: 2000, priority: 2, req: { id: 'ls', gpus: 1, cpuMilli: 4000, memoryMib: 1024 } }),
      pod({ arrival: 10, lifetime: 100, priority: 2, req: { id: 'big-cpu', gpus: 1, cpuMilli: 16_000, memoryMib: 1024 } }),
    ];
    const r = simulateTimeline('govloop', index, pods, 1, WORKLOAD, NO_RESERVATIONS);
    expect(r.preemptions).toBe(0);
    expect(r.wastedGpuS).toBe(0);
    expect(r.lastStartS).toBe(2000); // it waits for node-01
  });

  it('never leaves GPUs idle to start a pod: evicted GPUs are at most the GPUs it takes', () => {
    // One node, 2 GPUs and 16 cores, two best-effort 1-GPU pods with 4 cores each. A
    // latency-sensitive half-GPU pod asking 16 cores would have to evict both (2 GPUs for 0.5).
    const index = cluster([{ gpus: 2, cpuMilli: 16_000 }]);
    const be = (id: string) => pod({ arrival: 0, lifetime: 1000, priority: 0, req: { id, gpus: 1, cpuMilli: 4000, memoryMib: 1024 } });
    const share = pod({ arrival: 10, lifetime: 100, priority: 2, req: { id: 'share', gpuMilli: 500, cpuMilli: 16_000, memoryMib: 1024 } });
    const r = simulateTimeline('govloop', index, [be('a'), be('b'), share], 1, WORKLOAD, NO_RESERVATIONS);
    expect(r.preemptions).toBe(0);
    expect(r.lastStartS).toBe(1000);

    // A 2-GPU latency-sensitive pod asking the same CPU takes what it evicts: preempted.
    const whole = pod({ arrival: 10, lifetime: 100, priority: 2, req: { id: 'whole', gpus: 2, cpuMilli: 16_000, memoryMib: 1024 } });
    const r2 = simulateTimeline('govloop', index, [be('a'), be('b'), whole], 1, WORKLOAD, NO_RESERVATIONS);
    expect(r2.preemptions).toBe(2);
  });

  it('reclaims quota only from pods of no higher priority', () => {
    // Two GPUs, two tenants with a quota of 1 each. Tenant 1 borrows with two latency-sensitive
    // pods; a best-effort pod of tenant 0 may not reclaim from them, a latency-sensitive one may.
    const index = cluster([{}, {}]);
    const borrower = (id: string) => pod({ arrival: 0, lifetime: 1000, tenant: 1, priority: 2, req: { id, gpus: 1, cpuMilli: 1000, memoryMib: 1024 } });
    const claim = (priority: number) =>
      pod({ arrival: 10, lifetime: 100, tenant: 0, priority, req: { id: `claim${priority}`, gpus: 1, cpuMilli: 1000, memoryMib: 1024 } });
    const be = simulateTimeline('govloop', index, [borrower('x'), borrower('y'), claim(0)], 2, WORKLOAD, NO_RESERVATIONS);
    expect(be.preemptions).toBe(0);
    const ls = simulateTimeline('govloop', index, [borrower('x'), borrower('y'), claim(2)], 2, WORKLOAD, NO_RESERVATIONS);
    expect(ls.preemptions).toBe(1);
    expect(ls.tenants[1]!.preemptions).toBe(1);
  });

  it('takes a reclaim victim only while its tenant still borrows', () => {
    // One 8-GPU node, two tenants with a quota of 4 GPUs. Tenant 0 asks for 2 GPUs and 46 cores,
    // which takes evicting two of tenant 1's 1-GPU, 14-core pods.
    const index = cluster([{ gpus: 8, cpuMilli: 96_000, memoryMib: 393_216, model: 'G2' }]);
    const gpu = (id: string, tenant: number, cpuMilli: number) => pod({ arrival: 0, lifetime: 1000, tenant, req: { id, gpus: 1, cpuMilli, memoryMib: 1024 } });
    const claim = (cpuMilli: number) => pod({ arrival: 10, lifetime: 100, tenant: 0, req: { id: 'claim', gpus: 2, cpuMilli, memoryMib: 1024 } });
    // Tenant 1 holds 5 GPUs (borrows 1): after the first victim it no longer borrows, so the
    // second may not be taken and nothing is preempted.
    const borrowsOne = [...['a', 'b', 'c', 'd', 'e'].map((id) => gpu(id, 1, 14_000)), gpu('f', 0, 4000), gpu('g', 0, 4000), claim(46_000)];
    expect(simulateTimeline('govloop', index, borrowsOne, 2, WORKLOAD, NO_RESERVATIONS).preemptions).toBe(0);
    // Tenant 1 holds 6 GPUs (borrows 2): both victims are taken while it borrows.
    const borrowsTwo = [...['a', 'b', 'c', 'd', 'e', 'f'].map((id) => gpu(id, 1, 14_000)), gpu('g', 0, 4000), claim(36_000)];
    const r = simulateTimeline('govloop', index, borrowsTwo, 2, WORKLOAD, NO_RESERVATIONS);
    expect(r.preemptions).toBe(2);
    expect(r.tenants[1]!.preemptions).toBe(2);
  });
});

describe('CPU kept for GPUs', () => {
  it('keeps the CPU and memory of the free GPUs, pro rata', () => {
    const index = cluster([{ gpus: 2, cpuMilli: 32_000, memoryMib: 64_000 }]);
    const empty = emptyState(index, { workload: WORKLOAD });
    expect(keptForGpus(empty)).toEqual([{ kind: 'cpu', node: 'node-00', gpus: [], cpuMilli: 32_000, memoryMib: 64_000 }]);
    const p = place(empty, { gpus: 1, cpuMilli: 4000, memoryMib: 4000 });
    if (!p.placed) throw new Error('not placed');
    expect(keptForGpus(commit(empty, p))).toEqual([{ kind: 'cpu', node: 'node-00', gpus: [], cpuMilli: 16_000, memoryMib: 32_000 }]);
  });

  it('keeps a CPU-only pod off a GPU node only while GPU pods wait', () => {
    const index = cluster([{ gpus: 1, cpuMilli: 16_000 }]);
    const gpu = (arrival: number, id: string) => pod({ arrival, lifetime: 1000, req: { id, gpus: 1, cpuMilli: 4000, memoryMib: 1024 } });
    const cpuOnly = pod({ arrival: 1, lifetime: 10, req: { id: 'cpu', cpuMilli: 8000, memoryMib: 1024 } });
    // Nothing waits for a GPU: the CPU-only pod starts at once on the idle node.
    const alone = simulateTimeline('govloop', index, [cpuOnly], 1, WORKLOAD, NO_RESERVATIONS);
    expect(alone.lastStartS).toBe(0);
    // The GPU is busy and a GPU pod waits: the GPU node keeps nothing back for a busy GPU, so the
    // CPU-only pod still starts; the rule only holds back the CPU of free GPUs.
    const busy = simulateTimeline('govloop', index, [gpu(0, 'g1'), gpu(0.5, 'g2'), cpuOnly], 1, WORKLOAD, NO_RESERVATIONS);
    expect(busy.meanDelayS).toBeCloseTo(999.5 / 3, 1); // only g2 waits (999.5 s)
  });
});

describe('reservations', () => {
  it('reserve the least-used GPU for a share that fits nowhere, so it drains', () => {
    const index = cluster([{ gpus: 2, cpuMilli: 64_000, memoryMib: 262_144 }]);
    const share = (gpu: number, milli: number): Assignment => ({
      kind: 'milli',
      node: 'node-00',
      gpus: [gpu],
      milli,
      sharing: 'mps',
      cpuMilli: 1000,
      memoryMib: 1024,
    });
    const st = commit(emptyState(index, { workload: WORKLOAD }), heldPlacement([share(0, 600), share(1, 300)]));
    const big: PlacementRequest = { gpuMilli: 800, cpuMilli: 2000, memoryMib: 2048 };
    expect(place(st, big).placed).toBe(false);
    const r = reservationFor(st, big)!;
    expect(r).toEqual([{ kind: 'milli', node: 'node-00', gpus: [1], milli: 700, sharing: 'mps', cpuMilli: 2000, memoryMib: 2048 }]);
    // With the reservation held, a small share goes to the other GPU only.
    const small = place(commit(st, heldPlacement(r)), { gpuMilli: 300, cpuMilli: 1000, memoryMib: 1024 });
    expect(small.placed && small.assignments[0]!.gpus).toEqual([0]);
  });

  it('reserve the node with the most free GPUs for a whole-node pod, its shared GPUs closed too', () => {
    const g2 = { gpus: 8, cpuMilli: 96_000, memoryMib: 393_216, model: 'G2' };
    const index = cluster([g2, g2]);
    const whole = (node: string, gpus: number[]): Assignment => ({ kind: 'whole', node, gpus, cpuMilli: 0, memoryMib: 0 });
    const st = commit(
      emptyState(index, { workload: WORKLOAD }),
      heldPlacement([
        whole('node-00', [0, 1, 2, 3, 4, 5, 6, 7]),
        whole('node-01', [0, 1]),
        { kind: 'milli', node: 'node-01', gpus: [2], milli: 500, sharing: 'mps', cpuMilli: 0, memoryMib: 0 },
      ]),
    );
    const r = reservationFor(st, { gpus: 8, cpuMilli: 88_000, memoryMib: 327_680, topology: { level: 'node', mode: 'required' } })!;
    expect(r).toEqual([
      { kind: 'whole', node: 'node-01', gpus: [3, 4, 5, 6, 7], cpuMilli: 88_000, memoryMib: 327_680 },
      { kind: 'milli', node: 'node-01', gpus: [2], milli: 500, sharing: 'mps', cpuMilli: 0, memoryMib: 0 },
    ]);
  });

  it('a starving whole-node pod gets a node while small pods keep arriving', () => {
    // One 2-GPU node. 1-GPU pods of 600 s arrive every 300 s, so one GPU always frees while the
    // other is busy: a 2-GPU pod starves behind them by backfill unless it holds a reservation.
    const index = cluster([{ gpus: 2, cpuMilli: 64_000, memoryMib: 262_144 }]);
    const small = Array.from({ length: 60 }, (_, i) =>
      pod({ arrival: i * 300, lifetime: 600, req: { id: `s${i}`, gpus: 1, cpuMilli: 1000, memoryMib: 1024 } }),
    );
    const whole = pod({
      arrival: 150,
      lifetime: 100,
      req: { id: 'whole', gpus: 2, cpuMilli: 1000, memoryMib: 1024, topology: { level: 'node', mode: 'required' } },
    });
    const without = simulateTimeline('govloop', index, [...small, whole], 1, WORKLOAD, { reservations: 0 });
    const withRes = simulateTimeline('govloop', index, [...small, whole], 1, WORKLOAD, { reserveAfterS: 600, reservations: 8 });
    const waitOfWhole = (r: ReturnType<typeof simulateTimeline>) => r.p99DelayS;
    expect(waitOfWhole(without)).toBeGreaterThan(15_000); // starts only after the small pods end
    expect(waitOfWhole(withRes)).toBeLessThan(1500);
  });
});
