import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { costMicros, priceVersionAt } from '../../governance/pricing';
import { grantAccess } from '../../ledger/approvals';
import { GovloopClient } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { scriptedCalls } from '../../examples/agent-service/fake-model';
import { type RunOptions, runAgents } from '../../examples/agent-service/service';
import { type Harness, createHarness } from '../support/harness';

let h: Harness;
let gov: GovloopClient;

beforeAll(async () => {
  h = await createHarness({ bundle: await bundleWorkflows() });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
  await grantAccess(h.db, { tenant: h.tenant, user: 'approver-bot', role: 'payments-approver', by: 'test' });
});

afterAll(async () => {
  await h.close();
});

describe('the example agent service', () => {
  it('drives 50 concurrent agents through the gate; the ledger equals what the service reported, exactly', async () => {
    const tools = ['search.web', 'db.read', 'payments.refund'];
    const runs: RunOptions[] = Array.from({ length: 50 }, (_, i) => ({
      requester: 'agent-service',
      // Some agents run long enough to reach the degrade threshold or a cap; every ninth step asks for payments.refund (approved by a bot).
      script: { seed: 1000 + i, steps: 4 + (i % 8) * 2, tools },
      intent: {
        kind: 'agent',
        name: `svc-${i}`,
        attribution: { tenant: h.tenant, team: 'support', project: 'helpdesk', model: 'llama-3-70b', useCase: 'ticket-triage' },
        caps: { maxSteps: 14, maxToolCalls: 4, maxContextTokens: 60_000, maxTokens: 20_000, maxUsd: 0.05 },
        tools,
        resources: { gpus: 0 },
      },
      approver: async (id) => void (await gov.approve(id, { by: 'approver-bot', reason: 'test' })),
    }));
    const reports = await runAgents(gov, runs, 50);
    expect(reports).toHaveLength(50);
    const answers = reports.flatMap((r) => r.answers);
    // The script exercises the whole gate: plain, degraded, denied and approved steps.
    expect(answers).toContain('allow');
    expect(answers).toContain('degrade');
    expect(answers).toContain('deny');
    for (const r of reports) expect(['Succeeded', 'CapExceeded']).toContain(r.state);

    // What the service reported, priced from the same price book, step by step.
    const version = priceVersionAt(h.config.priceBook, new Date().toISOString());
    const want = new Map<string, { tokensIn: number; tokensOut: number; cost: number }>();
    for (const [i, r] of reports.entries()) {
      const calls = scriptedCalls(runs[i]!.script);
      const ran = r.answers.filter((a) => a !== 'deny');
      ran.forEach((a, k) => {
        const model = a === 'degrade' ? 'small-fast' : 'llama-3-70b';
        const c = calls[k]!;
        const w = want.get(model) ?? { tokensIn: 0, tokensOut: 0, cost: 0 };
        w.tokensIn += c.tokensIn;
        w.tokensOut += c.tokensOut;
        w.cost +=
          costMicros(version, { meter: 'tokens_in', quantity: c.tokensIn, subject: model }) +
          costMicros(version, { meter: 'tokens_out', quantity: c.tokensOut, subject: model });
        want.set(model, w);
      });
    }
    const { rows } = await h.db.query<{ subject: string; tin: number; tout: number; cost: number }>(
      `SELECT u.subject,
              SUM(u.quantity) FILTER (WHERE u.meter = 'tokens_in') AS tin,
              SUM(u.quantity) FILTER (WHERE u.meter = 'tokens_out') AS tout,
              SUM(u.cost_micros)::bigint AS cost
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
       WHERE a.tenant = $1 GROUP BY u.subject ORDER BY u.subject`,
      [h.tenant],
    );
    expect(rows).toEqual(
      [...want].sort(([a], [b]) => a.localeCompare(b)).map(([subject, w]) => ({ subject, tin: w.tokensIn, tout: w.tokensOut, cost: w.cost })),
    );
    // And the per-service report agrees with the ledger per model.
    const reported = new Map<string, number>();
    for (const r of reports) for (const [m, t] of Object.entries(r.reported)) reported.set(m, (reported.get(m) ?? 0) + t.tokensIn);
    for (const row of rows) expect(row.tin).toBe(reported.get(row.subject));
  });
});
