import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { PoliciesFile } from '../../config/schema';
import {
  type Cohort,
  type CohortMember,
  type NodeCapacity,
  type QuotaDecision,
  type QuotaRequest,
  type QuotaState,
  type Workload,
  admitQuota,
  queueOrder,
} from '../../governance/quota';

const P = { low: 100, normal: 500, high: 1000 };

/** A small fluent builder of quota states: cohort teams, running workloads, waiting requests, nodes. */
class StateBuilder {
  private s: QuotaState = {
    gpuType: 'H100',
    cohort: null,
    flat: { quota: 8, policy: 'policies/t#defaultGpuQuota' },
    running: [],
    pending: [],
    policy: 'policies/t#cohorts[c]',
  };
  cohort(...teams: (Partial<CohortMember> & { team: string; nominal: number })[]): this {
    const c: Cohort = { name: 'c', gpuType: 'H100', teams: teams.map((t) => ({ tenant: 'acme', borrowingLimit: null, lendingLimit: null, weight: 1, ...t })) };
    this.s.cohort = c;
    return this;
  }
  flat(quota: number): this {
    this.s.flat = { quota, policy: 'policies/t#gpuQuotas[acme/a/H100]' };
    return this;
  }
  run(taskId: string, team: string, gpus: number, priority: number, more: Partial<Workload> = {}): this {
    this.s.running.push({ taskId, tenant: 'acme', team, gpus, priority, node: null, lostGpuSeconds: 0, ...more });
    return this;
  }
  wait(taskId: string, team: string, gpus: number, priority = P.normal, queuedAt = '2026-01-01T00:00:00Z'): this {
    this.s.pending.push({ taskId, tenant: 'acme', team, gpus, priority, queuedAt });
    return this;
  }
  /** policies.preemption.minRunSeconds */
  minRun(seconds: number): this {
    this.s.minRunSeconds = seconds;
    return this;
  }
  nodes(...n: NodeCapacity[]): this {
    this.s.nodes = n;
    return this;
  }
  /** The cluster's placement answer: can the request be placed once these tasks are gone? */
  fits(f: (freed: readonly string[]) => boolean): this {
    this.fitsFn = f;
    return this;
  }
  private fitsFn: QuotaState['fits'];
  build(): QuotaState {
    return { ...structuredClone(this.s), ...(this.fitsFn ? { fits: this.fitsFn } : {}) };
  }
}
const aState = () => new StateBuilder();
const ask = (team: string, gpus: number, priority = P.normal, taskId = 'req'): QuotaRequest => ({
  taskId,
  tenant: 'acme',
  team,
  gpus,
  priority,
  queuedAt: '2026-01-02T00:00:00Z',
});

interface Case {
  name: string;
  state: StateBuilder;
  req: QuotaRequest;
  want: QuotaDecision['decision'];
  wantMode?: 'nominal' | 'borrowing';
  wantBorrowed?: number;
  wantCode?: string;
  wantVictims?: string[];
  wantPosition?: number;
  wantAhead?: string;
  wantLimit?: number | null;
  wantMessage?: RegExp;
}

// Cohort "c" of H100: team a (nominal 4) and team b (nominal 4) unless a case says otherwise.
const ab = () => aState().cohort({ team: 'a', nominal: 4 }, { team: 'b', nominal: 4 });

const cases: Case[] = [
  { name: 'within nominal: admitted, nothing borrowed', state: ab(), req: ask('a', 4), want: 'admitted', wantMode: 'nominal', wantBorrowed: 0 },
  {
    name: "borrows the other team's idle quota",
    state: ab().run('b1', 'b', 4, P.normal),
    req: ask('b', 4),
    want: 'admitted',
    wantMode: 'borrowing',
    wantBorrowed: 4,
  },
  {
    name: 'partly nominal, partly borrowed',
    state: ab().run('b1', 'b', 2, P.normal),
    req: ask('b', 4),
    want: 'admitted',
    wantMode: 'borrowing',
    wantBorrowed: 2,
  },
  {
    name: 'GPU_QUOTA_EXCEEDED: more than nominal plus borrowingLimit',
    state: aState().cohort({ team: 'a', nominal: 4 }, { team: 'b', nominal: 4, borrowingLimit: 2 }),
    req: ask('b', 7),
    want: 'rejected',
    wantCode: 'GPU_QUOTA_EXCEEDED',
    wantLimit: 6,
  },
  {
    name: 'GPU_QUOTA_EXCEEDED: more than the cohort could ever lend',
    state: aState().cohort({ team: 'a', nominal: 4, lendingLimit: 1 }, { team: 'b', nominal: 4 }),
    req: ask('b', 6),
    want: 'rejected',
    wantCode: 'GPU_QUOTA_EXCEEDED',
    wantLimit: 5,
  },
  {
    name: 'GPU_QUOTA_BUSY: borrowing limit reached, nothing it may preempt',
    state: aState().cohort({ team: 'a', nominal: 4 }, { team: 'b', nominal: 4, borrowingLimit: 2 }).run('b1', 'b', 4, P.normal),
    req: ask('b', 4),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
    wantPosition: 1,
  },
  {
    name: 'lendingLimit: a team lends only part of its idle quota',
    state: aState().cohort({ team: 'a', nominal: 4, lendingLimit: 2 }, { team: 'b', nominal: 4 }).run('b1', 'b', 4, P.normal),
    req: ask('b', 3),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
  },
  {
    name: 'quota a team is waiting for is not idle: nobody borrows it',
    state: ab().run('b1', 'b', 4, P.normal).wait('a-wait', 'a', 4),
    req: ask('b', 4),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
    wantPosition: 2,
  },
  {
    name: 'minRunSeconds: a borrower that (re)started 60 s ago is shielded; the older one goes, though it loses more',
    state: ab()
      .minRun(300)
      .run('b-young', 'b', 4, P.low, { runSeconds: 60, lostGpuSeconds: 10 })
      .run('b-old', 'b', 4, P.low, { runSeconds: 1000, lostGpuSeconds: 4000 }),
    req: ask('a', 4),
    want: 'preempt',
    wantVictims: ['b-old'],
  },
  {
    name: 'minRunSeconds: every candidate too young: queued, and the reason names them',
    state: ab().minRun(300).run('b1', 'b', 8, P.low, { runSeconds: 60 }),
    req: ask('a', 4),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
    wantMessage: /1 workload\(s\) it could preempt started less than 300 s ago \(preemption\.minRunSeconds\): b1$/,
  },
  {
    name: 'minRunSeconds: a workload whose run time the cluster does not tell is not shielded',
    state: ab().minRun(300).run('b1', 'b', 8, P.low),
    req: ask('a', 4),
    want: 'preempt',
    wantVictims: ['b1'],
  },
  {
    name: 'minRunSeconds: a same-team lower-priority job past it is taken',
    state: aState().flat(4).minRun(300).run('a-low', 'a', 4, P.low, { runSeconds: 300 }),
    req: ask('a', 4, P.high),
    want: 'preempt',
    wantVictims: ['a-low'],
  },
  {
    name: 'reclaim: the borrower is preempted, not the higher-priority job of its team',
    state: ab().run('b-high', 'b', 4, P.high, { lostGpuSeconds: 10 }).run('b-low', 'b', 4, P.low, { lostGpuSeconds: 5000 }),
    req: ask('a', 4),
    want: 'preempt',
    wantVictims: ['b-low'],
  },
  {
    name: 'reclaim never preempts a job of higher priority than the preemptor',
    state: ab().run('b1', 'b', 4, P.high).run('b2', 'b', 4, P.high),
    req: ask('a', 4),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
  },
  {
    name: 'reclaim takes only what the borrower borrowed: its nominal work stays',
    state: ab()
      .run('b1', 'b', 2, P.low, { lostGpuSeconds: 1 })
      .run('b2', 'b', 2, P.low, { lostGpuSeconds: 2 })
      .run('b3', 'b', 2, P.low, { lostGpuSeconds: 3 })
      .run('a1', 'a', 2, P.normal),
    req: ask('a', 2),
    want: 'preempt',
    wantVictims: ['b1'],
  },
  {
    name: 'a team within its nominal does not reclaim from a team that does not borrow',
    state: ab().run('b1', 'b', 4, P.low).run('a1', 'a', 4, P.normal),
    req: ask('a', 2),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
  },
  {
    name: 'priority: a higher-priority job preempts lower-priority work of its own team (flat quota)',
    state: aState().flat(4).run('a-low', 'a', 4, P.low),
    req: ask('a', 4, P.high),
    want: 'preempt',
    wantVictims: ['a-low'],
  },
  {
    name: 'priority: equal priority is never preempted',
    state: aState().flat(4).run('a1', 'a', 4, P.normal),
    req: ask('a', 4, P.normal),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
    wantLimit: 0,
  },
  {
    name: 'fewest GPU-seconds lost since the checkpoints wins (kueue #477)',
    state: aState()
      .cohort({ team: 'a', nominal: 8 }, { team: 'b', nominal: 4 })
      .run('a1', 'a', 4, P.normal)
      .run('b-old', 'b', 4, P.low, { lostGpuSeconds: 9000 })
      .run('b-new', 'b', 4, P.low, { lostGpuSeconds: 400 }),
    req: ask('a', 4),
    want: 'preempt',
    wantVictims: ['b-new'],
  },
  {
    name: 'fewest GPU-seconds lost: two small victims beat one that lost more',
    state: aState()
      .cohort({ team: 'a', nominal: 4 }, { team: 'b', nominal: 6 })
      .run('w', 'b', 2, P.high)
      .run('x', 'b', 2, P.low, { lostGpuSeconds: 100 })
      .run('y', 'b', 2, P.low, { lostGpuSeconds: 100 })
      .run('z', 'b', 4, P.low, { lostGpuSeconds: 300 }),
    req: ask('a', 4),
    want: 'preempt',
    wantVictims: ['x', 'y'],
  },
  {
    name: 'node fit (kueue #5243): the cheaper victims would free GPUs on two nodes, the job needs one',
    state: aState()
      .cohort({ team: 'a', nominal: 4 }, { team: 'b', nominal: 6 })
      .run('w', 'b', 2, P.high, { node: 'n1' })
      .run('x', 'b', 2, P.low, { node: 'n1', lostGpuSeconds: 100 })
      .run('y', 'b', 2, P.low, { node: 'n2', lostGpuSeconds: 100 })
      .run('z', 'b', 4, P.low, { node: 'n3', lostGpuSeconds: 300 })
      .nodes({ name: 'n1', gpus: 4, used: 4 }, { name: 'n2', gpus: 4, used: 4 }, { name: 'n3', gpus: 4, used: 4 }),
    req: ask('a', 4),
    want: 'preempt',
    wantVictims: ['z'],
  },
  {
    // Team b borrows 32 of team a's; a 16-GPU gang of team a needs one rack. Freeing w and x
    // (cheapest) frees 16 GPUs over racks r1 and r2; only y and z share a rack (the cluster's
    // placement says so).
    name: 'gang fit (kueue #5243): victims must free one domain the gang is placed in, even if dearer',
    state: aState()
      .cohort({ team: 'a', nominal: 32 }, { team: 'b', nominal: 16 })
      .run('b-own', 'b', 16, P.high)
      .run('w', 'b', 8, P.low, { node: 'r1n1', lostGpuSeconds: 10 })
      .run('x', 'b', 8, P.low, { node: 'r2n1', lostGpuSeconds: 10 })
      .run('y', 'b', 8, P.low, { node: 'r3n1', lostGpuSeconds: 500 })
      .run('z', 'b', 8, P.low, { node: 'r3n2', lostGpuSeconds: 500 })
      .fits((freed) => freed.includes('y') && freed.includes('z')),
    req: ask('a', 16),
    want: 'preempt',
    wantVictims: ['y', 'z'],
  },
  {
    name: 'no victim set lets the gang be placed: it waits instead of preempting for nothing',
    state: aState()
      .cohort({ team: 'a', nominal: 32 }, { team: 'b', nominal: 16 })
      .run('b-own', 'b', 16, P.high)
      .run('w', 'b', 8, P.low, { node: 'r1n1' })
      .run('x', 'b', 8, P.low, { node: 'r2n1' })
      .run('y', 'b', 8, P.low, { node: 'r3n1' })
      .run('z', 'b', 8, P.low, { node: 'r4n1' })
      .fits(() => false),
    req: ask('a', 16),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
  },
  {
    name: 'shares count by their fraction: seven 1/7 MIG slices fill a nominal of one',
    state: ab()
      .run('a1', 'a', 3, P.normal)
      .run('s1', 'a', 0.143 * 6, P.normal),
    req: ask('a', 0.142),
    want: 'admitted',
    wantMode: 'nominal',
    wantBorrowed: 0,
  },
  {
    name: 'shares count by their fraction: a quarter more borrows a quarter',
    state: ab().run('a1', 'a', 3.75, P.normal),
    req: ask('a', 0.5),
    want: 'admitted',
    wantMode: 'borrowing',
    wantBorrowed: 0.25,
  },
  {
    name: 'a preemption under way: wait for it, choose no more victims',
    state: ab().run('b-high', 'b', 4, P.high).run('b-low', 'b', 4, P.low, { preempting: true }),
    req: ask('a', 4),
    want: 'queued',
    wantCode: 'PREEMPTION_PENDING',
  },
  {
    name: 'fair share: a borrower waits for a request ahead of it (lower dominant share) that fits now',
    state: aState()
      .cohort({ team: 'a', nominal: 8 }, { team: 'b', nominal: 2 }, { team: 'c', nominal: 2, weight: 2 })
      .run('b1', 'b', 2, P.normal)
      .run('c1', 'c', 2, P.normal)
      .wait('c-wait', 'c', 4),
    req: ask('b', 4),
    want: 'queued',
    wantCode: 'FAIR_SHARE_WAIT',
    wantPosition: 2,
    wantAhead: 'c-wait',
  },
  {
    name: 'fair share: the request ahead does not fit, so the borrower goes',
    state: aState()
      .cohort({ team: 'a', nominal: 8 }, { team: 'b', nominal: 2 }, { team: 'c', nominal: 2, weight: 2, borrowingLimit: 1 })
      .run('b1', 'b', 2, P.normal)
      .run('c1', 'c', 2, P.normal)
      .wait('c-wait', 'c', 4),
    req: ask('b', 4),
    want: 'admitted',
    wantMode: 'borrowing',
    wantBorrowed: 4,
  },
  {
    name: 'flat quota (no cohort): busy with the limit left',
    state: aState().flat(8).run('a1', 'a', 6, P.normal),
    req: ask('a', 4),
    want: 'queued',
    wantCode: 'GPU_QUOTA_BUSY',
    wantLimit: 2,
  },
];

describe('admitQuota', () => {
  it.each(cases)('$name', (c) => {
    const got = admitQuota(c.state.build(), c.req);
    expect(got.decision).toBe(c.want);
    if (got.decision === 'admitted') {
      if (c.wantMode) expect(got.mode).toBe(c.wantMode);
      if (c.wantBorrowed !== undefined) expect(got.borrowed).toBe(c.wantBorrowed);
    }
    if (got.decision !== 'admitted') {
      if (c.wantCode) expect(got.reason.code).toBe(c.wantCode);
      if (c.wantLimit !== undefined) expect(got.reason.limit).toBe(c.wantLimit);
      if (c.wantMessage) expect(got.reason.message).toMatch(c.wantMessage);
      expect(got.reason.policy).toMatch(/^policies\/t#/);
    }
    if (got.decision === 'preempt') expect(got.victims.map((v) => v.taskId).sort()).toEqual(c.wantVictims);
    if ((got.decision === 'queued' || got.decision === 'preempt') && c.wantPosition !== undefined) expect(got.position).toBe(c.wantPosition);
    // Only a fair-share wait names the request that goes first (admission wakes it).
    if (got.decision === 'queued') expect(got.ahead).toBe(c.wantAhead);
  });
});

describe('queueOrder', () => {
  it('orders by priority, then dominant share (usage / weight), then age', () => {
    const state = aState()
      .cohort({ team: 'a', nominal: 4 }, { team: 'b', nominal: 4, weight: 4 })
      .run('a1', 'a', 2, P.normal)
      .run('b1', 'b', 4, P.normal)
      .build();
    const r = (taskId: string, team: string, priority: number, queuedAt: string): QuotaRequest => ({
      taskId,
      tenant: 'acme',
      team,
      gpus: 1,
      priority,
      queuedAt,
    });
    const order = queueOrder(state, [
      r('a-old', 'a', P.normal, '2026-01-01T00:00:00Z'),
      r('b-new', 'b', P.normal, '2026-01-03T00:00:00Z'),
      r('a-high', 'a', P.high, '2026-01-04T00:00:00Z'),
      r('b-old', 'b', P.normal, '2026-01-02T00:00:00Z'),
    ]);
    // a's share 2/1 = 2, b's 4/4 = 1: b goes before a among equal priority.
    expect(order.map((x) => x.taskId)).toEqual(['a-high', 'b-old', 'b-new', 'a-old']);
  });
});

describe('admitQuota invariants (fast-check)', () => {
  const team = fc.constantFrom('a', 'b', 'c');
  const workload = fc.record({
    team,
    gpus: fc.integer({ min: 1, max: 4 }),
    priority: fc.constantFrom(P.low, P.normal, P.high),
    lost: fc.integer({ min: 0, max: 10_000 }),
  });
  const members = fc.record({
    a: fc.integer({ min: 0, max: 8 }),
    b: fc.integer({ min: 0, max: 8 }),
    c: fc.integer({ min: 0, max: 8 }),
    limit: fc.option(fc.integer({ min: 0, max: 4 }), { nil: null }),
  });

  it('never admits over the cohort, never preempts higher priority, and the preemptor fits once its victims are gone', () => {
    fc.assert(
      fc.property(
        members,
        fc.array(workload, { maxLength: 8 }),
        team,
        fc.integer({ min: 1, max: 6 }),
        fc.constantFrom(P.low, P.normal, P.high),
        (m, ws, t, gpus, priority) => {
          const b = aState().cohort(
            { team: 'a', nominal: m.a, borrowingLimit: m.limit },
            { team: 'b', nominal: m.b, borrowingLimit: m.limit },
            { team: 'c', nominal: m.c, borrowingLimit: m.limit },
          );
          // Only states the quota allows: add workloads while they fit.
          let s = b.build();
          ws.forEach((w, i) => {
            const d = admitQuota(s, { taskId: `w${i}`, tenant: 'acme', team: w.team, gpus: w.gpus, priority: w.priority, queuedAt: '2026-01-01T00:00:00Z' });
            if (d.decision === 'admitted')
              s = {
                ...s,
                running: [
                  ...s.running,
                  { taskId: `w${i}`, tenant: 'acme', team: w.team, gpus: w.gpus, priority: w.priority, node: null, lostGpuSeconds: w.lost },
                ],
              };
          });
          const total = m.a + m.b + m.c;
          const used = (r: Workload[]) => r.reduce((x, w) => x + w.gpus, 0);
          expect(used(s.running)).toBeLessThanOrEqual(total);
          const d = admitQuota(s, ask(t, gpus, priority));
          if (d.decision === 'admitted') expect(used(s.running) + gpus).toBeLessThanOrEqual(total);
          if (d.decision === 'preempt') {
            expect(d.victims.every((v) => v.priority <= priority)).toBe(true);
            const ids = new Set(d.victims.map((v) => v.taskId));
            const after = { ...s, running: s.running.filter((w) => !ids.has(w.taskId)) };
            expect(admitQuota(after, ask(t, gpus, priority)).decision).toBe('admitted');
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('policies.preemption', () => {
  // The shipped policies, with only `preemption` changed.
  const base = parseYaml(readFileSync(join(__dirname, '../../config/policies.yaml'), 'utf8')) as Record<string, unknown>;
  it('defaults minRunSeconds to 0 (no shield) and keeps graceMillis', () => {
    expect(PoliciesFile.parse({ ...base, preemption: { graceMillis: 1000 } }).preemption).toEqual({ graceMillis: 1000, minRunSeconds: 0 });
  });
  it('refuses a negative minRunSeconds and names the field', () => {
    const r = PoliciesFile.safeParse({ ...base, preemption: { minRunSeconds: -5 } });
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.path.join('.'))).toEqual(['preemption.minRunSeconds']);
  });
});
