import { describe, expect, it } from 'vitest';
import { type FlatQuotaAsk, decideFlatQuota } from '../../governance/flat-quota';
import { type QuotaState, admitQuota } from '../../governance/quota';

// decideFlatQuota is the one flat-quota rule: admit() calls it over a snapshot, reserve() again under the team's quota lock.
describe('decideFlatQuota', () => {
  const ask = (over: Partial<FlatQuotaAsk>): FlatQuotaAsk => ({
    team: 'search',
    gpuType: 'H100',
    asked: 2,
    inUse: 0,
    quota: 4,
    policy: 'policies/default#gpuQuotas[acme/search/H100]',
    ...over,
  });

  it('exactly filling the quota fits; one GPU more waits (GPU_QUOTA_BUSY)', () => {
    expect(decideFlatQuota(ask({ inUse: 2 }))).toBeNull();
    expect(decideFlatQuota(ask({ inUse: 3 }))).toEqual({
      code: 'GPU_QUOTA_BUSY',
      message: 'team search holds 3 of 4 H100 GPUs; 2 more must wait',
      limit: 1,
      requested: 2,
      policy: 'policies/default#gpuQuotas[acme/search/H100]',
    });
  });

  it('more than the quota can never fit (GPU_QUOTA_EXCEEDED), whatever the team holds', () => {
    const exceeded = {
      code: 'GPU_QUOTA_EXCEEDED',
      message: "6 H100 GPUs is above team search's quota 4",
      limit: 4,
      requested: 6,
      policy: 'policies/default#gpuQuotas[acme/search/H100]',
    };
    expect(decideFlatQuota(ask({ asked: 6 }))).toEqual(exceeded);
    expect(decideFlatQuota(ask({ asked: 6, inUse: 3 }))).toEqual(exceeded);
  });

  it('the default quota: a quota of 0 refuses any GPU', () => {
    expect(decideFlatQuota(ask({ asked: 1, quota: 0, policy: 'policies/default#defaultGpuQuota' }))).toMatchObject({
      code: 'GPU_QUOTA_EXCEEDED',
      message: "1 H100 GPUs is above team search's quota 0",
      policy: 'policies/default#defaultGpuQuota',
    });
  });

  it('shares add up exactly: 0.1 + 0.2 of a quota of 0.3 fits (no floating-point busy)', () => {
    expect(decideFlatQuota(ask({ asked: 0.2, inUse: 0.1, quota: 0.3 }))).toBeNull();
    expect(decideFlatQuota(ask({ gpuType: 'A100', asked: 0.5, inUse: 0.75, quota: 1 }))).toMatchObject({
      code: 'GPU_QUOTA_BUSY',
      message: 'team search holds 0.75 of 1 A100 GPUs; 0.5 more must wait',
      limit: 0.25,
      requested: 0.5,
    });
  });

  it("admission's quota decision (admitQuota, a team in no cohort) says what decideFlatQuota says", () => {
    const state = (held: number[]): QuotaState => ({
      gpuType: 'H100',
      cohort: null,
      flat: { quota: 4, policy: 'policies/default#gpuQuotas[acme/search/H100]' },
      running: held.map((gpus, i) => ({ taskId: `t${i}`, tenant: 'acme', team: 'search', gpus, priority: 500, node: null, lostGpuSeconds: 0 })),
      pending: [],
    });
    const req = (gpus: number) => ({ taskId: 'new', tenant: 'acme', team: 'search', gpus, priority: 500, queuedAt: '2026-06-01T00:00:00Z' });
    expect(admitQuota(state([1, 1]), req(2))).toMatchObject({ decision: 'admitted' });
    expect(admitQuota(state([1, 2]), req(2))).toMatchObject({ decision: 'queued', reason: decideFlatQuota(ask({ inUse: 3 })) });
    expect(admitQuota(state([]), req(6))).toEqual({ decision: 'rejected', reason: decideFlatQuota(ask({ asked: 6 })) });
  });
});
