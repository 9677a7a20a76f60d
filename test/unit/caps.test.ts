import { describe, expect, it } from 'vitest';
import type { KindLimits } from '../../config/schema';
import { type ClusterCapInput, type EffectiveCaps, clusterCapBreach, resolveCaps } from '../../governance/caps';
import type { Caps } from '../../governance/intent';
import type { Reason } from '../../governance/reasons';

const limits: KindLimits = {
  maxContextTokens: 32_000,
  maxSteps: 10,
  maxToolCalls: 5,
  maxTokens: 1_000_000,
  maxUsd: 500,
  maxGpuHours: 100,
  maxGpusPerTask: 8,
  maxRiskClass: 'medium',
};
const ceilings: EffectiveCaps = {
  maxContextTokens: 32_000,
  maxSteps: 10,
  maxToolCalls: 5,
  maxTokens: 1_000_000,
  maxUsd: 500,
  maxGpuHours: 100,
  deadline: null,
};

describe('resolveCaps', () => {
  it.each<{ name: string; caps: Caps; wantCaps: EffectiveCaps; wantReasons: Pick<Reason, 'code' | 'limit' | 'requested' | 'policy'>[] }>([
    { name: 'an intent without caps runs under the ceilings', caps: {}, wantCaps: ceilings, wantReasons: [] },
    { name: 'caps below the ceilings are kept', caps: { maxUsd: 20, maxSteps: 3 }, wantCaps: { ...ceilings, maxUsd: 20, maxSteps: 3 }, wantReasons: [] },
    {
      name: 'a cap of 0 is a cap, not a missing one',
      caps: { maxToolCalls: 0, maxGpuHours: 0 },
      wantCaps: { ...ceilings, maxToolCalls: 0, maxGpuHours: 0 },
      wantReasons: [],
    },
    { name: 'caps equal to the ceilings are allowed', caps: { maxUsd: 500, maxTokens: 1_000_000 }, wantCaps: ceilings, wantReasons: [] },
    {
      name: 'the deadline passes through',
      caps: { deadline: '2099-01-01T00:00:00.000Z' },
      wantCaps: { ...ceilings, deadline: '2099-01-01T00:00:00.000Z' },
      wantReasons: [],
    },
    {
      name: 'a cap over its ceiling gives that cap’s reason',
      caps: { maxUsd: 500.01 },
      wantCaps: { ...ceilings, maxUsd: 500.01 },
      wantReasons: [{ code: 'CAP_MAX_USD', limit: 500, requested: 500.01, policy: 'policies/p1#kinds.batch.maxUsd' }],
    },
    {
      name: 'every cap over its ceiling gives its own reason',
      caps: { maxContextTokens: 32_001, maxSteps: 11, maxToolCalls: 6, maxTokens: 1_000_001, maxUsd: 501, maxGpuHours: 101 },
      wantCaps: { maxContextTokens: 32_001, maxSteps: 11, maxToolCalls: 6, maxTokens: 1_000_001, maxUsd: 501, maxGpuHours: 101, deadline: null },
      wantReasons: [
        { code: 'CAP_MAX_CONTEXT_TOKENS', limit: 32_000, requested: 32_001, policy: 'policies/p1#kinds.batch.maxContextTokens' },
        { code: 'CAP_MAX_STEPS', limit: 10, requested: 11, policy: 'policies/p1#kinds.batch.maxSteps' },
        { code: 'CAP_MAX_TOOL_CALLS', limit: 5, requested: 6, policy: 'policies/p1#kinds.batch.maxToolCalls' },
        { code: 'CAP_MAX_TOKENS', limit: 1_000_000, requested: 1_000_001, policy: 'policies/p1#kinds.batch.maxTokens' },
        { code: 'CAP_MAX_USD', limit: 500, requested: 501, policy: 'policies/p1#kinds.batch.maxUsd' },
        { code: 'CAP_MAX_GPU_HOURS', limit: 100, requested: 101, policy: 'policies/p1#kinds.batch.maxGpuHours' },
      ],
    },
  ])('$name', ({ caps, wantCaps, wantReasons }) => {
    const got = resolveCaps({ kind: 'batch', caps }, limits, 'p1');
    expect(got.caps).toEqual(wantCaps);
    expect(got.reasons.map(({ code, limit, requested, policy }) => ({ code, limit, requested, policy }))).toEqual(wantReasons);
  });
});

describe('clusterCapBreach', () => {
  const caps = { maxUsd: 10, maxGpuHours: 2, deadline: '2030-01-01T00:00:00.000Z' };
  const before = new Date('2029-12-31T00:00:00.000Z');
  const after = new Date('2030-01-02T00:00:00.000Z');
  const stopped = { caps, gpus: 1, microsPerGpuSecond: 1000, used: { gpuSeconds: 7200, costMicros: 7_200_000 } };
  it.each<{ name: string; x: ClusterCapInput; want: Pick<Reason, 'code' | 'message' | 'limit' | 'requested' | 'policy'> | null }>([
    { name: 'within every cap: no breach', x: { caps, used: { gpuSeconds: 3600, costMicros: 5_000_000 }, running: true, now: before }, want: null },
    {
      name: 'past maxGpuHours',
      x: { caps, used: { gpuSeconds: 7201, costMicros: 1 }, running: true, now: before },
      want: { code: 'CAP_MAX_GPU_HOURS', message: 'used 2.000 GPU-hours, cap 2', limit: 2, requested: 7201 / 3600, policy: 'task#caps.maxGpuHours' },
    },
    {
      name: 'past maxUsd',
      x: { caps, used: { gpuSeconds: 0, costMicros: 10_000_001 }, running: true, now: before },
      want: { code: 'CAP_MAX_USD', message: 'spent $10.00, cap $10', limit: 10, requested: 10.000001, policy: 'task#caps.maxUsd' },
    },
    {
      name: 'past the deadline while running',
      x: { caps, used: { gpuSeconds: 0, costMicros: 0 }, running: true, now: after },
      want: {
        code: 'CAP_DEADLINE',
        message: 'deadline 2030-01-01T00:00:00.000Z passed while running',
        limit: caps.deadline,
        requested: after.toISOString(),
        policy: 'task#caps.deadline',
      },
    },
    { name: 'past the deadline but not running: no breach', x: { caps, used: { gpuSeconds: 0, costMicros: 0 }, running: false, now: after }, want: null },
    {
      name: 'stopped at a run limit set by maxGpuHours',
      x: { caps, used: { gpuSeconds: 7200, costMicros: 7_200_000 }, running: false, now: before, stoppedAtRunLimit: { ...stopped, reservationMicros: null } },
      want: {
        code: 'CAP_MAX_GPU_HOURS',
        message: 'the cluster stopped the job at its run limit: 2.000 GPU-hours used, cap 2',
        limit: 2,
        requested: 2,
        policy: 'task#caps.maxGpuHours',
      },
    },
    {
      name: 'stopped at a run limit set by a reservation below maxUsd',
      x: {
        caps,
        used: { gpuSeconds: 3000, costMicros: 3_000_000 },
        running: false,
        now: before,
        stoppedAtRunLimit: { ...stopped, used: { gpuSeconds: 3000, costMicros: 3_000_000 }, reservationMicros: 3_000_000 },
      },
      want: {
        code: 'CAP_MAX_USD',
        message: 'the cluster stopped the job at its run limit: $3.0000 spent, cap $3.0000 (its reservation)',
        limit: 10,
        requested: 3,
        policy: 'task#caps.maxUsd',
      },
    },
  ])('$name', ({ x, want }) => {
    expect(clusterCapBreach(x)).toEqual(want);
  });
});
