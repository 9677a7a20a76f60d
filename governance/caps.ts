import type { KindLimits } from '../config/schema';
import type { Caps, Intent } from './intent';
import { type RunLimitInput, capReached, usdCeilingMicros } from './run-limit';
import { type Reason, ReasonCode, reason } from './reasons';

/** The caps a task runs under: the intent's own, or the policy ceiling where the intent is silent. */
export interface EffectiveCaps {
  maxContextTokens: number;
  maxSteps: number;
  maxToolCalls: number;
  maxTokens: number;
  maxUsd: number;
  maxGpuHours: number;
  deadline: string | null;
}

type NumericCap = Exclude<keyof Caps, 'deadline'>;

const capCodes: Record<NumericCap, ReasonCode> = {
  maxContextTokens: ReasonCode.CapMaxContextTokens,
  maxSteps: ReasonCode.CapMaxSteps,
  maxToolCalls: ReasonCode.CapMaxToolCalls,
  maxTokens: ReasonCode.CapMaxTokens,
  maxUsd: ReasonCode.CapMaxUsd,
  maxGpuHours: ReasonCode.CapMaxGpuHours,
};

export const capCode = (cap: NumericCap): ReasonCode => capCodes[cap];

/**
 * Compares each cap the intent asks for with the ceiling of its kind. Returns the effective caps,
 * or one reason per cap that asks for more than policy allows.
 */
export function resolveCaps(intent: Pick<Intent, 'kind' | 'caps'>, limits: KindLimits, policyName: string): { caps: EffectiveCaps; reasons: Reason[] } {
  const reasons: Reason[] = [];
  const pick = (cap: NumericCap): number => {
    const asked = intent.caps[cap];
    const limit = limits[cap];
    if (asked === undefined) return limit;
    if (asked > limit) {
      reasons.push(
        reason(
          capCodes[cap],
          `${cap} ${asked} is above the ${intent.kind} ceiling ${limit}`,
          limit,
          asked,
          `policies/${policyName}#kinds.${intent.kind}.${cap}`,
        ),
      );
    }
    return asked;
  };
  const caps: EffectiveCaps = {
    maxContextTokens: pick('maxContextTokens'),
    maxSteps: pick('maxSteps'),
    maxToolCalls: pick('maxToolCalls'),
    maxTokens: pick('maxTokens'),
    maxUsd: pick('maxUsd'),
    maxGpuHours: pick('maxGpuHours'),
    deadline: intent.caps.deadline ?? null,
  };
  return { caps, reasons };
}

/** What a cluster task's caps are checked against at each observation (activities/cluster.ts observeJob). */
export interface ClusterCapInput {
  caps: Pick<EffectiveCaps, 'maxUsd' | 'maxGpuHours' | 'deadline'>;
  /** What the ledger has metered for the task so far. */
  used: { gpuSeconds: number; costMicros: number };
  /** The job is running now (a deadline is a breach only while it runs). */
  running: boolean;
  now: Date;
  /**
   * The cluster stopped the job at the run limit dispatch gave it: what that limit was computed
   * from (governance/run-limit.ts), now. Absent: the job was not stopped by its limit.
   */
  stoppedAtRunLimit?: Omit<RunLimitInput, 'stopMarginSeconds'>;
}

/**
 * The cap a cluster task has run into, or null. A job the cluster stopped at its run limit was
 * stopped by a cap, not a fault: the cap the run limit names (capReached). Otherwise the metered
 * GPU-hours, then the cost, then the deadline while running.
 */
export function clusterCapBreach(x: ClusterCapInput): Reason | null {
  const { caps, used } = x;
  const gpuHours = used.gpuSeconds / 3600;
  const maxUsdMicros = Math.round(caps.maxUsd * 1e6);
  if (x.stoppedAtRunLimit) {
    const reserved = x.stoppedAtRunLimit.reservationMicros;
    if (capReached(x.stoppedAtRunLimit) === 'maxGpuHours')
      return reason(
        ReasonCode.CapMaxGpuHours,
        `the cluster stopped the job at its run limit: ${gpuHours.toFixed(3)} GPU-hours used, cap ${caps.maxGpuHours}`,
        caps.maxGpuHours,
        gpuHours,
        'task#caps.maxGpuHours',
      );
    return reason(
      ReasonCode.CapMaxUsd,
      `the cluster stopped the job at its run limit: $${(used.costMicros / 1e6).toFixed(4)} spent, cap $${(usdCeilingMicros(caps, reserved) / 1e6).toFixed(4)}${reserved !== null && reserved < maxUsdMicros ? ' (its reservation)' : ''}`,
      caps.maxUsd,
      used.costMicros / 1e6,
      'task#caps.maxUsd',
    );
  }
  if (gpuHours > caps.maxGpuHours)
    return reason(
      ReasonCode.CapMaxGpuHours,
      `used ${gpuHours.toFixed(3)} GPU-hours, cap ${caps.maxGpuHours}`,
      caps.maxGpuHours,
      gpuHours,
      'task#caps.maxGpuHours',
    );
  if (used.costMicros > maxUsdMicros)
    return reason(
      ReasonCode.CapMaxUsd,
      `spent $${(used.costMicros / 1e6).toFixed(2)}, cap $${caps.maxUsd}`,
      caps.maxUsd,
      used.costMicros / 1e6,
      'task#caps.maxUsd',
    );
  if (caps.deadline !== null && x.now.getTime() > Date.parse(caps.deadline) && x.running)
    return reason(ReasonCode.CapDeadline, `deadline ${caps.deadline} passed while running`, caps.deadline, x.now.toISOString(), 'task#caps.deadline');
  return null;
}
