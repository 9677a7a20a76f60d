import type { KindLimits } from '../config/schema';
import type { Caps, Intent } from './intent';
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
