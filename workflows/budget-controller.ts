import { allHandlersFinished, condition, continueAsNew, getExternalWorkflowHandle, proxyActivities, setHandler, workflowInfo } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { type BudgetControllerState, type BudgetKey, budgetNudgeSignal, budgetStatusQuery, cancelSignal } from './messages';

/** Ledger reads and writes of the controller: quick, retried until the ledger answers. */
const ledger = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '200 milliseconds', backoffCoefficient: 2, maximumInterval: '10 seconds' },
});

export interface BudgetControllerInput {
  budget: BudgetKey;
  /** Carried over continue-as-new. */
  state?: Pick<BudgetControllerState, 'window' | 'step' | 'crossing' | 'preempted'>;
}

/**
 * One budget's enforcement ladder (governance/ladder.ts), fed by the ledger: each round reads the
 * budget's current window, moves the ladder (notify → throttle/degrade → queue → preempt), and
 * records each step crossed upwards exactly once per crossing (ledger unique key). Admission and
 * the step gate enforce the step the ledger holds. At the preempt step it stops the lowest-priority
 * running GPU work of the scope, one task per round. A new period's window starts at ok. Ends when
 * the budget is deleted; continues as new long before its history grows large.
 */
export async function budgetController(input: BudgetControllerInput): Promise<BudgetControllerState> {
  const s: BudgetControllerState = {
    budget: input.budget,
    scope: null,
    window: input.state?.window ?? null,
    step: input.state?.step ?? 'ok',
    sharePct: null,
    crossing: input.state?.crossing ?? 0,
    rounds: 0,
    preempted: input.state?.preempted ?? [],
  };
  let nudged = false;
  setHandler(budgetNudgeSignal, () => {
    nudged = true;
  });
  setHandler(budgetStatusQuery, () => ({ ...s, preempted: [...s.preempted] }));

  let roundsPerRun = 500;
  while (s.rounds < roundsPerRun) {
    s.rounds++;
    const o = await ledger.observeBudget({ budget: s.budget, step: s.step, window: s.window });
    roundsPerRun = o.roundsPerRun;
    if (o.snapshot === null || o.move === null) return s;
    const snap = o.snapshot;
    if (snap.window !== s.window) {
      s.window = snap.window;
      s.crossing = 0;
      s.preempted = [];
    }
    s.scope = `${snap.scope}:${snap.period}`;
    s.sharePct = snap.sharePct;
    const move = o.move;
    if (move.kind === 'up') {
      s.crossing++;
      await ledger.applyLadder({ budgetId: snap.budgetId, window: snap.window, crossing: s.crossing, from: move.from, to: move.step, fired: move.fired, sharePct: snap.sharePct, scope: s.scope });
    } else if (move.kind === 'down') {
      await ledger.applyLadder({ budgetId: snap.budgetId, window: snap.window, crossing: s.crossing, from: move.from, to: move.step, fired: [], sharePct: snap.sharePct, scope: s.scope });
    }
    s.step = move.step;
    if (s.step === 'preempt') {
      const victim = await ledger.choosePreemptionVictim({ budgetId: snap.budgetId, window: snap.window, crossing: s.crossing, sharePct: snap.sharePct });
      if (victim !== null) {
        s.preempted.push(victim);
        await getExternalWorkflowHandle(victim)
          .signal(cancelSignal, { by: 'budget-controller', reason: `BUDGET_PREEMPT: ${s.scope} at ${Math.round(snap.sharePct)}% of its limit` })
          .catch(() => undefined); // the task already ended: nothing to stop
      }
    }
    if (workflowInfo().continueAsNewSuggested) break;
    await condition(() => nudged, o.pollMillis);
    nudged = false;
  }
  await condition(allHandlersFinished);
  return continueAsNew<typeof budgetController>({ budget: s.budget, state: { window: s.window, step: s.step, crossing: s.crossing, preempted: s.preempted.slice(-100) } });
}
