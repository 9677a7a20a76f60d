import { z } from 'zod';
import type { EffectiveCaps } from './caps';
import { microsToUsd } from './pricing';
import { type Reason, ReasonCode, reason } from './reasons';
import { NameText, refuseControlCharacters } from './text';
import { type ToolPolicy, checkTool, hasSideEffect, needsApproval } from './tools';

/** JSON a tool call was made with; kept small, since it travels in workflow history. */
const Json: z.ZodType<unknown> = z.lazy(() => z.union([z.string(), z.number(), z.boolean(), z.null(), z.array(Json), z.record(z.string(), Json)]));

/** What a step update carries; validated before the workflow accepts the update. */
export const StepUsageSchema = z.strictObject({
  tokensIn: z.number().int().nonnegative(),
  tokensOut: z.number().int().nonnegative(),
  contextTokens: z.number().int().nonnegative(),
  model: NameText.optional(),
  tool: NameText.optional(),
  /** The tool call's arguments: digested for the approval request, replayed to its compensation. */
  toolArgs: Json.refine((v) => JSON.stringify(v).length <= 16_384, 'at most 16 KiB of JSON')
    .superRefine(refuseControlCharacters)
    .optional(),
  latencyMs: z.number().nonnegative().optional(),
});
/** One agent step as the agent reports it before committing it: a model call, or a tool call. */
export type StepUsage = z.infer<typeof StepUsageSchema>;

export interface StepTotals {
  steps: number;
  toolCalls: number;
  tokens: number;
  costMicros: number;
  /** Once a task is degraded to its fallback model it stays there. */
  degraded: boolean;
}

export const zeroTotals: StepTotals = { steps: 0, toolCalls: 0, tokens: 0, costMicros: 0, degraded: false };

export interface StepContext {
  caps: EffectiveCaps;
  totals: StepTotals;
  step: StepUsage;
  /** The model the task runs on when the step names none. */
  primaryModel: string;
  fallbackModel: string | null;
  /** Price of the step on the model it asks for, and on the fallback (null without one). */
  costMicros: number;
  fallbackCostMicros: number | null;
  /**
   * What admission reserved for the task (`plan.worstCaseMicros`): its token cap priced on the
   * intent's model at admission. A step is priced on the model it runs on at the price in force
   * now, which can be dearer (the fallback, a new price-book version), so the gate holds the
   * task's charges to the reservation as well as to maxUsd: nothing is ever spent without a hold.
   */
  reservedMicros: number;
  tools: ToolPolicy;
  /** Tokens the declared tools' definitions add to the step's context. */
  toolOverheadTokens: number;
  degradeAtFraction: number;
  /** The budget ladder says degrade (a covering budget is past its degrade threshold for this priority). */
  budgetDegrade?: boolean;
  now: string;
}

export type StepDecision =
  | {
      answer: 'allow' | 'degrade';
      totals: StepTotals;
      /** The model the step is charged at: the fallback when degraded. */
      model: string;
      costMicros: number;
      /** The tool call waits for a human before it may run. */
      needsApproval: boolean;
      sideEffect: boolean;
    }
  | { answer: 'deny'; reason: Reason };

/** The models a step may run on: the intent's model and, where its template has one, the fallback. */
export function allowedModels(primaryModel: string, fallbackModel: string | null): string[] {
  return fallbackModel === null || fallbackModel === primaryModel ? [primaryModel] : [primaryModel, fallbackModel];
}

/**
 * The per-step gate. A step is allowed only if, with it, every cap still holds; the step that
 * would cross a cap is denied, so a cap stops the agent at exactly that step and nothing past a
 * cap is ever charged. Near the USD or token cap (or when the step only fits on the cheaper
 * model), a task with a fallback model is answered `degrade` before it is ever denied. The USD
 * ceiling is the smaller of maxUsd and what admission reserved, so the task never spends past its
 * reservation; a step may run only on the intent's model or its fallback, the two the
 * reservation and the degrade ladder know.
 */
export function evaluateStep(ctx: StepContext): StepDecision {
  const { caps, totals, step } = ctx;
  const cap = (code: Reason['code'], what: string, limit: number, requested: number, name: string) =>
    ({ answer: 'deny', reason: reason(code, `${what} ${requested} would cross the cap ${limit}`, limit, requested, `task#caps.${name}`) }) as const;

  // First, before anything is priced: a model the task was not admitted for is refused outright.
  const model = step.model ?? ctx.primaryModel;
  const allowed = allowedModels(ctx.primaryModel, ctx.fallbackModel);
  if (!allowed.includes(model)) {
    const which =
      ctx.fallbackModel === null ? `the intent's model ${ctx.primaryModel}` : `the intent's model ${ctx.primaryModel} or its fallback ${ctx.fallbackModel}`;
    return {
      answer: 'deny',
      reason: reason(
        ReasonCode.ModelNotAllowed,
        `model ${model} is not allowed for this task: a step may run only on ${which}`,
        allowed.join('|'),
        model,
        'intent#attribution.model',
      ),
    };
  }

  if (caps.deadline !== null && Date.parse(ctx.now) > Date.parse(caps.deadline)) {
    return { answer: 'deny', reason: reason(ReasonCode.CapDeadline, `deadline ${caps.deadline} has passed`, caps.deadline, ctx.now, 'task#caps.deadline') };
  }
  let approval = false;
  let sideEffect = false;
  if (step.tool !== undefined) {
    const t = checkTool(ctx.tools, step.tool);
    if (!t.ok) return { answer: 'deny', reason: t.reason };
    approval = needsApproval(ctx.tools.catalog, t.entry);
    sideEffect = hasSideEffect(t.entry);
  }
  const context = step.contextTokens + ctx.toolOverheadTokens;
  if (context > caps.maxContextTokens)
    return cap(ReasonCode.CapMaxContextTokens, 'context tokens (with tool definitions)', caps.maxContextTokens, context, 'maxContextTokens');
  const steps = totals.steps + 1;
  if (steps > caps.maxSteps) return cap(ReasonCode.CapMaxSteps, 'steps', caps.maxSteps, steps, 'maxSteps');
  const toolCalls = totals.toolCalls + (step.tool !== undefined ? 1 : 0);
  if (toolCalls > caps.maxToolCalls) return cap(ReasonCode.CapMaxToolCalls, 'tool calls', caps.maxToolCalls, toolCalls, 'maxToolCalls');
  const tokens = totals.tokens + step.tokensIn + step.tokensOut;
  if (tokens > caps.maxTokens) return cap(ReasonCode.CapMaxTokens, 'tokens', caps.maxTokens, tokens, 'maxTokens');

  const usdMicros = Math.round(caps.maxUsd * 1_000_000);
  const maxMicros = Math.min(usdMicros, ctx.reservedMicros);
  // Past the ceiling: named as the reservation where that is the lower of the two, else as maxUsd.
  const overUsd = (what: string, total: number) =>
    ctx.reservedMicros < usdMicros
      ? ({
          answer: 'deny',
          reason: reason(
            ReasonCode.CapReservation,
            `${what} ${microsToUsd(total)} would pass the ${microsToUsd(ctx.reservedMicros)} reserved for the task at admission`,
            microsToUsd(ctx.reservedMicros),
            microsToUsd(total),
            'task#plan.worstCaseMicros',
          ),
        } as const)
      : cap(ReasonCode.CapMaxUsd, what, caps.maxUsd, microsToUsd(total), 'maxUsd');
  const primaryTotal = totals.costMicros + ctx.costMicros;
  const canDegrade = ctx.fallbackModel !== null && ctx.fallbackCostMicros !== null && model !== ctx.fallbackModel;
  const near = totals.degraded || primaryTotal > maxMicros * ctx.degradeAtFraction || tokens > caps.maxTokens * ctx.degradeAtFraction;
  const next = (costMicros: number, degraded: boolean): StepTotals => ({ steps, toolCalls, tokens, costMicros, degraded });
  if (canDegrade && (near || primaryTotal > maxMicros || ctx.budgetDegrade === true)) {
    const fallbackTotal = totals.costMicros + ctx.fallbackCostMicros!;
    if (fallbackTotal > maxMicros) return overUsd('USD (on the fallback model)', fallbackTotal);
    // Near a cap, degrading sticks for the rest of the task; a budget degrade lasts while the ladder says so.
    const sticky = near || primaryTotal > maxMicros;
    return {
      answer: 'degrade',
      totals: next(fallbackTotal, sticky || totals.degraded),
      model: ctx.fallbackModel!,
      costMicros: ctx.fallbackCostMicros!,
      needsApproval: approval,
      sideEffect,
    };
  }
  if (primaryTotal > maxMicros) return overUsd('USD', primaryTotal);
  return { answer: 'allow', totals: next(primaryTotal, totals.degraded), model, costMicros: ctx.costMicros, needsApproval: approval, sideEffect };
}
