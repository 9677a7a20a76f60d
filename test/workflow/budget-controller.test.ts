import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Attribution } from '../../governance/intent';
import { setBudget } from '../../ledger/budgets';
import { recordUsage } from '../../ledger/usage';
import { startBudgetController } from '../../runtime/schedules';
import { GovloopClient } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { budgetStatusQuery } from '../../workflows/messages';
import { type Webhook, startWebhook } from '../support/webhook';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';
import { saveHistories } from '../support/histories';

let h: Harness;
let gov: GovloopClient;
let hook: Webhook<{ event: string; step?: string; scope?: string }>;
let notifications: { event: string; step?: string; scope?: string }[] = [];
let spendSeq = 0;

beforeAll(async () => {
  hook = await startWebhook<{ event: string; step?: string; scope?: string }>();
  notifications = hook.received;
  // Slow simulated time (100x): GPU jobs cost $0.11 a real second, so they outlive the test.
  const config = testConfig({ speedup: 100, pollMillis: 100, queueRetryMillis: 200 });
  config.policies.budgetController = { pollMillis: 100, roundsPerRun: 3 };
  config.policies.notifyUrl = hook.url;
  h = await createHarness({ bundle: await bundleWorkflows(), config });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
});

afterAll(async () => {
  // Controllers run until stopped: end this file's (their histories so far replay like any other).
  for await (const w of h.client.workflow.list({ query: `TaskQueue = '${h.controlQueue}' AND ExecutionStatus = 'Running'` }))
    await h.client.workflow
      .getHandle(w.workflowId, w.runId)
      .terminate('test over')
      .catch(() => undefined);
  await saveHistories(h.client, { cli: inject('temporalCli'), address: inject('temporalAddress'), taskQueue: h.controlQueue, prefix: 'budget-controller' });
  await h.close();
  hook.close();
});

const waitFor = async <T>(what: string, fn: () => Promise<T | undefined | false>, ms = 30_000): Promise<T> => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

describe('the budget controller and its enforcement ladder', () => {
  it('fires each step once per crossing: notify, throttle (degrade), queue new work, preempt the lowest priority; critical work last', async () => {
    const tenant = h.tenant;
    const attribution: Attribution = { tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' };
    await setBudget(h.db, { tenant }, 'total', 200, 'test');
    const key = { tenant, team: '*', project: '*', period: 'total' as const };
    const started = await startBudgetController(h.client, key, h.controlQueue);
    expect(started.workflowId).toBe(`budget:${tenant}/*/*:total`);
    const controller = h.client.workflow.getHandle(started.workflowId);
    const spend = (usd: number) =>
      // H100 exclusive at $4/hour: 900 GPU-seconds a dollar. No task: usage reported from outside.
      recordUsage(h.db, h.config.priceBook, [
        {
          key: `${tenant}:spend:${++spendSeq}`,
          taskId: null,
          attribution,
          meter: 'gpu_seconds',
          subject: 'H100:exclusive',
          quantity: usd * 900,
          occurredAt: new Date(),
        },
      ]);
    const events = async () =>
      (
        await h.db.query<{ step: string; action: string; crossing: number }>(
          `SELECT e.step, e.action, e.crossing FROM ladder_events e JOIN budgets b ON b.id = e.budget_id WHERE b.tenant = $1 AND b.team = '*' ORDER BY e.id`,
          [tenant],
        )
      ).rows;
    const controllerAt = (step: string) => waitFor(`controller at ${step}`, async () => (await controller.query(budgetStatusQuery)).step === step);

    // Two long GPU jobs hold $40 each: 40 % of the budget. One is critical.
    const job = (name: string, priority: string) =>
      gov.submit(
        intent(tenant, {
          name,
          priority,
          resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
          caps: { maxUsd: 40, maxGpuHours: 10 },
          simulation: { durationSeconds: 36_000, tokensPerSecond: 0 },
        }),
        { requester: 'test' },
      );
    const low = await job('low-job', 'low');
    const crit = await job('crit-job', 'critical');
    expect([low.decision, crit.decision]).toEqual(['admitted', 'admitted']);
    await waitFor('both jobs running', async () => (await Promise.all([gov.status(low.taskId), gov.status(crit.taskId)])).every((s) => s.state === 'Running'));

    await spend(25); // 52.5 %
    await controllerAt('notify');
    await new Promise((r) => setTimeout(r, 800)); // eight more controller rounds at the same share
    await spend(40); // 72.5 %: still notify
    await new Promise((r) => setTimeout(r, 500));
    expect((await events()).map((e) => e.step)).toEqual(['notify']);
    expect(notifications.filter((n) => n.event === 'budget.ladder').map((n) => n.step)).toEqual(['notify']);

    await spend(20); // 82.5 %: throttle — non-critical agents are degraded, critical ones are not (yet)
    await controllerAt('throttle');
    const agent = (name: string, priority: string) =>
      gov.submit(intent(tenant, { kind: 'agent', name, priority, resources: { gpus: 0 }, simulation: undefined, tools: [], caps: { maxUsd: 1 } }), {
        requester: 'test',
      });
    const normalAgent = await agent('agent-normal', 'normal');
    const critAgent = await agent('agent-crit', 'critical');
    const step = { tokensIn: 1000, tokensOut: 200, contextTokens: 1000 };
    const [a1, a2] = [await gov.step(normalAgent.taskId, step), await gov.step(critAgent.taskId, step)];
    expect([a1.answer, a1.fallbackModel]).toEqual(['degrade', 'small-fast']);
    expect(a2.answer).toBe('allow');
    await gov.finish(normalAgent.taskId, 'test');
    await gov.finish(critAgent.taskId, 'test');
    await Promise.all([gov.result(normalAgent.taskId), gov.result(critAgent.taskId)]);

    await spend(38); // ≥ 101.5 %: queue — new work waits with the ladder's reason
    await controllerAt('queue');
    const waiting = await job('waits', 'normal');
    expect(waiting.decision).toBe('queued');
    expect(waiting.reasons.map((r) => r.code)).toContain('BUDGET_LADDER_QUEUE');
    await gov.cancel(waiting.taskId, 'test', 'done looking');

    await spend(20); // ≥ 111.5 %: preempt — the low-priority job is stopped, the critical one runs on
    const stopped = await waitFor('the low-priority job stopped', async () => {
      const s = await gov.status(low.taskId);
      return s.state === 'Cancelled' ? s : undefined;
    });
    expect(stopped.reasons[0]?.message).toMatch(/budget-controller.*BUDGET_PREEMPT/);
    expect((await gov.status(crit.taskId)).state).toBe('Running');
    // Its reservation handed back, the budget falls below the hard limit again.
    await waitFor('the ladder back under queue', async () => ['throttle', 'notify'].includes((await controller.query(budgetStatusQuery)).step));
    expect((await gov.status(crit.taskId)).state).toBe('Running');

    const fired = await events();
    expect(fired.filter((e) => e.action === e.step).map((e) => [e.step, e.crossing])).toEqual([
      ['notify', 1],
      ['throttle', 2],
      ['queue', 3],
      ['preempt', 4],
    ]);
    expect(fired.filter((e) => e.action.startsWith('preempt:')).map((e) => e.action)).toEqual([`preempt:${low.taskId}`]);
    expect(notifications.filter((n) => n.event === 'budget.ladder').map((n) => n.step)).toEqual(['notify', 'throttle', 'queue', 'preempt']);

    // Crossing the hard limit again fires queue again (a new crossing), and only once.
    const before = (await events()).length;
    await spend(30);
    await controllerAt('queue');
    await new Promise((r) => setTimeout(r, 500));
    const again = (await events()).slice(before);
    expect(again.map((e) => e.step)).toEqual(['queue']);
    expect(again[0]!.crossing).toBe(5);

    // The controller has continued as new (3 rounds a run), carrying its step and crossing count over.
    expect((await controller.describe()).runId).not.toBe(started.runId);
    await gov.cancel(crit.taskId, 'test', 'test over');
    await controller.terminate('test over');
  });
});
