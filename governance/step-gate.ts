import { z } from 'zod';
import type { EffectiveCaps } from './caps';
import { microsToUsd } from './pricing';
import { type Reason, ReasonCode, reason } from './reasons';

/** One agent step as the agent reports it before committing it: a model call, or a tool call. */
export interface StepUsage {
  tokensIn: number;
  tokensOut: number;
  contextTokens: number;
  model?: string;
  tool?: string;
  latencyMs?: number;
}

export interface StepTotals {
  steps: number;
  toolCalls: number;
  tokens: number;
  costMicros: number;
}

export const zeroTotals: StepTotals = { steps: 0, toolCalls: 0, tokens: 0, costMicros: 0 };

export type StepDecision = { answer: 'allow'; totals: StepTotals } | { answer: 'deny'; reason: Reason };

/**
 * The per-step gate. A step is allowed only if, with it, every cap still holds; the step that
 * would cross a cap is denied, so a cap stops the agent at exactly that step and nothing past a
 * cap is ever charged.
 */
export function evaluateStep(
  caps: EffectiveCaps,
  totals: StepTotals,
  step: StepUsage,
  stepCostMicros: number,
  declaredTools: string[],
  now: string,
): StepDecision {
  const cap = (code: Reason['code'], what: string, limit: number, requested: number) =>
    ({ answer: 'deny', reason: reason(code, `${what} ${requested} would cross the cap ${limit}`, limit, requested, `task#caps`) }) as const;

  if (caps.deadline !== null && Date.parse(now) > Date.parse(caps.deadline)) {
    return { answer: 'deny', reason: reason(ReasonCode.CapDeadline, `deadline ${caps.deadline} has passed`, caps.deadline, now, 'task#caps.deadline') };
  }
  if (step.tool !== undefined && !declaredTools.includes(step.tool)) {
    return { answer: 'deny', reason: reason(ReasonCode.ToolUnknown, `tool ${step.tool} is not declared by the task`, declaredTools.join('|') || null, step.tool, 'intent#tools') };
  }
  if (step.contextTokens > caps.maxContextTokens) return cap(ReasonCode.CapMaxContextTokens, 'context tokens', caps.maxContextTokens, step.contextTokens);
  const steps = totals.steps + 1;
  if (steps > caps.maxSteps) return cap(ReasonCode.CapMaxSteps, 'steps', caps.maxSteps, steps);
  const toolCalls = totals.toolCalls + (step.tool !== undefined ? 1 : 0);
  if (toolCalls > caps.maxToolCalls) return cap(ReasonCode.CapMaxToolCalls, 'tool calls', caps.maxToolCalls, toolCalls);
  const tokens = totals.tokens + step.tokensIn + step.tokensOut;
  if (tokens > caps.maxTokens) return cap(ReasonCode.CapMaxTokens, 'tokens', caps.maxTokens, tokens);
  const costMicros = totals.costMicros + stepCostMicros;
  if (costMicros > Math.round(caps.maxUsd * 1_000_000)) return cap(ReasonCode.CapMaxUsd, 'USD', caps.maxUsd, microsToUsd(costMicros));
  return { answer: 'allow', totals: { steps, toolCalls, tokens, costMicros } };
}

/** What a step update carries; validated before the workflow accepts the update. */
export const StepUsageSchema = z.strictObject({
  tokensIn: z.number().int().nonnegative(),
  tokensOut: z.number().int().nonnegative(),
  contextTokens: z.number().int().nonnegative(),
  model: z.string().min(1).optional(),
  tool: z.string().min(1).optional(),
  latencyMs: z.number().nonnegative().optional(),
});
