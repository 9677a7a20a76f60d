import { describe, expect, it } from 'vitest';
import { type Timing, queuedWaitMillis } from '../../config/task-queues';
import { RequeueSignalSchema } from '../../workflows/schemas';

const timing: Timing = { pollMillis: 500, queueRetryMillis: 1000, queueRecheckMillis: 60_000, dispatchQueue: 'q' };
const busy = [{ code: 'GPU_QUOTA_BUSY' }];

describe('how long a queued task waits before it asks again unwoken (decision 0034)', () => {
  it('waiting for quota: one recheck for the first ten places, one more per ten places behind, at most ten', () => {
    expect([1, 10, 11, 20, 21, 95, 100, 101, 15_000].map((p) => queuedWaitMillis(timing, busy, true, p))).toEqual([
      60_000, 60_000, 120_000, 120_000, 180_000, 600_000, 600_000, 600_000, 600_000,
    ]);
    expect(queuedWaitMillis(timing, [{ code: 'FAIR_SHARE_WAIT' }], true, 3)).toBe(60_000);
    // Place unknown (the reservation's re-check refused it): as at the head.
    expect(queuedWaitMillis(timing, busy, true)).toBe(60_000);
  });

  it('waiting for anything a release does not announce: queueRetryMillis, as before', () => {
    for (const code of ['PREEMPTION_PENDING', 'BUDGET_LADDER_QUEUE', 'GPU_CAPACITY_BUSY'])
      expect(queuedWaitMillis(timing, [{ code: 'GPU_QUOTA_BUSY' }, { code }], true, 50)).toBe(1000);
    expect(queuedWaitMillis(timing, [], true, 1)).toBe(1000);
  });

  it('after an ask a release may have passed it by (its first, with room found on the re-read; or admitted, then refused by the reservation): queueRetryMillis', () => {
    expect(queuedWaitMillis(timing, busy, false, 1)).toBe(1000);
    expect(queuedWaitMillis(timing, busy, false, 500)).toBe(1000);
  });

  it('an admission answer from before the recheck (a replayed history): queueRetryMillis; never shorter than it', () => {
    const { queueRecheckMillis: _, ...old } = timing;
    expect(queuedWaitMillis(old, busy, true, 500)).toBe(1000);
    expect(queuedWaitMillis({ ...timing, queueRecheckMillis: 10 }, busy, true, 1)).toBe(1000);
  });

  it('the requeue signal names who released the GPUs, and nothing else', () => {
    expect(RequeueSignalSchema.safeParse({ releasedBy: 'train-1' }).success).toBe(true);
    for (const bad of [undefined, {}, { releasedBy: '' }, { releasedBy: 7 }, { releasedBy: 't', credential: 'x' }])
      expect(RequeueSignalSchema.safeParse(bad).success).toBe(false);
  });
});
