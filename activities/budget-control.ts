import { log } from '@temporalio/activity';
import { type LadderMove, type LadderStep, ladderMove, preemptionVictim } from '../governance/ladder';
import {
  type BudgetSnapshot,
  type LadderChange,
  applyLadderChange,
  budgetIdOf,
  budgetSnapshot,
  recordBudgetPreemption,
  runningGpuWork,
} from '../ledger/ladder';
import type { BudgetKey } from '../governance/budget-scope';
import type { ActivityContext } from './context';
import { notify } from './notify';

/**
 * The budget controller's activities (workflows/budget-controller.ts): read a budget's window,
 * move the ladder (governance/ladder.ts decides), record the move and notify, pick the preempt
 * step's victim.
 */
export function createBudgetControlActivities({ db, config, clock }: ActivityContext) {
  return {
    /**
     * The budget controller's round: the budget's current window and the ladder move from the
     * step the controller holds (pure: governance/ladder.ts), plus its timing.
     */
    async observeBudget(input: {
      budget: BudgetKey;
      step: LadderStep;
      window: string | null;
    }): Promise<{ snapshot: BudgetSnapshot | null; move: LadderMove | null; pollMillis: number; roundsPerRun: number }> {
      const timingOut = { pollMillis: config.policies.budgetController.pollMillis, roundsPerRun: config.policies.budgetController.roundsPerRun };
      const budgetId = await budgetIdOf(db, input.budget);
      const snapshot = budgetId === null ? null : await budgetSnapshot(db, budgetId, clock());
      if (!snapshot) return { snapshot, move: null, ...timingOut };
      // A new window starts at the step the ledger holds for it (ok for a fresh one).
      const from = input.window === snapshot.window ? input.step : snapshot.step;
      return { snapshot, move: ladderMove(from, snapshot.sharePct, config.policies.ladder), ...timingOut };
    },

    /** Records a ladder move (each step fires once per crossing) and notifies for the steps that fired. */
    async applyLadder(input: LadderChange & { scope: string }): Promise<LadderStep[]> {
      const fresh = await applyLadderChange(db, input);
      for (const step of fresh) {
        await notify(config, {
          event: 'budget.ladder',
          step,
          scope: input.scope,
          window: input.window,
          sharePct: Math.round(input.sharePct * 100) / 100,
          runbook: 'runbooks/budget-ladder.md',
        });
      }
      log.info('budget ladder', { budgetId: input.budgetId, from: input.from, to: input.to, fired: fresh });
      return fresh;
    },

    /** The preempt step's victim: the lowest-priority running GPU work of the budget's scope (recorded once per crossing). */
    async choosePreemptionVictim(input: { budgetId: number; window: string; crossing: number; sharePct: number }): Promise<string | null> {
      const victim = preemptionVictim(await runningGpuWork(db, input.budgetId, config.policies.priorities, config.policies.criticalPriorities, clock()));
      if (!victim) return null;
      const fresh = await recordBudgetPreemption(db, { ...input, taskId: victim.taskId });
      return fresh ? victim.taskId : null;
    },
  };
}
