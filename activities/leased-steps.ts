import { log } from '@temporalio/activity';
import type { GovConfig } from '../config/load';
import type { Intent } from '../governance/intent';
import { ladderDegrade } from '../governance/ladder';
import type { Plan } from '../governance/plan';
import { costMicros, priceVersionAt, unitPriceUsd } from '../governance/pricing';
import type { Reason } from '../governance/reasons';
import { fallbackForbiddenBy } from '../governance/slo';
import type { StepTotals } from '../governance/step-gate';
import { type GrantDecision, type LeasedStep, type StepLease, grantStepLease } from '../governance/step-lease';
import type { Caller } from '../identity/authenticate';
import { appendAudit } from '../ledger/audit';
import type { Db } from '../ledger/db';
import { scopeLadder } from '../ledger/ladder';
import { recordStep } from '../ledger/slo';
import { recordUsageIn } from '../ledger/usage';

export interface LeasedStepDeps {
  db: Db;
  config: GovConfig;
  clock: () => Date;
  /** The synchronous gate's rule for who may report a task's steps (its requester or an operator of its tenant). */
  stepCallerRefused: (taskId: string, tenant: string, requester: string | null, caller: Caller) => Promise<Reason | null>;
}

/** A grant refused because of who asked: the caller's code (UNAUTHENTICATED, FORBIDDEN, …). */
export type LeaseGrantOutcome = GrantDecision | { decision: 'refused'; why: string; message: string };

/**
 * The leased step gate's two ledger calls (decision 0030): the grant reads what the synchronous
 * gate would read (prices, the budget ladder, the tool catalog) and hands the pure grant its
 * answer; metering records a reported batch exactly as the synchronous gate records an allowed
 * step — the same usage keys (task:step:seq), audit row and agent_steps row — so a re-sent batch
 * is charged once and the ledger cannot tell a leased step from a synchronous one but by its lease id.
 */
export function createLeasedStepActivities({ db, config, clock, stepCallerRefused }: LeasedStepDeps) {
  /** Whether the ladder degrades (or an SLO holds) this task's steps now: then every step is synchronous. */
  const ladderSaysSync = async (intent: Intent): Promise<boolean> => {
    const critical = config.policies.criticalPriorities.includes(intent.priority);
    const forbidding = fallbackForbiddenBy(config.policies.slos, intent.attribution);
    const l = ladderDegrade(await scopeLadder(db, intent.attribution, clock()), critical, config.policies.ladder, forbidding !== null);
    return l.degrade || l.held.length > 0;
  };

  return {
    async grantLeasedSteps(input: {
      taskId: string;
      leaseId: string;
      intent: Intent;
      plan: Plan;
      totals: StepTotals;
      nextSeq: number;
      want: { steps: number; usd?: number; tokens?: number };
      ttlSeconds: number;
      requester: string;
      caller: Caller;
    }): Promise<LeaseGrantOutcome> {
      const { taskId, intent, plan } = input;
      const refused = await stepCallerRefused(taskId, intent.attribution.tenant, input.requester, input.caller);
      if (refused) return { decision: 'refused', why: refused.code, message: refused.message };
      const now = clock();
      const version = priceVersionAt(config.priceBook, now.toISOString());
      const later = config.priceBook.map((v) => Date.parse(v.effectiveFrom)).filter((t) => t > now.getTime());
      const model = intent.attribution.model;
      const g = grantStepLease({
        leaseId: input.leaseId,
        taskId,
        now: now.toISOString(),
        ttlSeconds: input.ttlSeconds,
        want: input.want,
        caps: plan.caps,
        totals: input.totals,
        reservedMicros: plan.worstCaseMicros,
        degradeAtFraction: config.policies.stepGate.degradeAtFraction,
        primaryModel: model,
        fallbackModel: plan.fallbackModel,
        prices: {
          inUsdPerToken: unitPriceUsd(version, { meter: 'tokens_in', subject: model }),
          outUsdPerToken: unitPriceUsd(version, { meter: 'tokens_out', subject: model }),
          version: version.version,
          validUntil: later.length > 0 ? new Date(Math.min(...later)).toISOString() : null,
        },
        tools: { catalog: config.tools, declared: intent.tools },
        toolOverheadTokens: plan.toolOverheadTokens ?? 0,
        ladderDegrade: await ladderSaysSync(intent),
        nextSeq: input.nextSeq,
      });
      await appendAudit(db, {
        actor: 'govloop',
        taskId,
        action: 'step-lease.grant',
        decision: g.decision,
        detail:
          g.decision === 'granted' ? { leaseId: input.leaseId, amount: g.lease.amount, expiresAt: g.lease.expiresAt } : { leaseId: input.leaseId, why: g.why },
        dedupeKey: `${taskId}:step-lease:${input.leaseId}`,
      });
      return g;
    },

    /**
     * Meters a folded batch: each step charged on the lease's model at the price-book version the
     * lease was granted under (occurredAt is kept inside the lease's life, which ends before the
     * next version starts). Answers what the ledger charged and whether the ladder now wants the
     * task's steps synchronous (the workflow then closes the lease).
     */
    async meterLeasedSteps(input: {
      taskId: string;
      intent: Intent;
      lease: StepLease;
      steps: { seq: number; step: LeasedStep; costMicros: number }[];
      requester: string;
      caller: Caller;
    }): Promise<{ refused: Reason } | { costMicros: number[]; ladderSync: boolean }> {
      const { taskId, intent, lease } = input;
      // Who reports: the same rule as the synchronous gate's (the requester, or an operator of the tenant).
      const refused = await stepCallerRefused(taskId, intent.attribution.tenant, input.requester, input.caller);
      if (refused) return { refused };
      if (input.steps.length === 0) return { costMicros: [], ladderSync: await ladderSaysSync(intent) };
      const started = clock();
      const at = new Date(Math.min(Math.max(started.getTime(), Date.parse(lease.grantedAt)), Date.parse(lease.expiresAt) - 1));
      const attribution = { ...intent.attribution, model: lease.model };
      const version = priceVersionAt(config.priceBook, at.toISOString());
      const charged = input.steps.map(
        ({ step }) =>
          costMicros(version, { meter: 'tokens_in', quantity: step.tokensIn, subject: lease.model }) +
          costMicros(version, { meter: 'tokens_out', quantity: step.tokensOut, subject: lease.model }),
      );
      charged.forEach((c, i) => {
        if (c !== input.steps[i]!.costMicros)
          log.warn('leased step priced differently by the ledger', { taskId, seq: input.steps[i]!.seq, lease: input.steps[i]!.costMicros, ledger: c });
      });
      await db.tx(async (c) => {
        await recordUsageIn(
          c,
          config.priceBook,
          input.steps.flatMap(({ seq, step }) =>
            (['tokens_in', 'tokens_out'] as const).map((meter) => ({
              key: `${taskId}:step:${seq}:${meter}`,
              taskId,
              attribution,
              tool: step.tool ?? null,
              meter,
              subject: lease.model,
              quantity: meter === 'tokens_in' ? step.tokensIn : step.tokensOut,
              occurredAt: at,
            })),
          ),
          config.policies.usageLimits,
        );
        for (const [i, { seq, step }] of input.steps.entries()) {
          await appendAudit(c, {
            actor: 'govloop',
            taskId,
            action: 'step',
            decision: 'allow',
            detail: {
              seq,
              tool: step.tool ?? null,
              argsDigest: null,
              tokensIn: step.tokensIn,
              tokensOut: step.tokensOut,
              contextTokens: step.contextTokens,
              model: lease.model,
              costUsd: charged[i]! / 1e6,
              leaseId: lease.leaseId,
              ...(step.latencyMs !== undefined ? { latencyMs: step.latencyMs } : {}),
            },
            dedupeKey: `${taskId}:step:${seq}`,
          });
          await recordStep(c, { taskId, seq, decision: 'allow', model: lease.model, latencyMs: step.latencyMs ?? null, gateMs: 0, at });
        }
      });
      return { costMicros: charged, ladderSync: await ladderSaysSync(intent) };
    },
  };
}
