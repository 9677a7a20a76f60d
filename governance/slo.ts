import { z } from 'zod';

/**
 * Service level objectives of a use case or a team (decision 0026): declared in
 * config/policies.yaml (`slos`), measured from what the ledger records (ledger/slo.ts), shown by
 * `govloop slo`, and consulted by the budget ladder (`forbidsFallback`). Pure: no I/O here.
 */

/** The latency objectives are p95s: 5 % of the samples may be over the target. */
export const LATENCY_ALLOWANCE = 0.05;

export const SloScope = z.strictObject({
  tenant: z.string().min(1),
  /** Left out: every team of the tenant. */
  team: z.string().min(1).optional(),
  /** Left out: every use case of the scope. */
  useCase: z.string().min(1).optional(),
});
export type SloScope = z.infer<typeof SloScope>;

export const SloObjectives = z
  .strictObject({
    /** p95 of the step latency agents report with each step (`latencyMs`), in milliseconds. */
    stepLatencyP95Ms: z.number().positive().optional(),
    /** p95 of the time the step gate takes to decide a step, in milliseconds. */
    gateLatencyP95Ms: z.number().positive().optional(),
    /** p95 of the wait from submission to the task's budget reservation, in seconds. */
    queueWaitP95Seconds: z.number().nonnegative().optional(),
    /** Share of the finished tasks (Succeeded, Failed, CapExceeded) that Succeeded, 0 to 1. */
    successRate: z.number().gt(0, 'must be above 0').max(1, 'must be at most 1').optional(),
    /** Mean cost of the finished tasks, in USD. */
    costPerTaskUsd: z.number().positive().optional(),
  })
  .refine((o) => Object.values(o).some((v) => v !== undefined), {
    message: 'name at least one objective: stepLatencyP95Ms, gateLatencyP95Ms, queueWaitP95Seconds, successRate or costPerTaskUsd',
  });
export type SloObjectives = z.infer<typeof SloObjectives>;
export type ObjectiveName = keyof SloObjectives;
export const OBJECTIVES: readonly ObjectiveName[] = ['stepLatencyP95Ms', 'gateLatencyP95Ms', 'queueWaitP95Seconds', 'successRate', 'costPerTaskUsd'];

export const Slo = z.strictObject({
  scope: SloScope,
  objectives: SloObjectives,
  /** The rolling window measured, in days. */
  windowDays: z.number().positive().max(366).default(7),
  /**
   * The use case must not be degraded to its template's fallback model by the budget ladder
   * before the ladder has queued the scope's other work: it is degraded no earlier than the
   * queue step (as critical work is).
   */
  forbidsFallback: z.boolean().default(false),
});
export type Slo = z.infer<typeof Slo>;

/** The SLO list of config/policies.yaml; one SLO per scope. */
export const SloList = z.array(Slo).superRefine((slos, ctx) => {
  const seen = new Map<string, number>();
  slos.forEach((s, i) => {
    const label = sloLabel(s.scope);
    const first = seen.get(label);
    if (first !== undefined) ctx.addIssue({ code: 'custom', path: [i, 'scope'], message: `scope ${label} already has an SLO (slos.${first})` });
    else seen.set(label, i);
  });
});

/** tenant/team/useCase, `*` where the scope does not narrow. */
export const sloLabel = (s: SloScope): string => `${s.tenant}/${s.team ?? '*'}/${s.useCase ?? '*'}`;

export function sloCovers(s: SloScope, a: { tenant: string; team: string; useCase: string }): boolean {
  return s.tenant === a.tenant && (s.team === undefined || s.team === a.team) && (s.useCase === undefined || s.useCase === a.useCase);
}

/** The first SLO covering an attribution that forbids the fallback model, or null. */
export function fallbackForbiddenBy(slos: readonly Slo[], a: { tenant: string; team: string; useCase: string }): Slo | null {
  return slos.find((s) => s.forbidsFallback && sloCovers(s.scope, a)) ?? null;
}

/** The p-th percentile by nearest rank (p in 0..100); null without samples. */
export function percentile(values: readonly number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((x, y) => x - y);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1]!;
}

/** What one objective measured over its window. */
export interface ObjectiveResult {
  objective: ObjectiveName;
  target: number;
  /** null: no samples in the window. */
  measured: number | null;
  /** null: no samples, nothing to judge. */
  met: boolean | null;
  /**
   * Share of the window's error budget left, 0 to 1 (0: spent). Latency: the budget is 5 % of
   * the samples over the target. Success rate: (1 - target) of the finished tasks may fail.
   * null where an objective has no error budget (cost per task) or there are no samples.
   */
  errorBudgetRemaining: number | null;
  samples: number;
}

/** Error budget shares to four places: 0.6, not 0.6000000000000001. */
const clamp01 = (x: number) => Math.round(Math.min(1, Math.max(0, x)) * 1e4) / 1e4;

/** A p95 latency objective over its samples (ms or seconds, as the target). */
export function latencyObjective(objective: ObjectiveName, target: number, values: readonly number[]): ObjectiveResult {
  const measured = percentile(values, 95);
  if (measured === null) return { objective, target, measured, met: null, errorBudgetRemaining: null, samples: 0 };
  const over = values.filter((v) => v > target).length / values.length;
  return { objective, target, measured, met: measured <= target, errorBudgetRemaining: clamp01(1 - over / LATENCY_ALLOWANCE), samples: values.length };
}

/** A success-rate objective over finished tasks. */
export function successObjective(target: number, succeeded: number, finished: number): ObjectiveResult {
  const objective = 'successRate';
  if (finished === 0) return { objective, target, measured: null, met: null, errorBudgetRemaining: null, samples: 0 };
  const failed = finished - succeeded;
  const allowed = (1 - target) * finished;
  const remaining = allowed > 0 ? clamp01(1 - failed / allowed) : failed === 0 ? 1 : 0;
  // Met when at most the allowed failures failed (compared in counts: 19 of 20 meets 0.95 exactly).
  const met = failed <= allowed + 1e-9;
  return { objective, target, measured: Math.round((succeeded / finished) * 1e6) / 1e6, met, errorBudgetRemaining: remaining, samples: finished };
}

/** A cost-per-task objective over finished tasks' costs (USD). */
export function costObjective(target: number, costsUsd: readonly number[]): ObjectiveResult {
  const objective = 'costPerTaskUsd';
  if (costsUsd.length === 0) return { objective, target, measured: null, met: null, errorBudgetRemaining: null, samples: 0 };
  const mean = costsUsd.reduce((s, c) => s + c, 0) / costsUsd.length;
  return { objective, target, measured: Math.round(mean * 1e6) / 1e6, met: mean <= target, errorBudgetRemaining: null, samples: costsUsd.length };
}
