import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { admit } from '../../governance/admission';
import { closePreemption, openPreemption, preemptionLosses, queuedTasks, quotaState } from '../../ledger/quota';
import { updateTask } from '../../ledger/tasks';
import { anIntent } from '../support/builders';
import { AT, type Ledger, backends, newTask, newTenant } from './backends';

const config = loadConfig();

/** A task of `tenant/team` holding a plan for `gpus` H100s, in `state`. */
async function gpuTask(db: Ledger['db'], tenant: string, team: string, gpus: number, state: string): Promise<string> {
  const id = await newTask(db, tenant, { team, state });
  const got = admit(anIntent().tenant(tenant).team(team).gpus(gpus, 'H100').build(), { config, now: AT.toISOString(), budgets: [], teamGpusInUse: 0 });
  if (got.decision === 'rejected') throw new Error('fixture rejected');
  await updateTask(db, id, { plan: got.plan });
  return id;
}

describe.each(backends)('preemption records and the queue on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('opens one preemption per victim at a time, closes it once (a retried close answers the same), and shows the loss against the preemptor team', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const victim = await gpuTask(db, tenant, 'b', 4, 'Running');
    const preemptor = await gpuTask(db, tenant, 'a', 4, 'Queued');
    const order = { victimTaskId: victim, preemptorTaskId: preemptor, by: 'govloop', reason: 'reclaim', preemptorTenant: tenant, preemptorTeam: 'a', gpuType: 'H100', gpus: 4 };
    expect(await openPreemption(db, order)).toBe(true);
    expect((await db.query('SELECT 1 FROM preemptions WHERE victim_task_id = $1', [victim])).rowCount).toBe(1);

    // The victim counts as being preempted: its GPUs are about to come free.
    const flat = { quota: 8, policy: 'p' };
    const state = await quotaState(db, config.policies, { taskId: preemptor, tenant, team: 'b', gpuType: 'H100' }, flat);
    expect(state.running).toEqual([expect.objectContaining({ taskId: victim, gpus: 4, preempting: true })]);

    const close = () => db.tx((c) => closePreemption(c, { ...order, round: 1, lostGpuSecondsTotal: 1600 }));
    expect(await close()).toEqual({ round: 1, lostGpuSeconds: 1600 });
    expect(await close()).toEqual({ round: 1, lostGpuSeconds: 1600 });
    const task = await db.query<{ state: string }>('SELECT state FROM tasks WHERE task_id = $1', [victim]);
    expect(task.rows[0]!.state).toBe('Preempted');
    const audit = await db.query('SELECT 1 FROM audit_log WHERE task_id = $1 AND action = $2', [victim, 'preempt']);
    expect(audit.rowCount).toBe(1);

    // A second round (an operator's, with no open row) records only what was lost since the first.
    const op = { ...order, preemptorTaskId: null, by: 'alice', reason: 'maintenance', preemptorTenant: null, preemptorTeam: null };
    expect(await db.tx((c) => closePreemption(c, { ...op, round: 2, lostGpuSecondsTotal: 2000 }))).toEqual({ round: 2, lostGpuSeconds: 400 });
    expect(await preemptionLosses(db, tenant)).toEqual([{ preemptorTeam: `${tenant}/a`, preemptions: 1, lostGpuHours: 1600 / 3600 }]);
    const all = (await preemptionLosses(db)).filter((r) => r.preemptorTeam === 'operator:alice' || r.preemptorTeam === `${tenant}/a`);
    expect(all.map((r) => r.preemptorTeam)).toContain('operator:alice');
  });

  it('lists the queue oldest first, with positions per quota by priority', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const first = await gpuTask(db, tenant, 'a', 2, 'Queued');
    const second = await gpuTask(db, tenant, 'a', 2, 'Preempted');
    await db.query(`UPDATE tasks SET priority = 'high' WHERE task_id = $1`, [second]);
    const other = await gpuTask(db, tenant, 'b', 2, 'Queued');
    const rows = await queuedTasks(db, config.policies, tenant);
    expect(rows.map((r) => [r.taskId, r.position])).toEqual([
      [first, 2],
      [second, 1],
      [other, 1],
    ]);
  });
});
