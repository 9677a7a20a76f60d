import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GovloopClient } from '../../sdk';
import { bundleWorkflows } from '../../workers/worker';
import { type Harness, createHarness, intent } from '../support/harness';

/**
 * A guard for decision 0034's SDK retry: a signal that reached a task during its first workflow
 * task once made the worker fail it, and the server dropped the submit's update with it. Twelve
 * submits under a storm of hand-sent wakes (runbooks/queued.md). It did not reproduce that failure
 * here, with or without the retry (test/e2e/cluster-caps-cli.test.ts did, with the wakes of
 * Admitting tasks that were then removed); it checks what a user would: every submit answers.
 */
let bundle: WorkflowBundleWithSourceMap;
let h: Harness;
let gov: GovloopClient;

beforeAll(async () => {
  bundle = await bundleWorkflows();
  h = await createHarness({ bundle });
  await h.startWorkers();
  gov = new GovloopClient(h.client, h.controlQueue);
});

afterAll(async () => {
  await h.close();
});

describe('signals that reach a task while it is being submitted', () => {
  it('a submit answers admission even while the new task is signalled during its first workflow task', async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `sig-submit-${h.tenant}-${i}`);
    let submitting = true;
    // An operator's hand-sent wakes (runbooks/queued.md), arriving from the moment each task exists.
    const signallers = ids.map(async (taskId) => {
      let sent = 0;
      while (submitting) {
        await h.client.workflow
          .getHandle(taskId)
          .signal('requeue', { releasedBy: 'operator' })
          .then(
            () => sent++,
            () => undefined,
          );
        await new Promise((r) => setTimeout(r, 5 + Math.random() * 40));
      }
      return sent;
    });
    let answers;
    try {
      answers = await Promise.all(
        ids.map((taskId, i) =>
          gov.submit(
            intent(h.tenant, {
              name: 'sig-submit',
              attribution: { tenant: h.tenant, team: `team-${i}`, project: 'p', model: 'llama-3-8b', useCase: 'u' },
              resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
              // Still running when the test cancels it (300 s at the test speed-up), however busy the machine.
              caps: { maxUsd: 1000, maxGpuHours: 1000 },
              simulation: { durationSeconds: 600_000, tokensPerSecond: 0 },
            }),
            { requester: 'test', taskId },
          ),
        ),
      );
    } finally {
      submitting = false;
    }
    const sent = await Promise.all(signallers);
    expect(sent.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(answers.map((a) => a.decision)).toEqual(ids.map(() => 'admitted'));
    for (const taskId of ids) await gov.cancel(taskId, 'test', 'done');
  });
});
