import type { Intent } from '../governance/intent';
import { type LadderStep, ladderDegrade, stepRank } from '../governance/ladder';
import { own } from '../governance/own';
import type { Plan } from '../governance/plan';
import { costMicros, priceVersionAt } from '../governance/pricing';
import type { Reason, ReasonCode } from '../governance/reasons';
import { fallbackForbiddenBy, sloLabel } from '../governance/slo';
import { type StepTotals, type StepUsage, allowedModels, evaluateStep } from '../governance/step-gate';
import { actorName } from '../governance/authz';
import { approverRoles } from '../governance/tools';
import { type ApprovalClaims, argsDigest as argsDigestOf, signApprovalToken } from '../identity/approval-token';
import type { Caller } from '../identity/authenticate';
import { loadOrCreateSigningKey } from '../identity/signing';
import { approvalMatches, getApproval, requestApproval, sameIdentity } from '../ledger/approvals';
import { appendAudit } from '../ledger/audit';
import { auditRefusal, checkAccess } from '../ledger/authz';
import type { Queryable } from '../ledger/db';
import { scopeLadder } from '../ledger/ladder';
import { recordSloHold, recordStep } from '../ledger/slo';
import { recordUsageIn } from '../ledger/usage';
import { type ActivityContext, callingRunId } from './context';

/** The gate's answer, as the workflow sees it. */
export type GateOutcome =
  | {
      answer: 'allow' | 'degrade';
      totals: StepTotals;
      model: string;
      costMicros: number;
      sideEffect: boolean;
      argsDigest: string | null;
      approvalToken?: string;
    }
  | { answer: 'deny'; reason: Reason }
  | { answer: 'await-approval'; approvalId: string; argsDigest: string; requestedAt: number; escalateAfterMs: number; expiresAt: number; tiers: number };

/**
 * Refuses (audited) a step reported by anyone but the task's requester or an operator of its
 * tenant; null when the caller may report it. The synchronous gate and the leased gate's batch
 * reports (activities/leased-steps.ts) both ask it.
 */
export function stepCallerCheck({ db, whoIs }: Pick<ActivityContext, 'db' | 'whoIs'>) {
  return async function stepCallerRefused(taskId: string, tenant: string, requester: string | null, caller: Caller): Promise<Reason | null> {
    const who = await whoIs(db, caller);
    const reason = (code: string, message: string): Reason => ({ code: code as ReasonCode, message, limit: null, requested: null, policy: 'auth' });
    if (!who.ok) {
      await auditRefusal(db, null, 'step', who, { tenant }, taskId);
      return reason(who.code, who.message);
    }
    const own = requester !== null && sameIdentity(actorName(who.principal), requester);
    // On the pool, not in a transaction of its own: the grants are one read (none for a platform
    // admin), and a refusal's audit opens its own transaction (ledger/audit.ts). The step's writes
    // come later in another transaction either way.
    const d = await checkAccess(db, who.principal, own ? 'task.own' : 'operate', tenant, { taskId });
    return d.allowed ? null : reason(d.code, d.message);
  };
}

/**
 * An agent's steps (the governedTask's step update): who may report one, the step gate
 * (governance/step-gate.ts decides, the budget ladder may degrade), the approval a risky tool
 * call waits for, and the usage an allowed step commits.
 */
export function createAgentStepActivities({ db, config, deps, clock, whoIs }: ActivityContext) {
  const stepCallerRefused = stepCallerCheck({ db, whoIs });

  // The worker's key (policies.audit.signingKeyFile, resolved against the data dir at start).
  const keyFile = config.policies.audit?.signingKeyFile;
  const signingKey = deps.signingKey ?? (keyFile ? loadOrCreateSigningKey(keyFile) : undefined);
  /** A signed approval token: what the tool executor checks before the high-risk call runs. */
  function signApproval(claims: Omit<ApprovalClaims, 'v' | 'keyId'>): string | null {
    return signingKey ? signApprovalToken(signingKey, claims) : null;
  }

  async function approvalMismatch(approvalId: string, taskId: string, message: string): Promise<Reason> {
    const r: Reason = { code: 'APPROVAL_MISMATCH', message, limit: null, requested: approvalId, policy: 'tools#approvals' };
    await appendAudit(db, { actor: 'govloop', taskId, action: 'approval.refused', decision: r.code, detail: { approvalId, message } });
    return r;
  }

  return {
    /**
     * The agent step gate: prices the step (on its model and on the fallback), checks every cap
     * and the tool catalog, and commits its usage if allowed or degraded. A tool call that needs a
     * human opens an approval request instead and commits nothing until `approved` names it.
     * Idempotent by (task, seq): a retried activity answers the same and charges once.
     */
    async gateStep(input: {
      taskId: string;
      seq: number;
      intent: Intent;
      plan: Plan;
      totals: StepTotals;
      step: StepUsage;
      requester?: string;
      approved?: string;
      caller?: Caller;
    }): Promise<GateOutcome> {
      const { taskId, seq, intent, plan, totals, step } = input;
      const started = performance.now();
      const now = clock();
      const runId = callingRunId();
      // Who reports the step: the task's requester, or an operator of its tenant. An approved step
      // coming back is the workflow's own call, made for the step the requester reported.
      if (!input.approved) {
        const refused = await stepCallerRefused(taskId, intent.attribution.tenant, input.requester ?? null, input.caller ?? {});
        if (refused) return { answer: 'deny', reason: refused };
      }
      const version = priceVersionAt(config.priceBook, now.toISOString());
      const price = (model: string) =>
        costMicros(version, { meter: 'tokens_in', quantity: step.tokensIn, subject: model }) +
        costMicros(version, { meter: 'tokens_out', quantity: step.tokensOut, subject: model });
      const asked = step.model ?? intent.attribution.model;
      // A model the gate refuses (MODEL_NOT_ALLOWED) is not priced: the price book need not know it.
      const model = allowedModels(intent.attribution.model, plan.fallbackModel).includes(asked) ? asked : intent.attribution.model;
      // The budget ladder: past its degrade threshold, steps run on the fallback model (critical work
      // and use cases whose SLO forbids the fallback last: not before the queue step).
      const critical = config.policies.criticalPriorities.includes(intent.priority);
      const forbidding = fallbackForbiddenBy(config.policies.slos, intent.attribution);
      const windows = await scopeLadder(db, intent.attribution, now);
      const ladder = ladderDegrade(windows, critical, config.policies.ladder, forbidding !== null);
      const budgetDegrade = ladder.degrade;
      // A budget-degraded step's audit row names the ladder's highest step then (the SLO gate reads it).
      const ladderNow = windows.reduce<LadderStep>((top, w) => (stepRank(w.step) > stepRank(top) ? w.step : top), 'ok');
      const decision = evaluateStep({
        budgetDegrade,
        caps: plan.caps,
        totals,
        step,
        primaryModel: intent.attribution.model,
        fallbackModel: plan.fallbackModel,
        costMicros: price(model),
        fallbackCostMicros: plan.fallbackModel === null ? null : price(plan.fallbackModel),
        reservedMicros: plan.worstCaseMicros,
        tools: { catalog: config.tools, declared: intent.tools },
        toolOverheadTokens: plan.toolOverheadTokens ?? 0,
        degradeAtFraction: config.policies.stepGate.degradeAtFraction,
        now: now.toISOString(),
      });
      const gateMs = performance.now() - started;
      const recordThisStep = (c: Queryable, answer: 'allow' | 'degrade' | 'deny', model: string | null) =>
        recordStep(c, { taskId, seq, decision: answer, model, latencyMs: step.latencyMs ?? null, gateMs, at: now });
      const argsDigest = step.tool !== undefined ? argsDigestOf(step.toolArgs ?? null) : null;
      const dedupeKey = `${taskId}:step:${seq}${input.approved ? ':approved' : ''}`;
      const auditStep = (q: Queryable, answer: string, detail: Record<string, unknown>) =>
        appendAudit(q, {
          actor: 'govloop',
          taskId,
          action: 'step',
          decision: answer,
          detail: {
            seq,
            tool: step.tool ?? null,
            argsDigest,
            tokensIn: step.tokensIn,
            tokensOut: step.tokensOut,
            contextTokens: step.contextTokens,
            ...detail,
          },
          dedupeKey,
        });
      if (decision.answer === 'deny') {
        await db.tx(async (c) => {
          await auditStep(c, 'deny', { reason: decision.reason });
          await recordThisStep(c, 'deny', null);
        });
        return { answer: 'deny', reason: decision.reason };
      }
      if (decision.needsApproval && !input.approved) {
        const entry = own(config.tools.tools, step.tool!)!;
        const approvalId = `${taskId}.a${seq}`;
        const row = await db.tx(async (c) => {
          const r = await requestApproval(c, {
            approvalId,
            taskId,
            runId,
            seq,
            tenant: intent.attribution.tenant,
            tool: step.tool!,
            argsDigest: argsDigest!,
            requester: input.requester ?? 'unknown',
            costSoFarMicros: totals.costMicros,
            requestedAt: now,
            escalateAt: new Date(now.getTime() + entry.escalateAfterSeconds * 1000),
            expiresAt: new Date(now.getTime() + entry.approvalTtlSeconds * 1000),
          });
          // Only the request this step opened can be adopted: same run, step, tool and arguments.
          if (!approvalMatches(r, { runId, seq, tool: step.tool!, argsDigest: argsDigest! })) return null;
          await auditStep(c, 'await-approval', { approvalId, approverRoles: approverRoles(entry, 0) });
          return r;
        });
        if (row === null)
          return {
            answer: 'deny',
            reason: await approvalMismatch(approvalId, taskId, 'an approval request with this id exists for another run, step or arguments'),
          };
        return {
          answer: 'await-approval',
          approvalId,
          argsDigest: argsDigest!,
          requestedAt: row.requestedAt.getTime(),
          escalateAfterMs: entry.escalateAfterSeconds * 1000,
          expiresAt: row.expiresAt.getTime(),
          tiers: entry.approvers.length,
        };
      }
      let approvalToken: string | null = null;
      if (input.approved) {
        // The approval must be the one asked for this very call: same run, step, tool and arguments.
        const a = await getApproval(db, input.approved);
        if (!a || a.state !== 'approved' || !approvalMatches(a, { runId, seq, tool: step.tool ?? '', argsDigest: argsDigest ?? '' })) {
          return {
            answer: 'deny',
            reason: await approvalMismatch(
              input.approved,
              taskId,
              a ? `approval ${a.approvalId} (${a.state}) was given for another run, step or arguments` : `no approval ${input.approved}`,
            ),
          };
        }
        approvalToken = signApproval({
          approvalId: a.approvalId,
          taskId,
          runId,
          seq,
          tool: a.tool,
          argsDigest: a.argsDigest,
          approvedBy: a.decidedBy ?? '',
          expiresAt: new Date(now.getTime() + config.auth.approvalTokenTtlSeconds * 1000).toISOString(),
        });
      }
      const attribution = { ...intent.attribution, model: decision.model };
      await db.tx(async (c) => {
        await recordUsageIn(
          c,
          config.priceBook,
          [
            {
              key: `${taskId}:step:${seq}:tokens_in`,
              taskId,
              attribution,
              tool: step.tool ?? null,
              meter: 'tokens_in',
              subject: decision.model,
              quantity: step.tokensIn,
              occurredAt: now,
            },
            {
              key: `${taskId}:step:${seq}:tokens_out`,
              taskId,
              attribution,
              tool: step.tool ?? null,
              meter: 'tokens_out',
              subject: decision.model,
              quantity: step.tokensOut,
              occurredAt: now,
            },
          ],
          config.policies.usageLimits,
        );
        await auditStep(c, decision.answer, {
          model: decision.model,
          costUsd: decision.costMicros / 1e6,
          ...(budgetDegrade && decision.answer === 'degrade' ? { ladderStep: ladderNow } : {}),
          ...(input.approved ? { approvalId: input.approved } : {}),
          ...(step.latencyMs !== undefined ? { latencyMs: step.latencyMs } : {}),
        });
        await recordThisStep(c, decision.answer, decision.model);
        // The ladder would have degraded this step but the use case's SLO forbids the fallback: say so, once per window and crossing.
        if (forbidding !== null && decision.answer === 'allow') {
          for (const w of ladder.held)
            await recordSloHold(c, {
              budgetId: w.budgetId,
              window: w.window,
              step: w.step,
              sharePct: w.sharePct,
              slo: sloLabel(forbidding.scope),
              taskId,
              scope: w.scope,
            });
        }
      });
      return {
        answer: decision.answer,
        totals: decision.totals,
        model: decision.model,
        costMicros: decision.costMicros,
        sideEffect: decision.sideEffect,
        argsDigest,
        ...(approvalToken ? { approvalToken } : {}),
      };
    },
  };
}
