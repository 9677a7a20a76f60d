import { z } from 'zod';

/**
 * The budget enforcement ladder: how a budget scope's burn turns into runtime policy. Pure
 * functions over plain numbers; the budgetController workflow applies what they decide.
 *
 * Share = (spent + reserved) / limit of the scope's current window. Steps, lowest first:
 *
 *   0 ok        —
 *   1 notify    ≥ notifyAt (50 %):  webhook + audit row
 *   2 throttle  ≥ throttleAt (80 %): lease sizes shrink; the step gate degrades non-critical
 *                                    work to the plan's fallback model
 *   3 queue     ≥ queueAt (100 %):   the hard limit. New admissions in the scope wait in the
 *                                    queue; critical work is degraded too (degraded last)
 *   4 preempt   ≥ preemptAt (110 %): the lowest-priority running GPU work of the scope is
 *                                    stopped; critical work only once nothing else is left
 *
 * Degrade shares its threshold with throttle (the ladder has five actions and four
 * default thresholds); `degradeAt` may set it apart.
 */
export const LadderSteps = ['ok', 'notify', 'throttle', 'queue', 'preempt'] as const;
export type LadderStep = (typeof LadderSteps)[number];

export const LadderConfig = z
  .strictObject({
    notifyAt: z.number().positive().default(50),
    throttleAt: z.number().positive().default(80),
    /** Non-critical steps answered `degrade` from this share on (default: with throttle). */
    degradeAt: z.number().positive().optional(),
    queueAt: z.number().positive().default(100),
    preemptAt: z.number().positive().default(110),
    /** Lease sizes are multiplied by this under throttle and above. */
    throttleLeaseFactor: z.number().gt(0).max(1).default(0.5),
  })
  .refine((l) => l.notifyAt <= l.throttleAt && l.throttleAt <= l.queueAt && l.queueAt <= l.preemptAt, {
    message: 'thresholds must not decrease: notifyAt ≤ throttleAt ≤ queueAt ≤ preemptAt',
  });
export type LadderConfig = z.infer<typeof LadderConfig>;
export const DEFAULT_LADDER: LadderConfig = LadderConfig.parse({});

export const stepRank = (s: LadderStep): number => LadderSteps.indexOf(s);

/** Per cent of the limit taken by spent + reserved. A zero limit is fully used as soon as anything is. */
export function burnShare(w: { limitMicros: number; spentMicros: number; reservedMicros: number }): number {
  const used = w.spentMicros + w.reservedMicros;
  if (w.limitMicros <= 0) return used > 0 ? Infinity : 0;
  return (used / w.limitMicros) * 100;
}

/** The step in force at a share (per cent). */
export function ladderStep(sharePct: number, l: LadderConfig = DEFAULT_LADDER): LadderStep {
  if (sharePct >= l.preemptAt) return 'preempt';
  if (sharePct >= l.queueAt) return 'queue';
  if (sharePct >= l.throttleAt) return 'throttle';
  if (sharePct >= l.notifyAt) return 'notify';
  return 'ok';
}

/** The threshold (per cent) at which a step starts. */
export function stepThreshold(step: LadderStep, l: LadderConfig = DEFAULT_LADDER): number {
  return { ok: 0, notify: l.notifyAt, throttle: l.throttleAt, queue: l.queueAt, preempt: l.preemptAt }[step];
}

/**
 * A controller's move from one observation to the next. Each step crossed upwards fires once
 * (`fired`, lowest first: a jump from 40 % to 105 % fires notify, throttle and queue); moving
 * down fires nothing, so crossing a threshold again later fires it again.
 */
export type LadderMove =
  | { kind: 'none'; step: LadderStep }
  | { kind: 'up'; from: LadderStep; step: LadderStep; fired: LadderStep[] }
  | { kind: 'down'; from: LadderStep; step: LadderStep };

export function ladderMove(from: LadderStep, sharePct: number, l: LadderConfig = DEFAULT_LADDER): LadderMove {
  const step = ladderStep(sharePct, l);
  const a = stepRank(from);
  const b = stepRank(step);
  if (b === a) return { kind: 'none', step };
  if (b < a) return { kind: 'down', from, step };
  return { kind: 'up', from, step, fired: LadderSteps.slice(a + 1, b + 1) };
}

/**
 * Whether the step gate degrades a step, from the step its controller recorded for a budget (and
 * that budget's share, when `degradeAt` sets degrading apart from throttle): non-critical work from
 * throttle on, critical work only from the hard limit (degraded last). A use case whose SLO
 * forbids the fallback model (`forbidsFallback`) is degraded last too: not before the queue step,
 * where the scope's other new work already waits.
 */
export function shouldDegrade(
  step: LadderStep,
  sharePct: number,
  critical: boolean,
  l: LadderConfig = DEFAULT_LADDER,
  opts: { forbidsFallback?: boolean } = {},
): boolean {
  if (critical || opts.forbidsFallback === true) return stepRank(step) >= stepRank('queue');
  if (l.degradeAt !== undefined) return stepRank(step) >= stepRank('notify') && sharePct >= l.degradeAt;
  return stepRank(step) >= stepRank('throttle');
}

/**
 * The ladder's word for one step of a task over the budget windows covering it: degrade or not,
 * and the windows that would have degraded it but for its SLO's `forbidsFallback` (held: the step
 * stays on the primary model, recorded as an SLO hold).
 */
export function ladderDegrade<W extends { step: LadderStep; sharePct: number }>(
  windows: readonly W[],
  critical: boolean,
  l: LadderConfig = DEFAULT_LADDER,
  forbidsFallback = false,
): { degrade: boolean; held: W[] } {
  const degrade = windows.some((w) => shouldDegrade(w.step, w.sharePct, critical, l, { forbidsFallback }));
  const held =
    forbidsFallback && !degrade
      ? windows.filter((w) => shouldDegrade(w.step, w.sharePct, critical, l) && !shouldDegrade(w.step, w.sharePct, critical, l, { forbidsFallback }))
      : [];
  return { degrade, held };
}

/** Whether new admissions in the scope wait in the queue. */
export const queuesAdmissions = (step: LadderStep): boolean => stepRank(step) >= stepRank('queue');

/** Lease size factor at a step. */
export const leaseFactor = (step: LadderStep, l: LadderConfig = DEFAULT_LADDER): number => (stepRank(step) >= stepRank('throttle') ? l.throttleLeaseFactor : 1);

export interface RunningWork {
  taskId: string;
  priority: number;
  critical: boolean;
  /** GPU-hours the victim would lose (since its start or last checkpoint). */
  gpuHoursAtRisk: number;
}

/**
 * Whom the preempt step stops: the lowest-priority running GPU work of the scope, one task per
 * controller round (the next round looks again at the share). Critical work is never chosen
 * while non-critical work runs. Among equals, the one that loses the least GPU time.
 */
export function preemptionVictim(running: readonly RunningWork[]): RunningWork | null {
  const pool = running.some((r) => !r.critical) ? running.filter((r) => !r.critical) : running;
  const sorted = [...pool].sort((x, y) => x.priority - y.priority || x.gpuHoursAtRisk - y.gpuHoursAtRisk || x.taskId.localeCompare(y.taskId));
  return sorted[0] ?? null;
}

/** Burn rate (USD/hour) and the forecast spend at the end of the window, from the spend so far. */
export function forecast(w: { spentUsd: number; windowStart: Date; windowEnd: Date | null; now: Date; recentUsdPerHour: number | null }): {
  burnUsdPerHour: number;
  forecastUsd: number | null;
} {
  const elapsedH = Math.max(1 / 60, (w.now.getTime() - w.windowStart.getTime()) / 3_600_000);
  const burn = w.recentUsdPerHour ?? w.spentUsd / elapsedH;
  if (w.windowEnd === null) return { burnUsdPerHour: burn, forecastUsd: null };
  const leftH = Math.max(0, (w.windowEnd.getTime() - w.now.getTime()) / 3_600_000);
  return { burnUsdPerHour: burn, forecastUsd: w.spentUsd + burn * leftH };
}

/**
 * The size of a budget lease: what was asked, no more than the scope burns in two lease
 * lifetimes at its current rate (when it burns at all), shrunk under throttle, and never more than
 * a quarter of the headroom left (so several holders can lease at once). Micro-dollars.
 */
export function leaseSize(
  x: { requestedMicros: number; burnMicrosPerHour: number; ttlSeconds: number; step: LadderStep; headroomMicros: number },
  l: LadderConfig = DEFAULT_LADDER,
): number {
  if (stepRank(x.step) >= stepRank('queue')) return 0;
  let size = x.requestedMicros;
  if (x.burnMicrosPerHour > 0) size = Math.min(size, Math.max(1, Math.round((x.burnMicrosPerHour * x.ttlSeconds * 2) / 3600)));
  size = Math.floor(size * leaseFactor(x.step, l));
  return Math.max(0, Math.min(size, Math.floor(x.headroomMicros / 4)));
}
