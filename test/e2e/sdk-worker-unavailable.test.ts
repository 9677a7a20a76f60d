import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { GovloopClient, GovloopWorkerError } from '../../sdk';
import { repoRoot } from '../support/cli';
import { intent } from '../support/harness';

/**
 * What the SDK does while a task's workflow task keeps failing (the server then refuses every
 * update with "Workflow Task in failed state"). When the workflow's code is what fails, waiting
 * cannot help: the call stops with the failure's own message, and the task is kept. (When workers
 * die holding the task, the SDK keeps asking: the chaos suite's worker-kills test covers that.)
 */
const taskQueue = `govloop-broken-${randomUUID().slice(0, 8)}`;
let nativeConnection: NativeConnection;
let connection: Connection;
let worker: Worker;
let running: Promise<void>;
let gov: GovloopClient;

beforeAll(async () => {
  nativeConnection = await NativeConnection.connect({ address: inject('temporalAddress') });
  worker = await Worker.create({
    connection: nativeConnection,
    taskQueue,
    workflowsPath: join(repoRoot, 'test/support/broken-deploy.ts'),
  });
  running = worker.run();
  connection = await Connection.connect({ address: inject('temporalAddress') });
  gov = new GovloopClient(new Client({ connection }), taskQueue);
});

afterAll(async () => {
  worker?.shutdown();
  await running;
  await connection?.close();
  await nativeConnection?.close();
});

describe('SDK: a task whose workflow code fails in the worker', () => {
  it('submit and step stop with the code failure named, and the task is kept for a fixed deployment', async () => {
    const taskId = `broken-${randomUUID().slice(0, 8)}`;
    const submitted = await gov.submit(intent('t-broken'), { requester: 'test', taskId }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(submitted).toBeInstanceOf(GovloopWorkerError);
    expect((submitted as GovloopWorkerError).taskId).toBe(taskId);
    expect((submitted as Error).message).toMatch(/its workflow task fails in the worker, the workflow code threw: boom: a bad deploy/);

    // A later call on the same task is refused the same way, at once (the server already refuses updates).
    await expect(gov.step(taskId, { tokensIn: 10, tokensOut: 10, contextTokens: 10 }, { as: 'test' })).rejects.toThrow(
      /the workflow code threw: boom: a bad deploy/,
    );

    // Kept: the task is still running, waiting for a worker that can run it.
    const d = await gov.client.workflow.getHandle(taskId).describe();
    expect(d.status.name).toBe('RUNNING');
  });
});
