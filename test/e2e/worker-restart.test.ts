import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Db } from '../../ledger/db';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { taskUsage } from '../../ledger/usage';
import { GovloopClient } from '../../sdk';
import { govloopBin, repoRoot } from '../support/cli';
import { intent } from '../support/harness';

/**
 * Nothing is lost: a worker process killed with SIGKILL in the middle of running tasks, then
 * started again, finishes every task and charges nothing twice.
 */
const suffix = randomUUID().slice(0, 8);
const tenant = `t-restart-${suffix}`;
const taskQueue = `govloop-control-restart-${suffix}`;
/**
 * Each task runs DURATION_S simulated seconds, SPEEDUP times faster than real time: 40 s of wall
 * time, long enough that on a loaded CI machine (the spawned worker bundles its workflows first)
 * the four tasks are still running together when the worker is killed.
 */
const SPEEDUP = 150;
const DURATION_S = 6000;
let db: Db;
let connection: Connection;
let gov: GovloopClient;

function startWorker(): ChildProcess {
  const child = spawn(process.execPath, [govloopBin, 'worker', '--task-queue', taskQueue, '--cluster', `sim-restart-${suffix}`, '--no-controllers'], {
    cwd: repoRoot,
    env: { ...process.env, TEMPORAL_ADDRESS: inject('temporalAddress'), DATABASE_URL: inject('databaseUrl'), GOVLOOP_SIM_SPEEDUP: String(SPEEDUP), GOVLOOP_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return child;
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 180_000, last?: () => string): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last()}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  db = new Db(inject('databaseUrl'), 4);
  connection = await Connection.connect({ address: inject('temporalAddress') });
  gov = new GovloopClient(new Client({ connection }), taskQueue);
});

afterAll(async () => {
  await connection.close();
  await db.close();
});

describe('worker killed mid-run', () => {
  it('finishes every task after a restart, and charges each GPU-second exactly once', async () => {
    await setBudget(db, { tenant }, 'month', 1000, 'test');
    let worker = startWorker();
    const ids: string[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const a = await gov.submit(
          intent(tenant, { name: `restart-${i}`, attribution: { tenant, team: `team-${i}`, project: 'p', model: 'llama-3-8b', useCase: 'u' }, resources: { gpus: 2, gpuType: i % 2 ? 'A100' : 'H100', sharing: 'exclusive' }, simulation: { durationSeconds: DURATION_S, tokensPerSecond: 7 } }),
          { requester: 'test' },
        );
        expect(a.decision).toBe('admitted');
        ids.push(a.taskId);
      }
      // Kill the worker once every task is running and has been metered at least once.
      let seen = '';
      await waitFor(
        'all running and metered',
        async () => {
          const s = await Promise.all(ids.map((id) => gov.status(id)));
          seen = s.map((x) => `${x.taskId} ${x.state} ${x.usage.gpuSeconds} GPU-s`).join('; ');
          return s.every((x) => x.state === 'Running' && x.usage.gpuSeconds > 0) ? true : undefined;
        },
        180_000,
        () => seen,
      );
      worker.kill('SIGKILL');
      await new Promise((r) => worker.once('exit', r));
      // The jobs keep running on the cluster while no worker is there.
      await new Promise((r) => setTimeout(r, 2000));
      worker = startWorker();
      const results = await Promise.all(ids.map((id) => gov.result(id)));
      for (const [i, r] of results.entries()) {
        expect(r.state).toBe('Succeeded');
        const usage = await taskUsage(db, ids[i]!);
        expect(usage.gpuSeconds).toBe(2 * DURATION_S);
        expect(usage.tokensProcessed).toBe(7 * DURATION_S);
        const price = i % 2 ? 2 : 4;
        expect(usage.costMicros).toBe(Math.round(2 * (DURATION_S / 3600) * price * 1e6));
        expect(r.costUsd).toBeCloseTo(usage.costMicros / 1e6, 6);
      }
      const [budget] = await showBudgets(db, { tenant }, new Date());
      const total = (await Promise.all(ids.map((id) => taskUsage(db, id)))).reduce((s, u) => s + u.costMicros, 0);
      expect(budget!.spentUsd).toBeCloseTo(total / 1e6, 6);
      expect(budget!.reservedUsd).toBe(0);
    } finally {
      worker.kill('SIGTERM');
    }
  }, 300_000);
});
