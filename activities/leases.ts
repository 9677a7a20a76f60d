import { costMicros, priceVersionAt, usdToMicros } from '../governance/pricing';
import {
  type LeaseGrant,
  type LeaseReport,
  type LeaseScope,
  closeLease,
  expireLeases,
  grantLease,
  reportLease,
  scopeBurnMicrosPerHour,
} from '../ledger/leases';
import type { ActivityContext } from './context';

/** Budget leases for in-process spenders, served through the budget controller's updates: grant, report spend, close, expire. */
export function createLeaseActivities({ db, config, clock, nudgeBudgets }: ActivityContext) {
  return {
    /** A budget lease for an in-process spender (sized by burn rate and the ladder; held on every covering window). */
    async grantLease(input: {
      leaseId: string;
      scope: LeaseScope;
      holder: string;
      usd?: number;
      tokens?: number;
      model?: string;
      ttlSeconds: number;
    }): Promise<LeaseGrant> {
      const now = clock();
      let requestedMicros = usdToMicros(input.usd ?? 0);
      if (input.tokens !== undefined) {
        // Tokens are leased at the model's output price (the dearer side), in force now.
        const v = priceVersionAt(config.priceBook, now.toISOString());
        requestedMicros = costMicros(v, { meter: 'tokens_out', quantity: input.tokens, subject: input.model ?? 'default' });
      }
      const burn = await scopeBurnMicrosPerHour(db, input.scope, now);
      const g = await grantLease(db, {
        leaseId: input.leaseId,
        scope: input.scope,
        holder: input.holder,
        requestedMicros,
        ttlSeconds: input.ttlSeconds,
        burnMicrosPerHour: burn,
        now,
        ladder: config.policies.ladder,
      });
      if (g.granted && !g.idempotent) await nudgeBudgets({ tenant: input.scope.tenant, team: input.scope.team ?? '', project: input.scope.project ?? '' });
      return g;
    },

    async reportLeaseSpend(input: { leaseId: string; seq: number; micros: number; model?: string; useCase?: string }): Promise<LeaseReport> {
      return reportLease(db, { ...input, at: clock(), priceBook: config.priceBook });
    },

    async closeLease(input: { leaseId: string; state: 'returned' | 'expired'; by: string }): Promise<{ closed: boolean; releasedMicros: number }> {
      return closeLease(db, input.leaseId, input.state, input.by);
    },

    async expireLeases(input: { leaseIds: string[] }): Promise<string[]> {
      return expireLeases(db, input.leaseIds, clock());
    },
  };
}
