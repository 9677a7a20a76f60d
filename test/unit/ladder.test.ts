import { describe, expect, it } from 'vitest';
import {
  DEFAULT_LADDER,
  LadderConfig,
  type LadderStep,
  burnShare,
  forecast,
  ladderMove,
  ladderStep,
  leaseFactor,
  leaseSize,
  preemptionVictim,
  ladderDegrade,
  queuesAdmissions,
  shouldDegrade,
} from '../../governance/ladder';

describe('ladderStep (default thresholds 50 / 80 / 100 / 110 %)', () => {
  const cases: { share: number; want: LadderStep }[] = [
    { share: 0, want: 'ok' },
    { share: 49.999, want: 'ok' },
    { share: 50, want: 'notify' },
    { share: 79.99, want: 'notify' },
    { share: 80, want: 'throttle' },
    { share: 99.99, want: 'throttle' },
    { share: 100, want: 'queue' },
    { share: 109.99, want: 'queue' },
    { share: 110, want: 'preempt' },
    { share: Infinity, want: 'preempt' },
  ];
  it.each(cases)('$share % → $want', ({ share, want }) => expect(ladderStep(share)).toBe(want));

  it('takes its thresholds from config', () => {
    const l = LadderConfig.parse({ notifyAt: 10, throttleAt: 20, queueAt: 30, preemptAt: 40 });
    expect([9, 10, 25, 35, 40].map((x) => ladderStep(x, l))).toEqual(['ok', 'notify', 'throttle', 'queue', 'preempt']);
  });

  it('refuses thresholds out of order, naming the rule', () => {
    const r = LadderConfig.safeParse({ notifyAt: 90, throttleAt: 80 });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toMatch(/notifyAt ≤ throttleAt/);
  });
});

describe('burnShare', () => {
  it('counts what is reserved as well as what is spent, exactly', () => {
    expect(burnShare({ limitMicros: 100_000_000, spentMicros: 30_000_000, reservedMicros: 50_000_000 })).toBe(80);
    expect(burnShare({ limitMicros: 0, spentMicros: 0, reservedMicros: 0 })).toBe(0);
    expect(burnShare({ limitMicros: 0, spentMicros: 1, reservedMicros: 0 })).toBe(Infinity);
  });
});

describe('ladderMove', () => {
  const cases: { name: string; from: LadderStep; share: number; want: ReturnType<typeof ladderMove> }[] = [
    { name: 'stays', from: 'notify', share: 60, want: { kind: 'none', step: 'notify' } },
    { name: 'one step up fires it', from: 'ok', share: 55, want: { kind: 'up', from: 'ok', step: 'notify', fired: ['notify'] } },
    {
      name: 'a jump fires every step crossed, lowest first',
      from: 'ok',
      share: 105,
      want: { kind: 'up', from: 'ok', step: 'queue', fired: ['notify', 'throttle', 'queue'] },
    },
    { name: 'down fires nothing', from: 'queue', share: 70, want: { kind: 'down', from: 'queue', step: 'notify' } },
    { name: 'up again after down fires again', from: 'notify', share: 85, want: { kind: 'up', from: 'notify', step: 'throttle', fired: ['throttle'] } },
  ];
  it.each(cases)('$name', ({ from, share, want }) => expect(ladderMove(from, share)).toEqual(want));
});

describe('what each step enforces', () => {
  it('degrades non-critical work from throttle on, critical work only from the hard limit', () => {
    expect([
      shouldDegrade('notify', 79, false),
      shouldDegrade('throttle', 80, false),
      shouldDegrade('throttle', 95, true),
      shouldDegrade('queue', 100, true),
    ]).toEqual([false, true, false, true]);
    expect(shouldDegrade('notify', 75, false, LadderConfig.parse({ degradeAt: 70 }))).toBe(true);
  });
  it('degrades a use case whose SLO forbids the fallback only from the queue step, whatever degradeAt says', () => {
    const steps: LadderStep[] = ['ok', 'notify', 'throttle', 'queue', 'preempt'];
    expect(steps.map((s) => shouldDegrade(s, 100, false, DEFAULT_LADDER, { forbidsFallback: true }))).toEqual([false, false, false, true, true]);
    expect(shouldDegrade('notify', 75, false, LadderConfig.parse({ degradeAt: 70 }), { forbidsFallback: true })).toBe(false);
    expect(shouldDegrade('throttle', 90, false, DEFAULT_LADDER, { forbidsFallback: false })).toBe(true);
  });
  it('ladderDegrade names the windows an SLO held off, and none once a window has reached queue', () => {
    const team = { id: 'team', step: 'throttle' as LadderStep, sharePct: 85 };
    const tenant = { id: 'tenant', step: 'notify' as LadderStep, sharePct: 60 };
    expect(ladderDegrade([team, tenant], false)).toEqual({ degrade: true, held: [] });
    expect(ladderDegrade([team, tenant], false, DEFAULT_LADDER, true)).toEqual({ degrade: false, held: [team] });
    const full = { id: 'tenant', step: 'queue' as LadderStep, sharePct: 101 };
    expect(ladderDegrade([team, full], false, DEFAULT_LADDER, true)).toEqual({ degrade: true, held: [] });
    // Critical work is degraded last already: nothing for an SLO to hold.
    expect(ladderDegrade([team], true, DEFAULT_LADDER, true)).toEqual({ degrade: false, held: [] });
  });
  it('queues admissions from the queue step', () => {
    expect((['ok', 'notify', 'throttle', 'queue', 'preempt'] as LadderStep[]).map(queuesAdmissions)).toEqual([false, false, false, true, true]);
  });
  it('shrinks leases from throttle on', () => {
    expect([leaseFactor('notify'), leaseFactor('throttle'), leaseFactor('preempt')]).toEqual([
      1,
      DEFAULT_LADDER.throttleLeaseFactor,
      DEFAULT_LADDER.throttleLeaseFactor,
    ]);
  });
});

describe('preemptionVictim', () => {
  const w = (taskId: string, priority: number, critical = false, gpuHoursAtRisk = 1) => ({ taskId, priority, critical, gpuHoursAtRisk });
  it('takes the lowest priority, then the least GPU time lost', () => {
    expect(preemptionVictim([w('a', 500), w('b', 100, false, 3), w('c', 100, false, 2)])?.taskId).toBe('c');
  });
  it('never takes critical work while other work runs', () => {
    expect(preemptionVictim([w('crit', 10, true), w('normal', 500)])?.taskId).toBe('normal');
    expect(preemptionVictim([w('crit', 10, true)])?.taskId).toBe('crit');
    expect(preemptionVictim([])).toBeNull();
  });
});

describe('forecast', () => {
  it('projects the burn rate over what is left of the window', () => {
    const f = forecast({
      spentUsd: 10,
      windowStart: new Date('2026-11-01T00:00:00Z'),
      windowEnd: new Date('2026-12-01T00:00:00Z'),
      now: new Date('2026-11-11T00:00:00Z'),
      recentUsdPerHour: 0.5,
    });
    expect(f).toEqual({ burnUsdPerHour: 0.5, forecastUsd: 10 + 0.5 * 20 * 24 });
    expect(forecast({ spentUsd: 10, windowStart: new Date(0), windowEnd: null, now: new Date(3_600_000 * 10), recentUsdPerHour: null })).toEqual({
      burnUsdPerHour: 1,
      forecastUsd: null,
    });
  });
});

describe('leaseSize', () => {
  const base = { requestedMicros: 10_000_000, burnMicrosPerHour: 0, ttlSeconds: 300, step: 'ok' as LadderStep, headroomMicros: 1_000_000_000 };
  const cases: { name: string; over: Partial<typeof base>; want: number }[] = [
    { name: 'what was asked, with room and no burn history', over: {}, want: 10_000_000 },
    { name: 'no more than two lease lifetimes of the burn rate', over: { burnMicrosPerHour: 12_000_000 }, want: 2_000_000 },
    { name: 'halved under throttle', over: { step: 'throttle' }, want: 5_000_000 },
    { name: 'a quarter of the headroom at most', over: { headroomMicros: 8_000_000 }, want: 2_000_000 },
    { name: 'nothing at the queue step', over: { step: 'queue' }, want: 0 },
  ];
  it.each(cases)('$name', ({ over, want }) => expect(leaseSize({ ...base, ...over })).toBe(want));
});
