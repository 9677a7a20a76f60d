import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Db } from '../../ledger/db';
import { setBudget, showBudgets } from '../../ledger/budgets';
import { taskUsage } from '../../ledger/usage';
import { GovloopClient } from '../../sdk';
import { intent } from '../support/harness';
import { type LedgerTask, type WorkerProcess, describeTasks, ledgerTasks, startWorkerProcess, waitFor } from '../support/worker-process';

/**
 * Nothing is lost: a worker process killed with SIGKILL in the middle of running tasks, then
 * started again, finishes every task and charges nothing twice.
 */
const suffix = randomUUID().slice(0, 8);
const tenant = `t-restart-${suffix}`;
const taskQueue = `govloop-control-restart-${suffix}`;
const cluster = `sim-restart-${suffix}`;
/**
 * Each task's job runs DURATION_S simulated seconds. The first worker runs the simulation at real
 * time, so no job can end before the kill (it would take 100 minutes) however loaded the machine
 * is and however long the worker takes to start: the kill waits for a state that lasts, not for
 * a window it might miss. The second worker runs it SPEEDUP times faster, so the jobs finish in
 * seconds once it is back. Progress is folded in at each look, so nothing is counted twice or lost
 * across the change of pace.
 */
const DURATION_S = 6000;
const SPEEDUP = 600;
let db: Db;
let connection: Connection;
let gov: GovloopClient;

const worker = (speedup: number): WorkerProcess =>
  startWorkerProcess({ taskQueue, cluster, temporalAddress: inject('temporalAddress'), databaseUrl: inject('databaseUrl'), speedup });

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
    let w = worker(1);
    const ids: string[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const a = await gov.submit(
          intent(tenant, {
            name: `restart-${i}`,
            attribution: { tenant, team: `team-${i}`, project: 'p', model: 'llama-3-8b', useCase: 'u' },
            resources: { gpus: 2, gpuType: i % 2 ? 'A100' : 'H100', sharing: 'exclusive' },
            simulation: { durationSeconds: DURATION_S, tokensPerSecond: 7 },
          }),
          { requester: 'test' },
        );
        expect(a.decision).toBe('admitted');
        ids.push(a.taskId);
      }
      // Kill the worker once the ledger shows every task's job running and metered at least once.
      let seen: LedgerTask[] = [];
      await waitFor(
        'every job running and metered',
        async () => {
          seen = await ledgerTasks(db, cluster, ids);
          return seen.length === ids.length && seen.every((t) => t.state === 'Running' && t.jobs === 1 && t.jobPhase === 'Running' && t.gpuSeconds > 0)
            ? true
            : undefined;
        },
        240_000,
        () => describeTasks(seen),
      );
      await w.kill();
      // Nothing moves a task's ledger row without a worker: this is what the kill interrupted.
      const atKill = await ledgerTasks(db, cluster, ids);
      expect(
        atKill.map((t) => t.state),
        describeTasks(atKill),
      ).toEqual(ids.map(() => 'Running'));
      w = worker(SPEEDUP);
      const results = await Promise.all(ids.map((id) => gov.result(id)));
      for (const [i, r] of results.entries()) {
        expect(r.state, `${ids[i]}: ${JSON.stringify(r.reasons)}`).toBe('Succeeded');
        const usage = await taskUsage(db, ids[i]!);
        expect(usage.gpuSeconds).toBe(2 * DURATION_S);
        expect(usage.tokensProcessed).toBe(7 * DURATION_S);
        const price = i % 2 ? 2 : 4;
        expect(usage.costMicros).toBe(Math.round(2 * (DURATION_S / 3600) * price * 1e6));
        expect(r.costUsd).toBeCloseTo(usage.costMicros / 1e6, 6);
      }
      const after = await ledgerTasks(db, cluster, ids);
      expect(after.map((t) => t.jobs)).toEqual(ids.map(() => 1));
      const [budget] = await showBudgets(db, { tenant }, new Date());
      const total = (await Promise.all(ids.map((id) => taskUsage(db, id)))).reduce((s, u) => s + u.costMicros, 0);
      expect(budget!.spentUsd).toBeCloseTo(total / 1e6, 6);
      expect(budget!.reservedUsd).toBe(0);
    } finally {
      await w.stop();
    }
  }, 420_000);
});
