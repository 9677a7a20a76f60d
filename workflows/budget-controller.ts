import {
  ApplicationFailure,
  allHandlersFinished,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type { Activities } from '../activities';
import { optionalForm, scopeLabel } from '../governance/budget-scope';
import { LEDGER_ACTIVITY } from './activity-options';
import { hasPatch } from './patches';
import {
  type BudgetControllerState,
  type BudgetKey,
  type LeaseSpend,
  LeaseErrors,
  budgetNudgeSignal,
  budgetStatusQuery,
  cancelSignal,
  leaseReturnUpdate,
  leaseSpendUpdate,
  leaseUpdate,
} from './messages';
import { LeaseRequestSchema, LeaseReturnSchema, LeaseSpendSchema, issuesList, issuesText } from './schemas';

/**
 * The controller's ledger calls (lease grant, spend report, return, observe, apply, victim choice,
 * expiry) are short SQL in the worker that runs this workflow: local activities, one workflow task
 * and a marker each instead of an activity task's round trip through the server (issue 13).
 * Histories recorded before, with scheduled activities, replay through the patch's old branch.
 */
const remoteLedger = proxyActivities<Activities>(LEDGER_ACTIVITY);
const localLedger = proxyLocalActivities<Activities>(LEDGER_ACTIVITY);
const ledgerCalls = () => (hasPatch('controller-local-activities') ? localLedger : remoteLedger);

export interface BudgetControllerInput {
  budget: BudgetKey;
  /** Carried over continue-as-new. */
  state?: Pick<BudgetControllerState, 'window' | 'step' | 'crossing' | 'preempted'> & { leases?: string[] };
}

const fail = (msg: string, type: string = LeaseErrors.InvalidLeaseRequest) => ApplicationFailure.nonRetryable(msg, type);
/** Parses a lease message or refuses it before history, naming every bad field (as text and as data). */
function parseOrRefuse<T>(schema: z.ZodType<T>, payload: unknown): T {
  const p = schema.safeParse(payload);
  if (!p.success) throw ApplicationFailure.nonRetryable(issuesText(p.error), LeaseErrors.InvalidLeaseRequest, issuesList(p.error));
  return p.data;
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

  // Leases of this budget's scope: granted and closed through the ledger; expired by the loop.
  const leases = new Set<string>(input.state?.leases ?? []);
  const ownLease = (leaseId: string) => leaseId.startsWith(`${scopeLabel(s.budget)}:`);
  setHandler(
    leaseUpdate,
    async (r) => {
      const leaseId = `${scopeLabel(s.budget)}:${r.requestId}`;
      const g = await ledgerCalls().grantLease({
        leaseId,
        scope: optionalForm(s.budget),
        holder: r.holder,
        ttlSeconds: r.ttlSeconds,
        ...(r.usd !== undefined ? { usd: r.usd } : {}),
        ...(r.tokens !== undefined ? { tokens: r.tokens } : {}),
        ...(r.model !== undefined ? { model: r.model } : {}),
      });
      if (!g.granted) return g;
      leases.add(leaseId);
      return { granted: true, leaseId, amountUsd: g.amountMicros / 1e6, expiresAt: g.expiresAt, step: g.step };
    },
    {
      validator: (r) => void parseOrRefuse(LeaseRequestSchema, r),
    },
  );
  setHandler(
    leaseSpendUpdate,
    async (x: LeaseSpend) => {
      const r = await ledgerCalls().reportLeaseSpend({
        leaseId: x.leaseId,
        seq: x.seq,
        micros: Math.round(x.usd * 1e6),
        ...(x.model !== undefined ? { model: x.model } : {}),
        ...(x.useCase !== undefined ? { useCase: x.useCase } : {}),
      });
      return r.recorded
        ? { recorded: true, spentUsd: r.spentMicros / 1e6, leftUsd: r.leftMicros / 1e6, duplicate: r.duplicate }
        : { recorded: false, code: r.code };
    },
    {
      validator: (x) => {
        const { leaseId } = parseOrRefuse(LeaseSpendSchema, x);
        if (!ownLease(leaseId)) throw fail(`leaseId: not a lease of ${scopeLabel(s.budget)}`, LeaseErrors.UnknownLease);
      },
    },
  );
  setHandler(
    leaseReturnUpdate,
    async (x) => {
      const r = await ledgerCalls().closeLease({ leaseId: x.leaseId, state: 'returned', by: x.by });
      leases.delete(x.leaseId);
      return { closed: r.closed, returnedUsd: r.releasedMicros / 1e6 };
    },
    {
      validator: (x) => {
        const { leaseId } = parseOrRefuse(LeaseReturnSchema, x);
        if (!ownLease(leaseId)) throw fail(`leaseId: not a lease of this budget`, LeaseErrors.UnknownLease);
      },
    },
  );

  let roundsPerRun = 500;
  while (s.rounds < roundsPerRun) {
    s.rounds++;
    const o = await ledgerCalls().observeBudget({ budget: s.budget, step: s.step, window: s.window });
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
    if (move.kind !== 'none') {
      // Each move upwards is a new crossing; a move down records the step under the current one.
      if (move.kind === 'up') s.crossing++;
      await ledgerCalls().applyLadder({
        budgetId: snap.budgetId,
        window: snap.window,
        crossing: s.crossing,
        from: move.from,
        to: move.step,
        fired: move.kind === 'up' ? move.fired : [],
        sharePct: snap.sharePct,
        scope: s.scope,
      });
    }
    s.step = move.step;
    if (s.step === 'preempt') {
      const victim = await ledgerCalls().choosePreemptionVictim({
        budgetId: snap.budgetId,
        window: snap.window,
        crossing: s.crossing,
        sharePct: snap.sharePct,
      });
      if (victim !== null) {
        s.preempted.push(victim);
        await getExternalWorkflowHandle(victim)
          .signal(cancelSignal, { by: 'budget-controller', reason: `BUDGET_PREEMPT: ${s.scope} at ${Math.round(snap.sharePct)}% of its limit` })
          .catch(() => undefined); // the task already ended: nothing to stop
      }
    }
    if (leases.size > 0) for (const id of await ledgerCalls().expireLeases({ leaseIds: [...leases] })) leases.delete(id);
    if (workflowInfo().continueAsNewSuggested) break;
    await condition(() => nudged, o.pollMillis);
    nudged = false;
  }
  await condition(allHandlersFinished);
  return continueAsNew<typeof budgetController>({
    budget: s.budget,
    state: { window: s.window, step: s.step, crossing: s.crossing, preempted: s.preempted.slice(-100), leases: [...leases] },
  });
}
