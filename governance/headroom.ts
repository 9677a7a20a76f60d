/**
 * The budget rule: does a task's worst case fit every budget that covers it? One pure function,
 * called twice: optimistically by admission (governance/admission.ts `admit()`, over a snapshot)
 * and again by the reservation under the window locks (ledger/budgets.ts `reserve()`).
 */
import { type LadderStep, queuesAdmissions } from './ladder';
import { microsToUsd } from './pricing';
import { type Reason, ReasonCode, reason } from './reasons';

/** What a budget scope has left, read from the ledger just before the decision. */
export interface BudgetHeadroom {
  /** e.g. "acme/search/*" */
  scope: string;
  period: string;
  window: string;
  limitMicros: number;
  reservedMicros: number;
  spentMicros: number;
  /** The step of the enforcement ladder its budget controller set (governance/ladder.ts); ok when absent. */
  ladderStep?: LadderStep;
}

/**
 * `retry`: the ladder of a covering budget is at its queue step (the hard limit), so the task waits
 * until the budget is raised, its window resets or spend is released, however much is left. Without
 * retry: the worst case does not fit the headroom of one or more budgets, and never will as asked.
 */
export type BudgetDecision = { ok: true } | { ok: false; retry: boolean; reasons: Reason[] };

/**
 * The worst case (`askedMicros`) against every covering budget. A budget held by its ladder holds
 * the task even with headroom left (one reason per held budget); otherwise every budget whose
 * headroom (limit − reserved − spent) is below the worst case refuses it (one reason each, in the
 * order given). Exactly enough headroom fits.
 */
export function decideBudgets(budgets: readonly BudgetHeadroom[], askedMicros: number): BudgetDecision {
  const held = budgets.filter((b) => b.ladderStep !== undefined && queuesAdmissions(b.ladderStep));
  if (held.length > 0) return { ok: false, retry: true, reasons: held.map((b) => ladderQueueReason(b, askedMicros)) };
  const short = budgets.filter((b) => b.limitMicros - b.reservedMicros - b.spentMicros < askedMicros);
  if (short.length > 0) return { ok: false, retry: false, reasons: short.map((b) => budgetReason(b, askedMicros)) };
  return { ok: true };
}

function budgetReason(b: BudgetHeadroom, askedMicros: number): Reason {
  const headroom = Math.max(0, b.limitMicros - b.reservedMicros - b.spentMicros);
  return reason(
    ReasonCode.BudgetExceeded,
    `worst case $${microsToUsd(askedMicros).toFixed(2)} does not fit the $${microsToUsd(headroom).toFixed(2)} left of budget ${b.scope} (${b.period} ${b.window})`,
    microsToUsd(headroom),
    microsToUsd(askedMicros),
    `budget:${b.scope}:${b.period}`,
  );
}

function ladderQueueReason(b: BudgetHeadroom, askedMicros: number): Reason {
  return reason(
    ReasonCode.BudgetLadderQueue,
    `budget ${b.scope} (${b.period} ${b.window}) is at its ${b.ladderStep} step: new work waits until it is raised, its window resets or spend is released`,
    microsToUsd(b.limitMicros),
    microsToUsd(b.spentMicros + b.reservedMicros + askedMicros),
    `policies#ladder.queueAt`,
  );
}
