import { randomBytes } from 'node:crypto';
import { type Client, WorkflowUpdateFailedError } from '@temporalio/client';
import { z } from 'zod';
import { type LeaseAmount, type LeasedStep, type StepLease, type SyncReason, SyncReasons, decideLocally, zeroAmount } from '../governance/step-lease';
import { StepUsageSchema, type StepUsage } from '../governance/step-gate';
import type { StepAnswer } from '../workflows/messages';
import { GovloopAccessError, GovloopStateError } from './errors';
import {
  LeasedStepErrors,
  type LeasedStepsAnswer,
  type StepLeaseAnswer,
  type StepLeaseRequest,
  StepLeaseRequestSchema,
  grantStepLeaseUpdate,
  reportLeasedStepsUpdate,
} from '../workflows/leased-steps';

/** What the leased gate needs of the GovloopClient that opened it (a structural type: no import back into sdk/index.ts). */
interface GateHost {
  readonly client: Client;
  readonly credential: string | undefined;
  step(taskId: string, usage: StepUsage, opts?: { as?: string }): Promise<StepAnswer>;
  finish(taskId: string, as?: string): Promise<unknown>;
}

/** What `close({ finish: true })` answers: the task finished (and settles), or why it was not. */
export type LeasedCloseAnswer = { finished: true } | { finished: { refused: { code: string; message: string } } };

export { LeasedStepErrors, type SyncReason };

/** What a lease asks for is the grant update's own fields (workflows/leased-steps.ts), with its defaults. */
const grant = StepLeaseRequestSchema.shape;
export const LeasedGateOptions = z.strictObject({
  /** Steps (and at most this many tool calls) one lease covers. */
  steps: grant.steps,
  /** USD one lease covers (default: all the task's caps leave below the degrade threshold). */
  usd: grant.usd,
  /** Tokens one lease covers (default: all the caps leave below the degrade threshold). */
  tokens: grant.tokens,
  ttlSeconds: grant.ttlSeconds,
  /** Report when this many steps wait, or this long after the first of them, whichever first. */
  batchSize: z.number().int().positive().max(1000).default(32),
  flushMs: z.number().int().positive().max(60_000).default(250),
  /** After a refused grant (ladder, cap edge), steps go synchronous this long before asking again. */
  regrantAfterMs: z.number().int().nonnegative().max(600_000).default(1000),
  /** A typed name (auth: none only; a credential names the caller otherwise). */
  as: grant.as,
});
export type LeasedGateOptions = z.input<typeof LeasedGateOptions>;

/** A step's answer: the gate's, and whether it was decided in process (leased) or why it went synchronous. */
export type LeasedStepAnswer = StepAnswer & { leased: boolean; sync: SyncReason | null };

/** A batch report the task refused: `errors` name the fields (seq, steps.N, leaseId). */
export class GovloopLeaseReportError extends Error {
  constructor(
    readonly code: string,
    readonly errors: { path: string; message: string }[],
  ) {
    super(`${code}: ${errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
    this.name = 'GovloopLeaseReportError';
  }
}
const FieldErrors = z.array(z.object({ path: z.string(), message: z.string() })).min(1);

/**
 * The leased step gate on a task handle (decision 0030). `step()` decides a low-risk step inside
 * the lease in process (microseconds, no round trip) and queues it for the next batch report;
 * anything else — a tool that needs approval or has side effects, a cap's edge, a ladder step, an
 * expired lease — closes the lease (reporting what is queued) and takes the synchronous gate.
 * Reports go out every `batchSize` steps or `flushMs`; `close()` reports the rest and gives the
 * unused part of the lease back. Close the gate before finishing the task.
 */
export class LeasedStepGate {
  private lease: StepLease | null = null;
  private expiresAtMs = 0;
  private used: LeaseAmount = zeroAmount;
  private batchSeq = 0;
  private pending: LeasedStep[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** Grants, reports and closes, one at a time and in order. */
  private ops: Promise<unknown> = Promise.resolve();
  private refusedUntil = 0;
  private leases = 0;
  /** The task's cost when the lease was granted, in micro-dollars. */
  private baseMicros = 0;
  readonly opts: z.output<typeof LeasedGateOptions>;
  readonly stats = { local: 0, synchronous: 0, grants: 0, reports: 0 };
  /** The last background report's failure (the batch stays queued and is sent again). */
  lastError: Error | null = null;

  constructor(
    private readonly gov: GateHost,
    readonly taskId: string,
    options: LeasedGateOptions = {},
  ) {
    const o = LeasedGateOptions.safeParse(options);
    if (!o.success)
      throw new GovloopLeaseReportError(
        LeasedStepErrors.InvalidLeaseRequest,
        o.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })),
      );
    this.opts = o.data;
  }

  private get handle() {
    return this.gov.client.workflow.getHandle(this.taskId);
  }
  private caller() {
    return this.gov.credential ? { credential: this.gov.credential } : this.opts.as !== undefined ? { as: this.opts.as } : {};
  }
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.ops.then(fn);
    this.ops = run.catch(() => undefined);
    return run;
  }

  /** The lease in force, if any (tests and dashboards). */
  get current(): { lease: StepLease; used: LeaseAmount } | null {
    return this.lease && { lease: this.lease, used: this.used };
  }

  /**
   * The hot path only: the answer if the lease decides the step in process, else null (no I/O,
   * nothing queued). `step()` calls it first.
   */
  tryLocal(usage: StepUsage): LeasedStepAnswer | null {
    const l = this.lease;
    if (l === null) return null;
    const d = decideLocally(l, this.expiresAtMs, this.used, usage, Date.now());
    if (d.decision !== 'allow') {
      this.lastWhy = d.why;
      return null;
    }
    this.used = d.used;
    this.pending.push({
      tokensIn: usage.tokensIn,
      tokensOut: usage.tokensOut,
      contextTokens: usage.contextTokens,
      ...(usage.tool !== undefined ? { tool: usage.tool } : {}),
      ...(usage.latencyMs !== undefined ? { latencyMs: usage.latencyMs } : {}),
    });
    this.stats.local++;
    if (this.pending.length >= this.opts.batchSize) void this.flush().catch(this.remember);
    else if (this.timer === null) this.timer = setTimeout(() => void this.flush().catch(this.remember), this.opts.flushMs).unref();
    return {
      answer: 'allow',
      reason: null,
      approvalId: null,
      fallbackModel: null,
      step: d.seq,
      costUsd: (this.baseMicros + d.used.micros) / 1e6,
      leased: true,
      sync: null,
    };
  }

  private remember = (e: unknown) => {
    this.lastError = e instanceof Error ? e : new Error(String(e));
  };

  /** One agent step: decided in process when the lease covers it, else by the synchronous gate. */
  async step(usage: StepUsage): Promise<LeasedStepAnswer> {
    const parsed = StepUsageSchema.safeParse(usage);
    // Bad usage: the client's own check refuses it with GovloopInputError, naming the fields (nothing is sent).
    if (!parsed.success) return { ...(await this.gov.step(this.taskId, usage)), leased: false, sync: null };
    const s = parsed.data;
    const local = this.tryLocal(s);
    if (local) return local;
    let why = this.lastWhy;
    // The lease ran out, not necessarily the task: report and close it, and ask for a fresh one.
    if (this.lease !== null && why === SyncReasons.CapEdge && this.used.steps > 0) await this.serial(() => this.sendPending(true));
    if (this.lease === null) {
      why = this.unleasable(s);
      if (why === null && Date.now() >= this.refusedUntil) {
        await this.acquire();
        const second = this.tryLocal(s);
        if (second) return second;
        why = this.lease === null ? (this.refusedWhy ?? SyncReasons.CapEdge) : this.lastWhy;
      }
      why ??= this.refusedWhy ?? SyncReasons.CapEdge;
    }
    // A step even a fresh lease cannot cover: the next ones go synchronous for a while instead of leasing again at once.
    if (why === SyncReasons.CapEdge && this.used.steps === 0) this.refusedUntil = Date.now() + this.opts.regrantAfterMs;
    // Synchronous: the lease is reported and closed first, so the gate judges the task's true totals;
    // in the op chain, so this gate takes no new lease while the step is in flight.
    this.stats.synchronous++;
    const a = await this.serial(async () => {
      await this.sendPending(true);
      return this.gov.step(this.taskId, s, this.opts.as !== undefined ? { as: this.opts.as } : {});
    });
    return { ...a, leased: false, sync: why };
  }

  /** Why a step could not be leased whatever the lease's amount, going by the last lease (null: it could be). */
  private unleasable(s: StepUsage): SyncReason | null {
    const l = this.lastLease;
    if (l === null) return null;
    if (s.model !== undefined && s.model !== l.model) return SyncReasons.Model;
    if (s.tool !== undefined && !l.tools.includes(s.tool)) return SyncReasons.HighRiskTool;
    return null;
  }
  private refusedWhy: SyncReason | null = null;
  private lastWhy: SyncReason | null = null;
  private lastLease: StepLease | null = null;

  /**
   * The request for this gate's next lease, as the grant update takes it; GovloopClient.submit
   * with `leasedSteps` sends the first one with the admission, and `adopt`s what it grants.
   */
  leaseRequest(): StepLeaseRequest {
    return {
      leaseId: `${this.taskId}.l${++this.leases}-${randomBytes(3).toString('hex')}`,
      steps: this.opts.steps,
      ttlSeconds: this.opts.ttlSeconds,
      ...(this.opts.usd !== undefined ? { usd: this.opts.usd } : {}),
      ...(this.opts.tokens !== undefined ? { tokens: this.opts.tokens } : {}),
      ...this.caller(),
    };
  }

  /** Takes a lease (after the one before it was closed). */
  private acquire(): Promise<void> {
    return this.serial(async () => {
      if (this.lease !== null) return;
      const a = await this.handle.executeUpdate(grantStepLeaseUpdate, { args: [this.leaseRequest()] });
      if (!a.granted) {
        this.refusedUntil = Date.now() + this.opts.regrantAfterMs;
        this.refusedWhy = (Object.values(SyncReasons) as string[]).includes(a.why) ? (a.why as SyncReason) : null;
        return;
      }
      this.adopt(a);
    });
  }

  /** Holds a granted lease: the grant update's, or the one admission granted with a submit. */
  adopt(a: Extract<StepLeaseAnswer, { granted: true }>): void {
    this.stats.grants++;
    this.refusedWhy = null;
    this.lease = a.lease;
    this.lastLease = a.lease;
    this.baseMicros = Math.round(a.costUsd * 1e6);
    // The lease's clock is the task's; a local clock ahead of it only ends the lease sooner here.
    this.expiresAtMs = Date.parse(a.lease.expiresAt);
    this.used = zeroAmount;
    this.batchSeq = 0;
  }

  /** Reports the queued steps (no-op when none); with `close`, closes the lease too. */
  flush(close = false): Promise<void> {
    this.stopTimer();
    return this.serial(async () => void (await this.sendPending(close)));
  }

  private stopTimer(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  /** Inside the op chain: the queued steps as the lease's next batch (null: no lease was open, nothing sent). */
  private async sendPending(close: boolean, finish = false): Promise<LeasedStepsAnswer | null> {
    const l = this.lease;
    if (l === null) return null;
    const steps = this.pending.splice(0);
    if (close) this.lease = null;
    if (steps.length === 0 && !close) return null;
    return this.send(l, ++this.batchSeq, steps, close, finish);
  }

  /** Sends one batch; a failure in transit sends the very same batch again (it is applied once). */
  private async send(l: StepLease, seq: number, steps: LeasedStep[], close: boolean, finish: boolean): Promise<LeasedStepsAnswer> {
    for (let attempt = 1; ; attempt++) {
      try {
        const a: LeasedStepsAnswer = await this.handle.executeUpdate(reportLeasedStepsUpdate, {
          args: [{ leaseId: l.leaseId, seq, steps, ...(close ? { close: true } : {}), ...(finish ? { finish: true } : {}), ...this.caller() }],
        });
        this.stats.reports++;
        // Revoked by the task (the ladder moved, or the task degraded): every step is synchronous from here.
        if (!a.open && this.lease?.leaseId === l.leaseId) this.lease = null;
        return a;
      } catch (err) {
        if (err instanceof WorkflowUpdateFailedError) {
          const cause = err.cause as { type?: string; details?: unknown[]; message?: string } | undefined;
          const listed = FieldErrors.safeParse(cause?.details?.[0]);
          throw new GovloopLeaseReportError(
            cause?.type ?? 'Refused',
            listed.success ? listed.data : [{ path: '(root)', message: cause?.message ?? String(err) }],
          );
        }
        if (attempt >= 5) throw err;
        await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      }
    }
  }

  /**
   * Reports what is queued and closes the lease: the task gets back what it still held. With
   * `finish`, the agent's work is done: the closing batch also finishes the task, which settles,
   * in the same round trip (with no lease open, the finish update does it). Answers whether it
   * finished; a caller who may not finish it gets the refusal, and the task goes on.
   */
  async close(): Promise<void>;
  async close(opts: { finish: true }): Promise<LeasedCloseAnswer>;
  async close(opts: { finish?: boolean } = {}): Promise<LeasedCloseAnswer | void> {
    if (opts.finish !== true) return this.flush(true);
    this.stopTimer();
    return this.serial(async (): Promise<LeasedCloseAnswer> => {
      const a = await this.sendPending(true, true);
      if (a?.finished !== undefined) return { finished: a.finished };
      // No lease was open: the finish update, refused the same way for the same caller.
      try {
        await this.gov.finish(this.taskId, this.opts.as); // the client names a credential's caller over `as`
        return { finished: true };
      } catch (err) {
        if (err instanceof GovloopAccessError) return { finished: { refused: { code: err.code, message: err.message } } };
        if (err instanceof GovloopStateError) return { finished: { refused: { code: 'NOT_RUNNING', message: err.message } } };
        throw err;
      }
    });
  }
}
