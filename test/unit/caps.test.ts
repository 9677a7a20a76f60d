import { describe, expect, it } from 'vitest';
import type { KindLimits } from '../../config/schema';
import { type EffectiveCaps, resolveCaps } from '../../governance/caps';
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
