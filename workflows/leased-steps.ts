/**
 * The leased step gate, workflow side (decision 0030): a governed task grants step leases and
 * folds the batches its agent reports. The task counts an open lease as spent (its whole amount
 * is added to the totals the synchronous gate judges), each report turns part of that hold into
 * metered usage, and a close gives the unused rest back. Safe to import from workflow code.
 */
import { ApplicationFailure, condition, defineUpdate, setHandler } from '@temporalio/workflow';
import { z } from 'zod';
import type { Activities } from '../activities';
import type { Intent } from '../governance/intent';
import type { Plan } from '../governance/plan';
import { StepUsageSchema, type StepTotals } from '../governance/step-gate';
import {
  type LeaseAmount,
  type LeaseRecord,
  type StepLease,
  type SyncReason,
  SyncReasons,
  foldBatch,
  heldBy,
  plus,
  shiftTotals,
  zeroAmount,
} from '../governance/step-lease';
import { type CarriedTask, GovState } from './messages';
import type { FinishTask } from './task/agent-steps';
import { CallerShape, NameText, issuesList, issuesText } from './schemas';

/** Error types a refused lease call carries (the SDK reads them). */
export const LeasedStepErrors = {
  InvalidLeaseRequest: 'InvalidLeaseRequest',
  InvalidLeaseReport: 'InvalidLeaseReport',
  UnknownStepLease: 'UnknownStepLease',
  NotAcceptingSteps: 'NotAcceptingSteps',
} as const;

export const StepLeaseRequestSchema = z.strictObject({
  /** The caller's id for the lease: asking again with it answers the same lease. */
  leaseId: NameText,
  steps: z.number().int().positive().max(10_000).default(64),
  usd: z.number().positive().max(1_000_000).optional(),
  tokens: z.number().int().positive().max(1e9).optional(),
  ttlSeconds: z.number().int().min(1).max(3600).default(30),
  ...CallerShape,
});
export const LeasedStepSchema = StepUsageSchema.pick({ tokensIn: true, tokensOut: true, contextTokens: true, model: true, tool: true, latencyMs: true });
export const LeasedStepsReportSchema = z
  .strictObject({
    leaseId: NameText,
    /** 1, 2, 3 … per lease: a batch sent again is applied once. */
    seq: z.number().int().positive(),
    steps: z.array(LeasedStepSchema).max(1000),
    /** Close the lease with this batch: what it still holds goes back to the task. */
    close: z.boolean().optional(),
    /**
     * The agent's work is done: once this closing batch is metered, the task is finished (the same
     * check and audit as the finish update) and settles, in the same round trip. Only with `close`.
     */
    finish: z.boolean().optional(),
    ...CallerShape,
  })
  .refine((r) => r.finish !== true || r.close === true, { path: ['finish'], message: 'finish goes with close: true (the closing batch)' });
export type StepLeaseRequest = z.input<typeof StepLeaseRequestSchema>;
export type LeasedStepsReport = z.input<typeof LeasedStepsReportSchema>;

/** Granted: the lease, and the task's metered cost then. */
export type StepLeaseAnswer =
  { granted: true; lease: StepLease; costUsd: number } | { granted: false; leaseId: string; why: SyncReason | string; message: string };
export interface LeasedStepsAnswer {
  leaseId: string;
  duplicate: boolean;
  /** False once the lease is closed: by this batch, or by the task because the ladder or a degrade now wants every step synchronous. */
  open: boolean;
  why: SyncReason | null;
  reported: LeaseAmount;
  /** The task's metered cost after this batch. */
  costUsd: number;
  /** Asked with `finish`: true when the task is finished and settling, else why not (who may not, or the task no longer runs). */
  finished?: true | { refused: { code: string; message: string } };
}

export const grantStepLeaseUpdate = defineUpdate<StepLeaseAnswer, [StepLeaseRequest]>('grantStepLease');
export const reportLeasedStepsUpdate = defineUpdate<LeasedStepsAnswer, [LeasedStepsReport]>('reportLeasedSteps');

/** How long past the last open lease's expiry a task that ends waits for its last report. */
export const REPORT_GRACE_MS = 5000;
/** Closed leases a task carries into its next run (a late duplicate is still recognised). */
const CARRIED_CLOSED = 20;

type Usage = CarriedTask['usage'];
/** What a governed task lends the leased gate: a view of its counters, a way to set them, its step chain. */
export interface LeasedStepsHost {
  taskId: string;
  intent: Intent;
  ledger: Pick<Activities, 'grantLeasedSteps' | 'meterLeasedSteps'>;
  carried: LeaseRecord[] | undefined;
  view: () => { state: GovState; plan: Plan | null; totals: StepTotals; usage: Usage; stepSeq: number; requester: string; finished: boolean };
  set: (p: { totals?: StepTotals; usage?: Usage; stepSeq?: number }) => void;
  /** Runs after every step, grant and report before it: one at a time, each against the counters the last one left. */
  serial: <T>(fn: () => Promise<T>) => Promise<T>;
  /** Finishes the task for this caller, as the finish update does; answers why not when it may not. */
  finish: FinishTask;
}

function parse<T>(schema: z.ZodType<T>, payload: unknown): T {
  const p = schema.safeParse(payload);
  if (!p.success) throw ApplicationFailure.nonRetryable(issuesText(p.error), LeasedStepErrors.InvalidLeaseRequest, issuesList(p.error));
  return p.data;
}
const refuseReport = (issues: { path: string; message: string }[]) =>
  ApplicationFailure.nonRetryable(issues.map((i) => `${i.path}: ${i.message}`).join('; '), LeasedStepErrors.InvalidLeaseReport, issues);

export function installLeasedSteps(host: LeasedStepsHost) {
  const leases = new Map<string, LeaseRecord>((host.carried ?? []).map((r) => [r.lease.leaseId, r]));
  const open = () => [...leases.values()].filter((r) => !r.closed);
  const callerOf = (m: { credential?: string | undefined; as?: string | undefined }) => ({
    ...(m.credential ? { credential: m.credential } : {}),
    ...(m.as !== undefined ? { as: m.as } : {}),
  });

  /** The task's reported cost: its totals less what open leases still hold. */
  const syncUsage = () => {
    const v = host.view();
    const held = open().reduce((s, r) => plus(s, heldBy(r)), zeroAmount);
    host.set({ usage: { ...v.usage, costMicros: v.totals.costMicros - held.micros } });
  };
  /** Closes a lease: what it still holds goes back to the task. */
  const close = (r: LeaseRecord): LeaseRecord => {
    const rest = heldBy(r);
    const closed = { ...r, closed: true };
    leases.set(r.lease.leaseId, closed);
    host.set({ totals: shiftTotals(host.view().totals, rest, -1) });
    syncUsage();
    return closed;
  };

  /** Grants a step lease (the grantStepLease update; or with admission, asked for at submit). */
  const grant = (raw: StepLeaseRequest): Promise<StepLeaseAnswer> => {
    const req = StepLeaseRequestSchema.parse(raw);
    return host.serial(async () => {
      const known = leases.get(req.leaseId);
      if (known) return { granted: true, lease: known.lease, costUsd: host.view().usage.costMicros / 1e6 };
      const v = host.view();
      if (v.state !== GovState.Running || v.plan === null)
        return { granted: false, leaseId: req.leaseId, why: SyncReasons.NotRunning, message: `task ${host.taskId} is ${v.state}` };
      const g = await host.ledger.grantLeasedSteps({
        taskId: host.taskId,
        leaseId: req.leaseId,
        intent: host.intent,
        plan: v.plan,
        totals: v.totals,
        nextSeq: v.stepSeq + 1,
        want: { steps: req.steps, ...(req.usd !== undefined ? { usd: req.usd } : {}), ...(req.tokens !== undefined ? { tokens: req.tokens } : {}) },
        ttlSeconds: req.ttlSeconds,
        requester: v.requester,
        caller: callerOf(req),
      });
      if (g.decision !== 'granted') return { granted: false, leaseId: req.leaseId, why: g.why, message: g.message };
      // Granted while nothing else ran (serial): its steps' seqs and its amount are the task's now.
      const now = host.view();
      if (now.state !== GovState.Running)
        return { granted: false, leaseId: req.leaseId, why: SyncReasons.NotRunning, message: `task ${host.taskId} is ${now.state}` };
      leases.set(req.leaseId, { lease: g.lease, reported: zeroAmount, batches: 0, closed: false });
      host.set({ totals: shiftTotals(now.totals, g.lease.amount, 1), stepSeq: now.stepSeq + g.lease.amount.steps });
      return { granted: true, lease: g.lease, costUsd: now.usage.costMicros / 1e6 };
    });
  };

  setHandler(grantStepLeaseUpdate, grant, {
    validator: (raw) => {
      parse(StepLeaseRequestSchema, raw);
      const v = host.view();
      if (v.plan !== null && v.plan.placement !== 'hosted')
        throw ApplicationFailure.nonRetryable(`task ${host.taskId} runs on the cluster; only hosted tasks take steps`, LeasedStepErrors.NotAcceptingSteps);
    },
  });

  const answer = (r: LeaseRecord, duplicate: boolean, why: SyncReason | null): LeasedStepsAnswer => ({
    leaseId: r.lease.leaseId,
    duplicate,
    open: !r.closed,
    why,
    reported: r.reported,
    costUsd: host.view().usage.costMicros / 1e6,
  });

  /** A closing batch that finishes the task: finished already (the same batch sent again), or finish it now if it still runs. */
  const finishWith = async (batch: { credential?: string | undefined; as?: string | undefined }): Promise<NonNullable<LeasedStepsAnswer['finished']>> => {
    const v = host.view();
    if (v.finished) return true;
    if (v.state !== GovState.Running) return { refused: { code: 'NOT_RUNNING', message: `task ${host.taskId} is ${v.state}` } };
    return host.finish(callerOf(batch));
  };

  setHandler(
    reportLeasedStepsUpdate,
    (raw): Promise<LeasedStepsAnswer> => {
      const batch = LeasedStepsReportSchema.parse(raw);
      return host.serial(async () => {
        const record = leases.get(batch.leaseId)!;
        const f = foldBatch(record, batch);
        if (f.kind === 'duplicate')
          return batch.finish === true ? { ...answer(record, true, null), finished: await finishWith(batch) } : answer(record, true, null);
        if (f.kind === 'refused') throw refuseReport(f.issues);
        const metered = await host.ledger.meterLeasedSteps({
          taskId: host.taskId,
          intent: host.intent,
          lease: record.lease,
          steps: f.steps,
          requester: host.view().requester,
          caller: callerOf(batch),
        });
        // Refused for who sent it (audited by the activity): nothing was metered or changed.
        if ('refused' in metered) throw ApplicationFailure.nonRetryable(metered.refused.message, metered.refused.code);
        const ladderSync = metered.ladderSync;
        // The hold turns into usage: the totals already count these steps; tokens go to usage.
        leases.set(batch.leaseId, f.record);
        const v = host.view();
        const tokensIn = f.steps.reduce((s, x) => s + x.step.tokensIn, 0);
        const tokensOut = f.steps.reduce((s, x) => s + x.step.tokensOut, 0);
        host.set({ usage: { ...v.usage, tokensIn: v.usage.tokensIn + tokensIn, tokensOut: v.usage.tokensOut + tokensOut } });
        // Closed with this batch, or revoked: the ladder or a degrade now wants every step synchronous.
        const revoke = !f.record.closed && (ladderSync || v.totals.degraded) ? SyncReasons.Ladder : null;
        const after = f.record.closed ? close({ ...f.record, closed: false }) : revoke ? close(f.record) : f.record;
        syncUsage();
        const a = answer(after, false, revoke);
        return batch.finish === true ? { ...a, finished: await finishWith(batch) } : a;
      });
    },
    {
      validator: (raw) => {
        const p = LeasedStepsReportSchema.safeParse(raw);
        if (!p.success) throw ApplicationFailure.nonRetryable(issuesText(p.error), LeasedStepErrors.InvalidLeaseReport, issuesList(p.error));
        const record = leases.get(p.data.leaseId);
        if (!record) throw ApplicationFailure.nonRetryable(`task ${host.taskId} has no step lease ${p.data.leaseId}`, LeasedStepErrors.UnknownStepLease);
        const f = foldBatch(record, p.data);
        if (f.kind === 'refused') throw refuseReport(f.issues);
      },
    },
  );

  return {
    grant,
    /** What the next run needs: open leases, and the last closed ones. */
    carry: (): { leased?: LeaseRecord[] } => {
      if (leases.size === 0) return {};
      const all = [...leases.values()];
      return { leased: [...all.filter((r) => !r.closed), ...all.filter((r) => r.closed).slice(-CARRIED_CLOSED)] };
    },
    /**
     * Before the task settles: waits for the open leases to be reported and closed, at most until
     * the last one expires plus REPORT_GRACE_MS, then closes what is left (an agent that never
     * reports loses the steps it took, bounded by what its leases held).
     */
    drain: async (): Promise<void> => {
      if (open().length === 0) return;
      const until = Math.max(...open().map((r) => Date.parse(r.lease.expiresAt))) + REPORT_GRACE_MS;
      await condition(() => open().length === 0, Math.max(1, until - Date.now()));
      for (const r of open()) close(r);
    },
  };
}
