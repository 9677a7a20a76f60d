import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { bundleWorkflows } from '../../workers/worker';
import { govloop } from '../support/cli';
import { type Harness, createHarness, intent } from '../support/harness';

let h: Harness;
let dir: string;
let env: Record<string, string>;

const file = (name: string, doc: unknown) => {
  const p = join(dir, name);
  writeFileSync(p, typeof doc === 'string' ? doc : stringify(doc));
  return p;
};

beforeAll(async () => {
  h = await createHarness({ bundle: await bundleWorkflows() });
  await h.startWorkers();
  dir = mkdtempSync(join(tmpdir(), 'govloop-e2e-'));
  env = {
    TEMPORAL_ADDRESS: inject('temporalAddress'),
    DATABASE_URL: inject('databaseUrl'),
    GOVLOOP_TASK_QUEUE: h.controlQueue,
    GOVLOOP_DATA_DIR: join(dir, 'state'),
  };
});

afterAll(async () => {
  await h.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('govloop CLI, as a separate process, against the real server and PostgreSQL', () => {
  it('submit --wait --json: an admitted task completes, with usage and cost attributed in the ledger', async () => {
    const r = await govloop(
      [
        'submit',
        file('ok.yaml', intent(h.tenant, { name: 'cli-ok', simulation: { durationSeconds: 1800, tokensPerSecond: 10 } })),
        '--wait',
        '--json',
        '--as',
        'alice',
      ],
      env,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = r.json();
    expect(out).toMatchObject({ decision: 'admitted', reasons: [], state: 'Succeeded', costUsd: 4 });
    expect(out.usage.gpuSeconds).toBe(3600);
    const { rows } = await h.db.query(
      `SELECT a.tenant, a.team, a.project, a.model, a.use_case, u.meter, SUM(u.quantity) AS q, SUM(u.cost_micros)::bigint AS cost
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE u.task_id = $1 GROUP BY 1,2,3,4,5,6 ORDER BY u.meter`,
      [out.taskId],
    );
    expect(rows).toEqual([
      { tenant: h.tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', use_case: 'relevance', meter: 'gpu_seconds', q: 3600, cost: 4_000_000 },
      { tenant: h.tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', use_case: 'relevance', meter: 'tokens_processed', q: 18_000, cost: 0 },
    ]);
    const task = await h.db.query('SELECT requester, state FROM tasks WHERE task_id = $1', [out.taskId]);
    expect(task.rows[0]).toEqual({ requester: 'alice (unverified)', state: 'Succeeded' });
  });

  it('submit without --wait prints the admission decision as soon as it is made', async () => {
    const r = await govloop(
      [
        'submit',
        file(
          'nowait.yaml',
          intent(h.tenant, { name: 'cli-nowait', simulation: { durationSeconds: 2_000_000, tokensPerSecond: 0 }, caps: { maxUsd: 20000, maxGpuHours: 4096 } }),
        ),
        '--json',
      ],
      env,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = r.json();
    expect(out).toMatchObject({ decision: 'admitted', usage: null, costUsd: null });
    expect(['Reserved', 'Running', 'Admitting']).toContain(out.state);
    const c = await govloop(['cancel', out.taskId, '--as', 'bob', '--reason', 'test over'], env);
    expect(c.code, c.stderr).toBe(0);
    const s = await h.client.workflow.getHandle(out.taskId).result();
    expect(s.state).toBe('Cancelled');
    const st = await govloop(['status', out.taskId, '--json'], env);
    expect(st.json()).toMatchObject({
      state: 'Cancelled',
      reasons: [expect.objectContaining({ code: 'CANCELLED', message: 'cancelled by bob (unverified): test over' })],
    });
  });

  it('an over-cap intent exits 3 with the cap reason code', async () => {
    const r = await govloop(['submit', file('cap.yaml', intent(h.tenant, { name: 'cli-cap', caps: { maxUsd: 100, maxGpuHours: 99_999 } })), '--json'], env);
    expect(r.code).toBe(3);
    expect(r.json()).toMatchObject({
      decision: 'rejected',
      state: 'Rejected',
      reasons: [expect.objectContaining({ code: 'CAP_MAX_GPU_HOURS', limit: 4096, requested: 99_999 })],
    });
  });

  it('a malformed intent exits 2 with every field error and starts no workflow', async () => {
    const before = await h.client.workflow.count(`TaskQueue = '${h.controlQueue}'`);
    const bad = {
      kind: 'training',
      name: 'Bad Name',
      attribution: { tenant: h.tenant, project: 'p', model: 'm', useCase: 'u' },
      caps: { maxUsd: -5 },
      resources: { gpus: 4 },
    };
    const r = await govloop(['submit', file('bad.yaml', bad), '--json'], env);
    expect(r.code).toBe(2);
    const paths = r
      .json()
      .errors.map((e: { path: string }) => e.path)
      .sort();
    expect(paths).toEqual(['attribution.team', 'caps.maxUsd', 'name', 'resources.gpuType']);
    expect(r.stderr).toMatch(/attribution\.team: /);
    const after = await h.client.workflow.count(`TaskQueue = '${h.controlQueue}'`);
    expect(after.count).toBe(before.count);
    const notYaml = await govloop(['submit', file('broken.yaml', 'kind: [unclosed'), '--json'], env);
    expect(notYaml.code).toBe(2);
    expect(notYaml.stderr).toMatch(/\(document\): not valid YAML/);
  });

  it('budget set/show, usage and audit verify read and write the ledger; bad options exit 2 and change nothing', async () => {
    const tenant = `${h.tenant}-cli`;
    expect((await govloop(['budget', 'set', '--tenant', tenant, '--team', 'search', '--usd', '120', '--period', 'month'], env)).code).toBe(0);
    const show = await govloop(['budget', 'show', '--tenant', tenant, '--team', 'search', '--json'], env);
    expect(show.json()).toMatchObject({ scope: `${tenant}/search/*`, period: 'month', limitUsd: 120, reservedUsd: 0, spentUsd: 0 });

    const bad = await govloop(['budget', 'set', '--tenant', tenant, '--team', 'search', '--usd', 'lots', '--period', 'fortnight'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--usd: must be a number/);
    expect(bad.stderr).toMatch(/--period: /);
    expect((await govloop(['budget', 'show', '--tenant', tenant, '--team', 'search', '--json'], env)).json().limitUsd).toBe(120);

    // A raise waits for a second person; the requester cannot approve it.
    const raise = await govloop(['budget', 'set', '--tenant', tenant, '--team', 'search', '--usd', '200', '--as', 'alice', '--reason', 'launch week'], env);
    expect(raise.code, raise.stderr).toBe(0);
    const raiseId = /as change (\d+)/.exec(raise.stdout)?.[1];
    expect(raiseId, raise.stdout).toBeDefined();
    expect((await govloop(['budget', 'show', '--tenant', tenant, '--team', 'search', '--json'], env)).json().limitUsd).toBe(120);
    const pending = (await govloop(['budget', 'raises', '--tenant', tenant, '--json'], env)).json();
    expect(pending).toMatchObject([
      {
        raiseId: Number(raiseId),
        scope: `${tenant}/search/*`,
        fromUsd: 120,
        toUsd: 200,
        requestedBy: 'alice (unverified)',
        reason: 'launch week',
        state: 'pending',
      },
    ]);
    const self = await govloop(['budget', 'approve', raiseId!, '--as', 'alice', '--reason', 'mine'], env);
    expect(self.code).toBe(3);
    expect(self.stderr).toMatch(/self-approval/);
    expect((await govloop(['budget', 'approve', raiseId!, '--as', 'bob', '--reason', 'ok for launch'], env)).code).toBe(0);
    expect((await govloop(['budget', 'approve', raiseId!, '--as', 'carol', '--reason', 'again'], env)).stderr).toMatch(/already-decided/);
    const raised = (await govloop(['budget', 'show', '--tenant', tenant, '--team', 'search', '--json'], env)).json();
    expect(raised).toMatchObject({ limitUsd: 200, step: 'ok', sharePct: 0, burnUsdPerHour: 0, forecastUsd: 0 });
    // Lowering applies at once.
    expect((await govloop(['budget', 'set', '--tenant', tenant, '--team', 'search', '--usd', '150', '--as', 'alice'], env)).stdout).toMatch(/: \$150\.00/);
    expect((await govloop(['budget', 'approve', 'x', '--as', 'bob', '--reason', 'r'], env)).code).toBe(2);

    const usage = await govloop(['usage', '--by', 'tenant,team', '--period', 'all', '--tenant', h.tenant, '--json'], env);
    expect(usage.code, usage.stderr).toBe(0);
    const search = usage.json().find((r: { team: string }) => r.team === 'search');
    expect(search.costUsd).toBeGreaterThanOrEqual(4);
    expect((await govloop(['usage', '--by', 'colour'], env)).code).toBe(2);

    const audit = await govloop(['audit', 'verify', '--json'], env);
    expect(audit.code, audit.stdout).toBe(0);
    expect(audit.json()).toMatchObject({ ok: true });
  }, 300_000); // a dozen CLI processes, each started by tsx: minutes on a loaded 2-core machine

  it('report: showback by team and project from the rollups as json and csv, unit costs included; a bad format exits 2', async () => {
    const job = await govloop(
      [
        'submit',
        file(
          'report.yaml',
          intent(h.tenant, {
            name: 'cli-report',
            attribution: { ...intent(h.tenant).attribution, project: 'reports' },
            simulation: { durationSeconds: 900, tokensPerSecond: 10 },
          }),
        ),
        '--wait',
        '--json',
      ],
      env,
    );
    expect(job.code, job.stderr).toBe(0);
    const r = await govloop(['report', '--by', 'team,project', '--period', 'month', '--tenant', h.tenant, '--format', 'json'], env);
    expect(r.code, r.stderr).toBe(0);
    const report = r.json();
    // What the ledger holds for this tenant this month, read from the raw events, not the rollups.
    const { rows } = await h.db.query<{ team: string; project: string; cost: number; gpu: number }>(
      `SELECT a.team, a.project, SUM(u.cost_micros)::bigint AS cost, SUM(CASE WHEN u.meter = 'gpu_seconds' THEN u.quantity ELSE 0 END) AS gpu
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id
       WHERE a.tenant = $1 AND u.occurred_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' GROUP BY 1, 2`,
      [h.tenant],
    );
    expect(rows.length).toBeGreaterThan(0);
    for (const want of rows) {
      const got = report.rows.find((x: { team: string; project: string }) => x.team === want.team && x.project === want.project);
      expect(got, `${want.team}/${want.project}`).toBeDefined();
      expect(Math.round(got.costUsd * 1e6)).toBe(want.cost);
      expect(got.gpuHours * 3600).toBeCloseTo(want.gpu, 6);
    }
    const totalMicros = rows.reduce((s, x) => s + Number(x.cost), 0);
    expect(Math.round(report.totalCostUsd * 1e6)).toBe(totalMicros);
    // Every GPU-second of this tenant is H100 exclusive at $4/hour (each event rounded to a micro-dollar).
    expect(report.unitCosts.perGpuHourUsd).toBeCloseTo(4, 5);
    expect(report.unitCosts.perTrainingJobUsd).toBeGreaterThan(0);
    expect(report.unattributed).toEqual({ costUsd: 0, events: 0 });

    const csv = await govloop(['report', '--by', 'team,project', '--period', 'month', '--tenant', h.tenant, '--format', 'csv'], env);
    expect(csv.code, csv.stderr).toBe(0);
    const lines = csv.stdout.trim().split('\n');
    expect(lines[0]).toBe('team,project,costUsd,gpuHours,tokensIn,tokensOut,events,tasks');
    expect(lines).toHaveLength(report.rows.length + 1);

    const bad = await govloop(['report', '--format', 'pdf', '--by', 'team,colour'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--format: /);
    expect(bad.stderr).toMatch(/--by/);
  });

  it('without DATABASE_URL the same commands run on the embedded PGlite ledger in the data dir, and it persists', async () => {
    const local = { ...env, DATABASE_URL: undefined as unknown as string, GOVLOOP_DATA_DIR: join(dir, 'embedded') };
    delete (local as Record<string, unknown>).DATABASE_URL;
    expect((await govloop(['budget', 'set', '--tenant', 'acme', '--usd', '75', '--period', 'total'], local)).code).toBe(0);
    const show = await govloop(['budget', 'show', '--tenant', 'acme', '--period', 'total', '--json'], local);
    expect(show.code, show.stderr).toBe(0);
    expect(show.json()).toMatchObject({ scope: 'acme/*/*', period: 'total', window: 'total', limitUsd: 75 });
    const pg = await govloop(['budget', 'show', '--tenant', 'acme', '--period', 'total', '--json'], env);
    expect(pg.json()).toEqual([]);
  });
});
