import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { ProgramPlan } from '../../governance/program';
import { grantAccess } from '../../ledger/approvals';
import { setBudget } from '../../ledger/budgets';
import { Db } from '../../ledger/db';
import { recordUsage } from '../../ledger/usage';
import { loadConfig } from '../../config/load';
import { type ProgramStatus, migrationProgram, programNudgeSignal, programSignoffUpdate, programStatusQuery } from '../../workflows/migration-program';
import { type WorkerProcess, startWorkerProcess, waitFor } from '../support/worker-process';

/**
 * Nothing is lost (issue 12): the worker running the migration program is killed with SIGKILL
 * mid-phase, after the platform owner signed and before the workload owner did. Days go on while
 * no worker runs; a new worker process picks the program up with its sign-off, closes the phase
 * once the second owner signs, and produces each deliverable once.
 */
const suffix = randomUUID().slice(0, 8);
const tenant = `t-prog-restart-${suffix}`;
const taskQueue = `govloop-control-prog-restart-${suffix}`;
const cluster = `sim-prog-restart-${suffix}`;
let db: Db;
let connection: Connection;
let client: Client;

const worker = (): WorkerProcess =>
  startWorkerProcess({ taskQueue, cluster, temporalAddress: inject('temporalAddress'), databaseUrl: inject('databaseUrl'), speedup: 600 });

beforeAll(async () => {
  db = new Db(inject('databaseUrl'), 4);
  connection = await Connection.connect({ address: inject('temporalAddress') });
  client = new Client({ connection });
});

afterAll(async () => {
  await connection.close();
  await db.close();
});

const plan: ProgramPlan = {
  name: 'restart landing zone',
  version: 1,
  scope: { tenants: [tenant] },
  signoff: { platformRole: 'platform-admin', workloadRole: 'tenant-admin' },
  phases: ['ledger', 'loop'].map((id, i) => ({
    id,
    name: id,
    startDay: 1 + i * 30,
    endDay: 30 + i * 30,
    work: [id],
    deliverables: [
      i === 0
        ? { id: 'admission-v0', kind: 'admission-policy' as const, name: 'Admission Policy v0' }
        : { id: 'runbook-v1', kind: 'runbook' as const, name: 'Runbook v1' },
    ],
    gates: [
      i === 0
        ? { id: 'budgets', check: 'budgetCoverage' as const, threshold: 1, windowDays: 7, params: {} }
        : { id: 'runbook', check: 'runbookV1' as const, threshold: 1, windowDays: 7, params: {} },
    ],
  })),
} as ProgramPlan;

describe('migration program, worker killed mid-phase', () => {
  it('keeps the sign-off given before the kill, counts the days, closes the phase once and finishes on a new worker', async () => {
    await recordUsage(db, loadConfig().priceBook, [
      {
        key: `prog-restart-${suffix}`,
        taskId: null,
        attribution: { tenant, team: 'search', project: 'p', model: 'llama-3-8b', useCase: 'u' },
        meter: 'tokens_out',
        subject: 'llama-3-8b',
        quantity: 100_000,
        occurredAt: new Date(),
      },
    ]);
    await setBudget(db, { tenant, team: 'search' }, 'month', 100, 'test');
    await grantAccess(db, { tenant, user: 'wl', role: 'tenant-admin', by: 'test' });
    let w = worker();
    try {
      await w.ready;
      const handle = await client.workflow.start(migrationProgram, {
        workflowId: `program-restart-${suffix}`,
        taskQueue,
        args: [{ plan, daySeconds: 0.5, startedBy: 'plat' }],
      });
      await waitFor(
        'phase 1 gates passing',
        async () => {
          const s = await handle.query(programStatusQuery);
          return s.phases[0]!.gates.length > 0 && s.phases[0]!.gates.every((g) => g.pass) ? s : undefined;
        },
        60_000,
      );
      expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'ok', as: 'plat' }] })).toMatchObject({ accepted: true });
      const before = await handle.query(programStatusQuery);

      await w.kill();
      // No worker: the nudge waits in the history, the days count on (the clock is the server's).
      await handle.signal(programNudgeSignal);
      await new Promise((r) => setTimeout(r, 1500));
      w = worker();
      await w.ready;

      const after = await waitFor('the new worker answering', async () => handle.query(programStatusQuery).catch(() => undefined), 60_000);
      expect(after.current).toBe('ledger');
      expect(before.phases[0]!.signoffs.platform?.by).toMatch(/^plat\b/);
      expect(after.phases[0]!.signoffs).toEqual(before.phases[0]!.signoffs);
      expect(after.day).toBeGreaterThan(before.day);

      expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'ledger', reason: 'ok', as: 'wl' }] })).toMatchObject({ accepted: true });
      const loop: ProgramStatus = await waitFor(
        'phase 2 gates passing',
        async () => {
          const s = await handle.query(programStatusQuery);
          return s.current === 'loop' && s.phases[1]!.gates.length > 0 && s.phases[1]!.gates.every((g) => g.pass) ? s : undefined;
        },
        60_000,
      );
      expect(loop.phases[0]!.state).toBe('closed');
      for (const who of ['plat', 'wl'])
        expect(await handle.executeUpdate(programSignoffUpdate, { args: [{ phase: 'loop', reason: 'ok', as: who }] })).toMatchObject({ accepted: true });
      const done = await handle.result();
      expect(done.phases.map((p) => p.state)).toEqual(['closed', 'closed']);

      // Each deliverable once, each accepted sign-off once, each phase closed once.
      const artifacts = await db.query<{ id: string }>('SELECT deliverable_id AS id FROM program_artifacts WHERE program_id = $1 ORDER BY id', [
        handle.workflowId,
      ]);
      expect(artifacts.rows.map((r) => r.id)).toEqual(['admission-v0', 'runbook-v1']);
      const rows = await db.query<{ action: string; decision: string; n: number }>(
        `SELECT action, decision, COUNT(*)::int AS n FROM audit_log WHERE detail->>'programId' = $1 AND action IN ('program.signoff', 'program.phase')
          GROUP BY 1, 2 ORDER BY 1, 2`,
        [handle.workflowId],
      );
      expect(rows.rows).toEqual([
        { action: 'program.phase', decision: 'closed', n: 2 },
        { action: 'program.phase', decision: 'started', n: 2 },
        { action: 'program.signoff', decision: 'accepted', n: 4 },
      ]);
    } finally {
      await w.stop().catch(() => undefined);
    }
  }, 240_000);
});
