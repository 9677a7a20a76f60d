import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { admit } from '../../governance/admission';
import { admitQuota } from '../../governance/quota';
import { closePreemption, openPreemption, preemptionLosses, queuedTasks, quotaState, tasksToWake } from '../../ledger/quota';
import { updateTask, upsertTask } from '../../ledger/tasks';
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

/**
 * A task of `tenant/team` asking for `gpus` GPUs of `gpuType` at `priority`, in `state`, created
 * `ageS` seconds before AT. `planned`: admission wrote its plan (false: still deciding, only the intent says the type).
 */
async function waiter(
  db: Ledger['db'],
  tenant: string,
  o: { team: string; gpus: number; gpuType?: string; priority?: string; state: string; ageS: number; planned?: boolean },
): Promise<string> {
  const taskId = `task-${randomUUID()}`;
  const i = anIntent()
    .tenant(tenant)
    .team(o.team)
    .gpus(o.gpus, o.gpuType ?? 'H100')
    .priority(o.priority ?? 'normal')
    .build();
  await upsertTask(db, { taskId, intent: i, requester: 'test', state: o.state });
  await db.query('UPDATE tasks SET created_at = $2 WHERE task_id = $1', [taskId, new Date(AT.getTime() - o.ageS * 1000)]);
  if (o.planned ?? true) {
    const got = admit(i, { config, now: AT.toISOString(), budgets: [], teamGpusInUse: 0 });
    if (got.decision === 'rejected') throw new Error('fixture rejected');
    await updateTask(db, taskId, { plan: got.plan });
  }
  return taskId;
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
    const order = {
      victimTaskId: victim,
      preemptorTaskId: preemptor,
      by: 'govloop',
      reason: 'reclaim',
      preemptorTenant: tenant,
      preemptorTeam: 'a',
      gpuType: 'H100',
      gpus: 4,
    };
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

  it('wakes, for a release, the queued tasks its GPUs can go to: own team first, then the cohort, by priority then age, as many as it held plus one', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const policies = {
      ...config.policies,
      cohorts: [
        {
          name: `c-${tenant}`,
          gpuType: 'H100',
          teams: ['a', 'b'].map((team) => ({ tenant, team, nominal: 4, borrowingLimit: null, lendingLimit: null, weight: 1 })),
        },
      ],
    };
    const released = await waiter(db, tenant, { team: 'a', gpus: 2, state: 'Running', ageS: 900 });
    const aOld = await waiter(db, tenant, { team: 'a', gpus: 1, state: 'Queued', ageS: 300 });
    const aHigh = await waiter(db, tenant, { team: 'a', gpus: 1, priority: 'high', state: 'Queued', ageS: 10 });
    const bOldest = await waiter(db, tenant, { team: 'b', gpus: 1, state: 'Preempted', ageS: 800 });
    const bNext = await waiter(db, tenant, { team: 'b', gpus: 1, state: 'Queued', ageS: 400 });
    // Not candidates: a task still in its first admission, another GPU type, a task holding GPUs, one that ended.
    await waiter(db, tenant, { team: 'a', gpus: 1, state: 'Admitting', ageS: 5, planned: false });
    await waiter(db, tenant, { team: 'a', gpus: 1, gpuType: 'A100', state: 'Queued', ageS: 700 });
    await waiter(db, tenant, { team: 'a', gpus: 1, state: 'Running', ageS: 600 });
    const ended = await waiter(db, tenant, { team: 'a', gpus: 1, state: 'Queued', ageS: 650 });
    await updateTask(db, ended, { state: 'Cancelled', finished: true });

    // 2 GPUs released: three tasks. Team a's first, its high-priority task before its older one; then the cohort's oldest.
    expect(await tasksToWake(db, policies, released)).toEqual([aHigh, aOld, bOldest]);
    // With its own team's waiters gone, the cohort's, by age.
    for (const id of [aHigh, aOld]) await updateTask(db, id, { state: 'Running' });
    expect(await tasksToWake(db, policies, released)).toEqual([bOldest, bNext]);
    // Without the cohort, a flat quota: only team a's own, and it has none waiting.
    expect(await tasksToWake(db, config.policies, released)).toEqual([]);
    // A task without a GPU plan releases no GPUs: nobody is woken.
    const planless = await newTask(db, tenant, { team: 'a', state: 'Running' });
    expect(await tasksToWake(db, policies, planless)).toEqual([]);
  });

  it('shields a job that started less than preemption.minRunSeconds ago: the cluster tells how long each has run', async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const young = await gpuTask(db, tenant, 'a', 4, 'Running');
    const old = await gpuTask(db, tenant, 'a', 4, 'Running');
    const req = { taskId: 'req', tenant, team: 'a', gpuType: 'H100' };
    const flat = { quota: 8, policy: 'p' };
    const capacity = (youngRan: number) => ({
      nodes: [{ name: 'n0', gpus: 8, used: 8 }],
      jobs: [
        { taskId: young, node: 'n0', gpus: 4, lostSecondsIfSuspended: 10, runSeconds: youngRan },
        { taskId: old, node: 'n0', gpus: 4, lostSecondsIfSuspended: 900, runSeconds: 5000 },
      ],
    });
    await db.query(`UPDATE tasks SET priority = 'low' WHERE task_id = ANY($1)`, [[young, old]]);
    const ask = { taskId: 'req', tenant, team: 'a', gpus: 4, priority: config.policies.priorities.high!, queuedAt: AT.toISOString() };
    const shielded = { ...config.policies, preemption: { ...config.policies.preemption, minRunSeconds: 600 } };

    const state = await quotaState(db, shielded, req, flat, capacity(60));
    expect(state.minRunSeconds).toBe(600);
    expect(state.running).toEqual(expect.arrayContaining([expect.objectContaining({ taskId: young, runSeconds: 60 })]));
    // The young job would lose least, but it is shielded: the old one goes.
    expect(admitQuota(state, ask)).toMatchObject({ decision: 'preempt', victims: [{ taskId: old }] });
    // Without the shield (the shipped default), the cheapest victim is the young one.
    expect(admitQuota(await quotaState(db, config.policies, req, flat, capacity(60)), ask)).toMatchObject({
      decision: 'preempt',
      victims: [{ taskId: young }],
    });
    // Once it has run long enough it is a victim again.
    expect(admitQuota(await quotaState(db, shielded, req, flat, capacity(600)), ask)).toMatchObject({ decision: 'preempt', victims: [{ taskId: young }] });
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
