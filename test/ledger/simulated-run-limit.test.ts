import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type JobSpec, jobName } from '../../cluster/backend';
import type { Sharing } from '../../governance/intent';
import { SimulatedCluster } from '../../cluster/simulated/backend';
import { ClusterFile } from '../../config/schema';
import { type Ledger, backends } from './backends';

/** Whole H100s for gangs, an A100 node cut into MIG instances, an A100 node shared by MPS / time-slicing. */
const config = (name: string) =>
  ClusterFile.parse({
    name,
    gpuTypes: { H100: { memoryGb: 80, migProfiles: [] }, A100: { memoryGb: 80, migProfiles: ['1g.10gb', '3g.40gb'] } },
    nodes: [
      { name: 'h0', gpuType: 'H100', gpus: 8, rack: 'r0', block: 'b0' },
      { name: 'mig0', gpuType: 'A100', gpus: 8, rack: 'r1', block: 'b0', sharing: { mig: true } },
      { name: 'mps0', gpuType: 'A100', gpus: 8, rack: 'r1', block: 'b0', sharing: { mps: true, timeslice: true } },
    ],
  });

type Shape = { gpus: number; gpuType: string; sharing: Sharing; gpuMilli?: number };
const shapes: Shape[] = [
  { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
  { gpus: 8, gpuType: 'H100', sharing: 'exclusive' },
  { gpus: 2, gpuType: 'A100', sharing: 'mig:1g.10gb' },
  { gpus: 1, gpuType: 'A100', sharing: 'mps', gpuMilli: 500 },
  { gpus: 1, gpuType: 'A100', sharing: 'timeslice', gpuMilli: 250 },
];

const spec = (shape: Shape, durationSeconds: number): JobSpec => {
  const taskId = `rl-${randomUUID().slice(0, 8)}`;
  return {
    name: jobName(taskId),
    taskId,
    ...shape,
    priorityClass: 'govloop-normal',
    labels: {},
    runtime: { image: 'x', command: ['x'], env: {} },
    simulation: { durationSeconds, tokensPerSecond: 0, failAfterSeconds: null },
  };
};

describe.each(backends)('the simulated cluster stops a job at its run limit on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('stops at exactly the limit in simulated time, however long after it anyone looks: Failed, deadlineExceeded, no second more metered', async () => {
    let now = Date.parse('2026-06-01T00:00:00Z');
    const cluster = new SimulatedCluster(ledger.db, config(`rl-${randomUUID().slice(0, 6)}`), 600, () => new Date(now));
    await cluster.sync();
    const s = spec(shapes[0]!, 1800);
    expect((await cluster.create(s)).ok).toBe(true);
    await cluster.resume(s.name, { maxRunSeconds: 720 });
    now += 1000; // 600 simulated seconds
    expect(await cluster.status(s.name)).toMatchObject({ phase: 'Running', gpuSeconds: 600 });
    now += 60_000; // a minute of wall time: 36,000 simulated seconds, far past the limit
    const st = await cluster.status(s.name);
    expect(st).toMatchObject({ phase: 'Failed', deadlineExceeded: true, gpuSeconds: 720, progressSeconds: 720 });
    expect(st!.message).toMatch(/DeadlineExceeded/);
    now += 60_000;
    expect((await cluster.status(s.name))!.gpuSeconds).toBe(720);
    await cluster.delete(s.name);
  });

  it('a limit of 0 runs nothing; a job that finishes before its limit Succeeds; no limit runs to the end', async () => {
    let now = Date.parse('2026-06-01T00:00:00Z');
    const cluster = new SimulatedCluster(ledger.db, config(`rl-${randomUUID().slice(0, 6)}`), 100, () => new Date(now));
    await cluster.sync();
    const [zero, short, unlimited] = [spec(shapes[0]!, 600), spec(shapes[0]!, 600), spec(shapes[0]!, 600)];
    for (const s of [zero, short, unlimited]) expect((await cluster.create(s)).ok).toBe(true);
    await cluster.resume(zero.name, { maxRunSeconds: 0 });
    await cluster.resume(short.name, { maxRunSeconds: 10_000 });
    await cluster.resume(unlimited.name);
    now += 60_000;
    expect(await cluster.status(zero.name)).toMatchObject({ phase: 'Failed', deadlineExceeded: true, gpuSeconds: 0 });
    const done = await cluster.status(short.name);
    expect(done).toMatchObject({ phase: 'Succeeded', gpuSeconds: 600 });
    expect(done!.deadlineExceeded).toBeUndefined();
    expect(await cluster.status(unlimited.name)).toMatchObject({ phase: 'Succeeded', gpuSeconds: 600 });
    for (const s of [zero, short, unlimited]) await cluster.delete(s.name);
  });

  it('property: for any speed-up (1-3600), look interval, shape (gang, MIG, MPS, time-slice) and preemptions, a job never runs past the limit its last resume gave it', async () => {
    const cluster0 = `rl-${randomUUID().slice(0, 6)}`;
    let now = Date.parse('2026-06-01T00:00:00Z');
    let speedup = 1;
    // One SimulatedCluster per speed-up, all over the same nodes and jobs.
    const clusters = new Map<number, SimulatedCluster>();
    const at = (s: number) => {
      let c = clusters.get(s);
      if (!c) clusters.set(s, (c = new SimulatedCluster(ledger.db, config(cluster0), s, () => new Date(now))));
      return c;
    };
    await at(1).sync();
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          speedup: fc.integer({ min: 1, max: 3600 }),
          shape: fc.constantFrom(...shapes),
          duration: fc.integer({ min: 60, max: 200_000 }),
          // Resumes (the first, then one after each preemption): each with its own run limit and looks.
          segments: fc.array(
            fc.record({
              limit: fc.double({ min: 0, max: 50_000, noNaN: true }),
              looksMs: fc.array(fc.integer({ min: 1, max: 120_000 }), { minLength: 1, maxLength: 6 }),
            }),
            { minLength: 1, maxLength: 3 },
          ),
        }),
        async (x) => {
          speedup = x.speedup;
          const cluster = at(speedup);
          const s = spec(x.shape, x.duration);
          expect((await cluster.create(s)).ok).toBe(true);
          let ranBefore = 0;
          for (const [i, seg] of x.segments.entries()) {
            if (i > 0) {
              const st = await cluster.status(s.name);
              if (st!.phase !== 'Running') break;
              await cluster.suspend(s.name);
              expect((await cluster.create(s)).ok).toBe(true);
            }
            ranBefore = (await cluster.status(s.name))!.gpuSeconds / s.gpus;
            await cluster.resume(s.name, { maxRunSeconds: seg.limit });
            let wall = 0;
            for (const ms of seg.looksMs) {
              now += ms;
              wall += ms;
              const st = (await cluster.status(s.name))!;
              const ran = st.gpuSeconds / s.gpus - ranBefore;
              const expected = Math.min((wall / 1000) * speedup, seg.limit, x.duration - (st.progressSeconds - ran));
              expect(ran).toBeLessThanOrEqual(seg.limit + 1e-6);
              expect(ran).toBeCloseTo(Math.max(0, expected), 3);
              if (st.phase !== 'Running') {
                expect(st.deadlineExceeded === true).toBe(ran >= seg.limit - 1e-6 && st.progressSeconds < x.duration);
                break;
              }
            }
          }
          await cluster.delete(s.name);
        },
      ),
      { numRuns: backend.name === 'pglite' ? 40 : 60 },
    );
  });
});
