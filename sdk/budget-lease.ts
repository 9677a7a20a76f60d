import { type Client, WorkflowUpdateFailedError } from '@temporalio/client';
import { z } from 'zod';
import { BudgetScopeSchema } from '../governance/budget-scope';
import type { budgetController } from '../workflows';
import { LeaseErrors, leaseReturnUpdate, leaseSpendUpdate, leaseUpdate } from '../workflows/messages';
import { LeaseRequestSchema, LeaseReturnSchema, LeaseSpendSchema } from '../workflows/schemas';
import { GovloopInputError, GovloopLeaseError, GovloopNotFoundError, check } from './errors';

/** What a lease needs of the GovloopClient that opened it (a structural type: no import back into sdk/index.ts). */
interface LeaseHost {
  readonly client: Client;
}

/** Who holds a lease or submits: a name as the ledger records it. */
export const Requester = z.string().min(1).max(128);

/** The lease's own fields are the lease update's (workflows/schemas.ts): refused here as the budget controller would. */
const lease = LeaseRequestSchema.shape;
export const LeaseOptions = z
  .strictObject({
    scope: BudgetScopeSchema,
    period: z.enum(['day', 'week', 'month', 'total']).default('month'),
    usd: lease.usd,
    tokens: lease.tokens,
    model: lease.model,
    holder: lease.holder,
    ttlSeconds: lease.ttlSeconds.default(300),
    /** Renew when what is left of the leases falls under this share of the last grant. */
    renewBelow: z.number().gt(0).lt(1).default(0.25),
  })
  .refine((o) => (o.usd === undefined) !== (o.tokens === undefined), { message: 'give exactly one of usd or tokens', path: ['usd'] });
export type LeaseOptions = z.input<typeof LeaseOptions>;

/** The field errors a refused lease call carries as its details. */
const FieldErrorList = z.array(z.object({ path: z.string(), message: z.string() })).min(1);

/** Runs a lease update and turns the budget controller's refusals into typed errors (by their type, never their text). */
async function leaseCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const cause = err instanceof WorkflowUpdateFailedError ? (err.cause as { type?: string; message: string; details?: unknown[] } | undefined) : undefined;
    if (cause?.type === LeaseErrors.InvalidLeaseRequest) {
      const listed = FieldErrorList.safeParse(cause.details?.[0]);
      throw new GovloopInputError(listed.success ? listed.data : [{ path: '(root)', message: cause.message }]);
    }
    if (cause?.type === LeaseErrors.UnknownLease) throw new GovloopNotFoundError(cause.message);
    throw err;
  }
}

interface HeldLease {
  leaseId: string;
  amountMicros: number;
  spentMicros: number;
  reportedMicros: number;
  seq: number;
  expiresAtMs: number;
}

/**
 * A budget lease in process: `trySpend` checks and spends locally (no round trip), renewal is
 * taken in the background before the leases run out, `flush` reports what was spent, and `close`
 * reports the rest and hands back what is left. Spend only what `trySpend` allowed and the scope's
 * budget is never overspent: every lease was held on the budget before it was granted.
 */
export class BudgetLease {
  private readonly held: HeldLease[] = [];
  private renewing: Promise<void> | null = null;
  private lastGrantMicros = 0;
  private requests = 0;
  /** The last renewal's refusal or failure (renewal stops being tried until a spend succeeds again). */
  lastError: Error | null = null;
  grants = 0;

  constructor(
    private readonly gov: LeaseHost,
    private readonly workflowId: string,
    private readonly opts: z.output<typeof LeaseOptions>,
    private readonly requestPrefix: string,
  ) {}

  private get handle() {
    return this.gov.client.workflow.getHandle<typeof budgetController>(this.workflowId);
  }

  /** Micro-dollars this holder may still spend without a round trip. */
  get remainingMicros(): number {
    const now = Date.now();
    return this.held.reduce((s, l) => s + (l.expiresAtMs > now ? l.amountMicros - l.spentMicros : 0), 0);
  }

  get remainingUsd(): number {
    return this.remainingMicros / 1e6;
  }

  /** Takes a grant (first lease or renewal). Throws GovloopLeaseError when refused. */
  async acquire(): Promise<void> {
    const requestId = `${this.requestPrefix}-${++this.requests}`;
    const request = check(LeaseRequestSchema, {
      requestId,
      holder: this.opts.holder,
      ttlSeconds: this.opts.ttlSeconds,
      ...(this.opts.usd !== undefined ? { usd: this.opts.usd } : {}),
      ...(this.opts.tokens !== undefined ? { tokens: this.opts.tokens } : {}),
      ...(this.opts.model !== undefined ? { model: this.opts.model } : {}),
    });
    const a = await leaseCall(() => this.handle.executeUpdate(leaseUpdate, { args: [request] }));
    if (!a.granted) throw new GovloopLeaseError(a.reason);
    this.grants++;
    this.lastGrantMicros = Math.round(a.amountUsd * 1e6);
    this.held.push({ leaseId: a.leaseId, amountMicros: this.lastGrantMicros, spentMicros: 0, reportedMicros: 0, seq: 0, expiresAtMs: Date.parse(a.expiresAt) });
  }

  /**
   * Spends `usd` from the leases if they hold it (true), or spends nothing (false: wait for the
   * renewal, or refuse the work). Synchronous: the hot path never waits on the network.
   */
  trySpend(usd: number): boolean {
    const micros = Math.round(usd * 1e6);
    if (!(micros >= 0)) throw new GovloopInputError([{ path: 'usd', message: 'a number from 0' }]);
    if (micros > this.remainingMicros) {
      this.renewSoon();
      return false;
    }
    let left = micros;
    const now = Date.now();
    for (const l of this.held) {
      if (left === 0) break;
      if (l.expiresAtMs <= now) continue;
      const take = Math.min(left, l.amountMicros - l.spentMicros);
      l.spentMicros += take;
      left -= take;
    }
    if (this.remainingMicros < this.lastGrantMicros * this.opts.renewBelow) this.renewSoon();
    return true;
  }

  private renewSoon(): void {
    if (this.renewing !== null || this.lastError !== null) return;
    this.renewing = this.acquire()
      .catch((e: unknown) => {
        this.lastError = e instanceof Error ? e : new Error(String(e));
      })
      .finally(() => {
        this.renewing = null;
      });
  }

  /** Waits for a renewal in flight (tests, and callers that would rather wait than refuse). */
  async settled(): Promise<void> {
    await this.renewing;
  }

  /** Reports what was spent and not yet reported, lease by lease (idempotent by sequence number). */
  async flush(): Promise<void> {
    for (const l of this.held) {
      const micros = l.spentMicros - l.reportedMicros;
      if (micros <= 0) continue;
      const seq = l.seq + 1;
      const spend = check(LeaseSpendSchema, {
        leaseId: l.leaseId,
        seq,
        usd: micros / 1e6,
        ...(this.opts.model !== undefined ? { model: this.opts.model } : {}),
      });
      await leaseCall(() => this.handle.executeUpdate(leaseSpendUpdate, { args: [spend] }));
      l.seq = seq;
      l.reportedMicros += micros;
    }
  }

  /** Reports the rest and hands back what the leases still hold. */
  async close(): Promise<{ spentUsd: number; returnedUsd: number }> {
    await this.settled();
    await this.flush();
    let returned = 0;
    let spent = 0;
    for (const l of this.held.splice(0)) {
      const back = check(LeaseReturnSchema, { leaseId: l.leaseId, by: this.opts.holder });
      const r = await leaseCall(() => this.handle.executeUpdate(leaseReturnUpdate, { args: [back] }));
      returned += r.returnedUsd;
      spent += l.spentMicros;
    }
    return { spentUsd: spent / 1e6, returnedUsd: returned };
  }
}
