import { type ApplicationFailure, WorkflowUpdateFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Attribution } from '../../governance/intent';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { recordUsage } from '../../ledger/usage';
import { GovloopClient, GovloopInputError, GovloopLeaseError } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { LeaseErrors, budgetControllerId, budgetStatusQuery, leaseSpendUpdate, leaseUpdate } from '../../workflows/messages';
import { type Harness, createHarness, testConfig } from '../support/harness';

let h: Harness;
let gov: GovloopClient;

beforeAll(async () => {
  const config = testConfig();
  config.policies.budgetController = { pollMillis: 100, roundsPerRun: 50 };
  h = await createHarness({ bundle: await bundleWorkflows(), config });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
});

afterAll(async () => {
  await h.close();
});

const waitFor = async (what: string, fn: () => Promise<boolean>, ms = 30_000) => {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

const budgetOf = async (tenant: string, team: string) => (await showBudgets(h.db, { tenant, team }, new Date()))[0]!;
const leaseSpend = async (tenant: string) =>
  Number(
    (
      await h.db.query<{ cost: number }>(
        "SELECT COALESCE(SUM(u.cost_micros), 0)::bigint AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1 AND u.meter = 'usd'",
        [tenant],
      )
    ).rows[0]!.cost,
  );

describe('budget leases', () => {
  it('spends in process, renews before running out, reports exactly what was spent and returns the rest', async () => {
    const tenant = `${h.tenant}-a`;
    await setBudget(h.db, { tenant, team: 'search' }, 'month', 100, 'test');
    const lease = await gov.lease({ scope: { tenant, team: 'search' }, usd: 10, holder: 'svc-chat' });
    expect(lease.remainingUsd).toBe(10); // asked 10, a quarter of the $100 headroom is 25
    expect(await budgetOf(tenant, 'search')).toMatchObject({ reservedUsd: 10, spentUsd: 0 });

    // 30 calls of 40 cents: the first lease runs low after 19, a renewal comes in the background.
    let spent = 0;
    for (let i = 0; i < 30; i++) {
      if (!lease.trySpend(0.4)) {
        await lease.settled();
        expect(lease.trySpend(0.4)).toBe(true);
      }
      spent += 0.4;
    }
    await lease.settled();
    expect(lease.grants).toBeGreaterThanOrEqual(2);
    expect(lease.trySpend(1000)).toBe(false); // never more than the leases hold
    await lease.flush();
    const mid = await budgetOf(tenant, 'search');
    expect(mid.spentUsd).toBeCloseTo(spent, 9);
    expect(mid.reservedUsd).toBeCloseTo(lease.remainingUsd, 9);
    const closed = await lease.close();
    expect(closed.spentUsd).toBeCloseTo(12, 9);
    const after = await budgetOf(tenant, 'search');
    expect(after).toMatchObject({ reservedUsd: 0 });
    expect(after.spentUsd).toBeCloseTo(12, 9);
    expect(await leaseSpend(tenant)).toBe(12_000_000);
    // Grant and close name the lease's scope the same way (the lease rows store '' for a level not narrowed).
    const scopes = await h.db.query<{ action: string; scope: string }>(
      "SELECT DISTINCT action, detail->>'scope' AS scope FROM audit_log WHERE action IN ('lease.grant', 'lease.close') AND detail->>'scope' LIKE $1 ORDER BY action",
      [`${tenant}/%`],
    );
    expect(scopes.rows).toEqual([
      { action: 'lease.close', scope: `${tenant}/search/*` },
      { action: 'lease.grant', scope: `${tenant}/search/*` },
    ]);
  });

  it('shrinks under throttle and is refused at the queue step; bad options change nothing', async () => {
    const tenant = `${h.tenant}-b`;
    const a: Attribution = { tenant, team: 'search', project: 'p', model: 'llama-3-8b', useCase: 'u' };
    await setBudget(h.db, { tenant, team: 'search' }, 'month', 100, 'test');
    await expect(gov.lease({ scope: { tenant, team: 'search' }, usd: 10, tokens: 5, holder: 'svc', ttlSeconds: 0 })).rejects.toThrow(GovloopInputError);
    await expect(gov.lease({ scope: { tenant, project: 'p' }, usd: 1, holder: 'svc' })).rejects.toThrow(/scope\.project: a project scope needs a team/);

    // $85 spent: the controller moves to throttle; a lease of 10 is halved.
    await recordUsage(h.db, h.config.priceBook, [
      { key: `${tenant}:burn`, taskId: null, attribution: a, meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: 85 * 900, occurredAt: new Date() },
    ]);
    const controller = h.client.workflow.getHandle(budgetControllerId({ tenant, team: 'search', project: '*', period: 'month' }));
    const first = await gov.lease({ scope: { tenant, team: 'search' }, usd: 2, holder: 'svc' }); // starts the controller
    await waitFor('throttle', async () => (await controller.query(budgetStatusQuery)).step === 'throttle');
    const throttled = await gov.lease({ scope: { tenant, team: 'search' }, usd: 2, holder: 'svc' });
    expect(throttled.remainingUsd).toBeLessThanOrEqual(1);
    await first.close();
    await throttled.close();

    // Past the hard limit: no new lease, with the ladder's reason.
    await recordUsage(h.db, h.config.priceBook, [
      { key: `${tenant}:burn2`, taskId: null, attribution: a, meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: 20 * 900, occurredAt: new Date() },
    ]);
    await waitFor('queue', async () => (await controller.query(budgetStatusQuery)).step === 'queue');
    const refused = await gov.lease({ scope: { tenant, team: 'search' }, usd: 1, holder: 'svc' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(GovloopLeaseError);
    expect((refused as GovloopLeaseError).reason.code).toBe('BUDGET_LADDER_QUEUE');
  });

  it('10 holders at once never hold more than the budget has; an unreturned lease expires and its rest goes back', async () => {
    const tenant = `${h.tenant}-c`;
    await setBudget(h.db, { tenant, team: 'search' }, 'month', 20, 'test');
    const leases = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        gov.lease({ scope: { tenant, team: 'search' }, usd: 10, holder: `svc-${i}`, ttlSeconds: 2 }).catch((e: unknown) => e),
      ),
    );
    const held = leases.filter((l): l is Awaited<ReturnType<typeof gov.lease>> => !(l instanceof Error));
    const total = held.reduce((s, l) => s + l.remainingUsd, 0);
    expect(total).toBeGreaterThan(0);
    expect(total).toBeLessThanOrEqual(20);
    const b = await budgetOf(tenant, 'search');
    expect(b.reservedUsd).toBeCloseTo(total, 9);
    // Spend everything each holds, report it, and never close: the leases expire after 2 s.
    let spentMicros = 0;
    for (const l of held) {
      const half = Math.floor(l.remainingMicros / 2);
      expect(l.trySpend(half / 1e6)).toBe(true);
      spentMicros += half;
      await l.flush();
    }
    await waitFor('the leases expired and handed back their rest', async () => (await budgetOf(tenant, 'search')).reservedUsd === 0);
    const end = await budgetOf(tenant, 'search');
    expect(Math.round(end.spentUsd * 1e6)).toBe(spentMicros);
    expect(end.spentUsd).toBeLessThanOrEqual(20);
    expect(await leaseSpend(tenant)).toBe(Math.round(end.spentUsd * 1e6));
  });

  it('a bad lease message is refused the same way by the SDK and by the budget controller: its type, the fields named', async () => {
    const tenant = `${h.tenant}-d`;
    await setBudget(h.db, { tenant, team: 'search' }, 'month', 100, 'test');
    const bad = { holder: 'x'.repeat(129), usd: -1, ttlSeconds: 0 };
    const fromSdk = await gov.lease({ scope: { tenant, team: 'search' }, ...bad }).catch((e: unknown) => e);
    expect(fromSdk).toBeInstanceOf(GovloopInputError);
    const sdkPaths = (fromSdk as GovloopInputError).errors.map((e) => e.path).sort();
    expect(sdkPaths).toEqual(['holder', 'ttlSeconds', 'usd']);

    // Past the SDK (another client), the controller's validator refuses it with the same schema, the fields as data.
    const lease = await gov.lease({ scope: { tenant, team: 'search' }, usd: 1, holder: 'svc' }); // starts the controller
    const controller = h.client.workflow.getHandle(budgetControllerId({ tenant, team: 'search', project: '*', period: 'month' }));
    const raw = await controller.executeUpdate(leaseUpdate, { args: [{ requestId: 'raw-1', ...bad }] }).catch((e: unknown) => e);
    expect(raw).toBeInstanceOf(WorkflowUpdateFailedError);
    const cause = (raw as WorkflowUpdateFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe(LeaseErrors.InvalidLeaseRequest);
    expect((cause.details?.[0] as { path: string }[]).map((e) => e.path).sort()).toEqual(sdkPaths);

    // A spend on another budget's lease: the lease is unknown here, whatever the rest says.
    const foreign = await controller.executeUpdate(leaseSpendUpdate, { args: [{ leaseId: 'other/*/*:r-1', seq: 1, usd: 1 }] }).catch((e: unknown) => e);
    expect(((foreign as WorkflowUpdateFailedError).cause as ApplicationFailure).type).toBe(LeaseErrors.UnknownLease);
    const closed = await lease.close();
    expect(closed.spentUsd).toBe(0);
    expect(await budgetOf(tenant, 'search')).toMatchObject({ reservedUsd: 0, spentUsd: 0 });
  });
});
