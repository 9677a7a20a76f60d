/**
 * Issue 12, decision 0026: the budget ladder consults SLOs. At throttle, a use case whose SLO
 * forbids the fallback model stays on its primary model (recorded as an SLO hold in ladder_events
 * and the audit log) while others are degraded; from the queue step on it is degraded too. Steps'
 * reported latency and the gate's own time are stored and measured.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Attribution } from '../../governance/intent';
import { setBudget } from '../../ledger/budgets';
import { measureSlos } from '../../ledger/slo';
import { recordUsage } from '../../ledger/usage';
import { GovloopClient } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';

let h: Harness;
let gov: GovloopClient;

beforeAll(async () => {
  h = await createHarness({ bundle: await bundleWorkflows(), config: testConfig() });
  // Activities read this config object: the SLOs name the harness's own tenant.
  h.config.policies.slos = [
    {
      scope: { tenant: h.tenant, team: 'search', useCase: 'triage' },
      objectives: { stepLatencyP95Ms: 2000, gateLatencyP95Ms: 60_000 },
      windowDays: 7,
      forbidsFallback: true,
    },
  ];
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
});

afterAll(async () => {
  await h.close();
});

describe('the ladder and an SLO that forbids the fallback model', () => {
  it('at throttle the SLO use case keeps its model (an SLO hold is recorded once) while others degrade; at queue it degrades too', async () => {
    const tenant = h.tenant;
    await setBudget(h.db, { tenant }, 'total', 100, 'test');
    const attribution: Attribution = { tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' };
    // $85 spent from outside (85 %), and the step its controller would record there.
    await recordUsage(h.db, h.config.priceBook, [
      { key: `${tenant}:spend`, taskId: null, attribution, meter: 'gpu_seconds', subject: 'H100:exclusive', quantity: 85 * 900, occurredAt: new Date() },
    ]);
    const setStep = (step: string) =>
      h.db.query('UPDATE budget_windows SET ladder_step = $2 FROM budgets b WHERE b.id = budget_id AND b.tenant = $1', [tenant, step]);
    await setStep('throttle');

    const agent = (name: string, useCase: string) =>
      gov.submit(
        intent(tenant, {
          kind: 'agent',
          name,
          attribution: { ...attribution, useCase },
          resources: { gpus: 0 },
          simulation: undefined,
          tools: [],
          caps: { maxUsd: 1 },
        }),
        { requester: 'test' },
      );
    const other = await agent('other', 'relevance');
    const triage = await agent('triage', 'triage');
    expect([other.decision, triage.decision]).toEqual(['admitted', 'admitted']);
    const step = { tokensIn: 1000, tokensOut: 200, contextTokens: 1000 };
    const o1 = await gov.step(other.taskId, { ...step, latencyMs: 900 });
    const t1 = await gov.step(triage.taskId, { ...step, latencyMs: 1500 });
    const t2 = await gov.step(triage.taskId, { ...step, latencyMs: 2500 });
    expect([o1.answer, o1.fallbackModel]).toEqual(['degrade', 'small-fast']);
    expect([t1.answer, t2.answer]).toEqual(['allow', 'allow']);

    const holds = async () =>
      (
        await h.db.query<{ step: string; action: string; detail: { slo: string; taskId: string; reason: string } }>(
          `SELECT e.step, e.action, e.detail FROM ladder_events e JOIN budgets b ON b.id = e.budget_id WHERE b.tenant = $1 AND e.action LIKE 'slo-hold:%' ORDER BY e.id`,
          [tenant],
        )
      ).rows;
    const slo = `${tenant}/search/triage`;
    expect(await holds()).toEqual([
      {
        step: 'throttle',
        action: `slo-hold:${slo}`,
        detail: {
          slo,
          taskId: triage.taskId,
          reason: `SLO ${slo} forbids the fallback model: not degraded at throttle; degraded no earlier than the queue step`,
        },
      },
    ]);
    const audit = await h.db.query<{ decision: string; detail: { step: string; slo: string } }>(
      "SELECT decision, detail FROM audit_log WHERE task_id = $1 AND action = 'slo.hold'",
      [triage.taskId],
    );
    expect(audit.rows.map((r) => [r.decision, r.detail.step, r.detail.slo])).toEqual([['not-degraded', 'throttle', slo]]);

    // The hard limit: the scope's new work waits, and now the SLO use case is degraded as well.
    await setStep('queue');
    const t3 = await gov.step(triage.taskId, { ...step, latencyMs: 1200 });
    expect([t3.answer, t3.fallbackModel]).toEqual(['degrade', 'small-fast']);
    expect(await holds()).toHaveLength(1);
    // Each budget-degraded step's audit row names the ladder step it was degraded at (the program's SLO gate reads it).
    const degraded = await h.db.query<{ task_id: string; step: string }>(
      "SELECT task_id, detail->>'ladderStep' AS step FROM audit_log WHERE action = 'step' AND decision = 'degrade' AND task_id = ANY($1) ORDER BY id",
      [[other.taskId, triage.taskId]],
    );
    expect(degraded.rows).toEqual([
      { task_id: other.taskId, step: 'throttle' },
      { task_id: triage.taskId, step: 'queue' },
    ]);

    // Every step decided is stored with the latency its agent reported and the gate's own time.
    const steps = await h.db.query<{ task_id: string; seq: number; decision: string; model: string; latency_ms: number; gate_ms: number }>(
      'SELECT task_id, seq, decision, model, latency_ms, gate_ms FROM agent_steps WHERE task_id = ANY($1) ORDER BY latency_ms',
      [[other.taskId, triage.taskId]],
    );
    expect(steps.rows.map((r) => [r.task_id, r.decision, r.model, r.latency_ms])).toEqual([
      [other.taskId, 'degrade', 'small-fast', 900],
      [triage.taskId, 'degrade', 'small-fast', 1200],
      [triage.taskId, 'allow', 'llama-3-8b', 1500],
      [triage.taskId, 'allow', 'llama-3-8b', 2500],
    ]);
    expect(steps.rows.every((r) => r.gate_ms > 0 && r.gate_ms < 60_000)).toBe(true);

    // Measured: only the SLO's use case; p95 of 1200, 1500, 2500 ms is 2500, one of three over 2000.
    const [report] = await measureSlos(h.db, h.config, new Date(), { tenants: [tenant] });
    expect(report!.objectives.find((o) => o.objective === 'stepLatencyP95Ms')).toEqual({
      objective: 'stepLatencyP95Ms',
      target: 2000,
      measured: 2500,
      met: false,
      errorBudgetRemaining: 0,
      samples: 3,
    });
    expect(report!.objectives.find((o) => o.objective === 'gateLatencyP95Ms')).toMatchObject({ met: true, samples: 3, errorBudgetRemaining: 1 });

    await gov.finish(other.taskId, 'test');
    await gov.finish(triage.taskId, 'test');
    await Promise.all([gov.result(other.taskId), gov.result(triage.taskId)]);
  });
});
