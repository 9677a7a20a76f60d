import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { admit } from '../../governance/admission';
import type { Plan } from '../../governance/plan';
import { usdToMicros } from '../../governance/pricing';
import { type GpuQuotaCheck, type ReserveResult, reserve } from '../../ledger/budgets';
import type { Db } from '../../ledger/db';
import { teamGpusInUse, updateTask } from '../../ledger/tasks';
import { anIntent } from '../support/builders';
import { AT, type Ledger, attributionOf, backends, newTask, newTenant } from './backends';

const config = loadConfig();

/** The plan admission makes for `gpus` GPUs of `gpuType`: what teamGpusInUse reads from a task row. */
function planFor(tenant: string, team: string, gpus: number, gpuType = 'H100'): Plan {
  const got = admit(anIntent().tenant(tenant).team(team).gpus(gpus, gpuType).build(), { config, now: AT.toISOString(), budgets: [], teamGpusInUse: 0 });
  if (got.decision !== 'admitted') throw new Error(`fixture not admitted: ${JSON.stringify(got.reasons)}`);
  return got.plan;
}

/** An admitted task holding a plan for `gpus` GPUs, not yet reserved. */
async function gpuTask(db: Db, tenant: string, gpus: number, opts: { team?: string; gpuType?: string; state?: string } = {}): Promise<string> {
  const team = opts.team ?? 'search';
  const id = await newTask(db, tenant, { team, state: opts.state ?? 'Admitted' });
  await updateTask(db, id, { plan: planFor(tenant, team, gpus, opts.gpuType) });
  return id;
}

const quota = (gpus: number, of = 8, gpuType = 'H100'): GpuQuotaCheck => ({ gpuType, gpus, quota: of, policy: 'policies/default#defaultGpuQuota' });

describe.each(backends)('GPU quota recheck in reserve on $name', (backend) => {
  let ledger: Ledger;
  beforeAll(async () => {
    ledger = await backend.open();
  });
  afterAll(async () => {
    await ledger?.close();
  });

  it('of two reservations that together exceed the quota, one is held and the other must wait (GPU_QUOTA_BUSY, retry)', async () => {
    const { db } = ledger;
    const other = ledger.pool(2);
    const tenant = newTenant();
    const a = attributionOf(tenant);
    const t1 = await gpuTask(db, tenant, 6);
    const t2 = await gpuTask(db, tenant, 6);

    const results = await Promise.all([reserve(db, t1, a, usdToMicros(1), AT, quota(6)), reserve(other, t2, a, usdToMicros(1), AT, quota(6))]);

    const ok = results.filter((r) => r.ok);
    expect(ok).toHaveLength(1);
    const loser = results.findIndex((r) => !r.ok);
    expect(results[loser]).toEqual<ReserveResult>({
      ok: false,
      retry: true,
      reasons: [expect.objectContaining({ code: 'GPU_QUOTA_BUSY', limit: 2, requested: 6, policy: 'policies/default#defaultGpuQuota' })],
    });
    const [winnerId, loserId] = loser === 1 ? [t1, t2] : [t2, t1];
    expect(await teamGpusInUse(db, tenant, 'search', 'H100', '')).toBe(6);
    const states = await db.query<{ task_id: string; state: string }>('SELECT task_id, state FROM tasks WHERE task_id = ANY($1) ORDER BY task_id', [[t1, t2]]);
    expect(Object.fromEntries(states.rows.map((r) => [r.task_id, r.state]))).toEqual({ [winnerId]: 'Reserved', [loserId]: 'Admitted' });
    expect((await db.query('SELECT 1 FROM reservations WHERE task_id = $1', [loserId])).rowCount).toBe(0);

    // Once the winner is done its GPUs are free, and the waiting task gets them.
    await updateTask(db, winnerId, { state: 'Succeeded', finished: true });
    expect(await reserve(db, loserId, a, usdToMicros(1), AT, quota(6))).toEqual({ ok: true, amountMicros: usdToMicros(1) });
  });

  it('six concurrent 3-GPU reservations against a quota of 8: exactly two are held', async () => {
    const { db } = ledger;
    const other = ledger.pool(4);
    const tenant = newTenant();
    const a = attributionOf(tenant);
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push(await gpuTask(db, tenant, 3));
    const results = await Promise.all(ids.map((id, i) => reserve(i % 2 ? other : db, id, a, usdToMicros(1), AT, quota(3))));
    expect(results.filter((r) => r.ok)).toHaveLength(2);
    for (const r of results.filter((x) => !x.ok))
      expect(r).toMatchObject({ ok: false, retry: true, reasons: [{ code: 'GPU_QUOTA_BUSY', requested: 3, limit: 2 }] });
    expect(await teamGpusInUse(db, tenant, 'search', 'H100', '')).toBe(6);
  });

  it("counts only the team's own GPUs of that type, in a state that holds them", async () => {
    const { db } = ledger;
    const tenant = newTenant();
    const a = attributionOf(tenant);
    await gpuTask(db, tenant, 8, { team: 'research', state: 'Running' });
    await gpuTask(db, tenant, 8, { gpuType: 'A100', state: 'Running' });
    await gpuTask(db, tenant, 8, { state: 'Succeeded' });
    await gpuTask(db, tenant, 8, { state: 'Queued' });
    await gpuTask(db, tenant, 2, { state: 'Dispatched' });
    const t = await gpuTask(db, tenant, 6);
    expect(await teamGpusInUse(db, tenant, 'search', 'H100', t)).toBe(2);
    expect(await reserve(db, t, a, usdToMicros(1), AT, quota(6))).toEqual({ ok: true, amountMicros: usdToMicros(1) });
    const late = await gpuTask(db, tenant, 1);
    expect(await reserve(db, late, a, usdToMicros(1), AT, quota(1))).toMatchObject({
      ok: false,
      retry: true,
      reasons: [{ code: 'GPU_QUOTA_BUSY', limit: 0, requested: 1 }],
    });
  });
});
