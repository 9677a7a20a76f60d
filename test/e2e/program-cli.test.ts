import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadProgramPlan } from '../../config/load';
import { bundleWorkflows } from '../../workers/worker';
import { programStatusQuery } from '../../workflows/migration-program';
import { govloop } from '../support/cli';
import { type Harness, createHarness } from '../support/harness';

/** `govloop program` as a new user runs it, a separate process each time, against the real server and PostgreSQL. */
let h: Harness;
let dir: string;
let env: Record<string, string>;
const programId = `program-cli-${randomUUID().slice(0, 8)}`;

beforeAll(async () => {
  h = await createHarness({ bundle: await bundleWorkflows() });
  await h.startWorkers();
  dir = mkdtempSync(join(tmpdir(), 'govloop-program-'));
  env = {
    TEMPORAL_ADDRESS: inject('temporalAddress'),
    DATABASE_URL: inject('databaseUrl'),
    GOVLOOP_TASK_QUEUE: h.controlQueue,
    GOVLOOP_DATA_DIR: join(dir, 'state'),
    GOVLOOP_PROGRAM_ID: programId,
  };
});

afterAll(async () => {
  await h.client.workflow
    .getHandle(programId)
    .terminate('test done')
    .catch(() => undefined);
  await h?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('govloop program, as a separate process', () => {
  it('bad input exits 2 naming every field; nothing starts', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(
      bad,
      'name: x\nversion: 1\nsignoff: { platformRole: platform-admin, workloadRole: tenant-admin }\nphases:\n  - { id: a, name: A, startDay: 5, endDay: 2, work: [], deliverables: [], gates: [{ id: g, check: nope, threshold: 2 }] }\n',
    );
    const r = await govloop(['program', 'start', '--plan', bad, '--as', 'alice'], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/phases\.0\.gates\.0\.check/);
    expect(r.stderr).toMatch(/phases\.0\.gates\.0\.threshold/);
    // Once the fields are right, the plan's own rules: a phase that ends before it starts.
    writeFileSync(
      bad,
      'name: x\nversion: 1\nsignoff: { platformRole: platform-admin, workloadRole: tenant-admin }\nphases:\n  - { id: a, name: A, startDay: 5, endDay: 2, work: [], deliverables: [], gates: [{ id: g, check: runbookV1, threshold: 1 }] }\n',
    );
    const order = await govloop(['program', 'start', '--plan', bad, '--as', 'alice'], env);
    expect(order.code).toBe(2);
    expect(order.stderr).toMatch(/phases\.0\.endDay: ends \(day 2\) before it starts \(day 5\)/);
    const days = await govloop(['program', 'start', '--day-seconds', 'soon', '--as', 'alice'], env);
    expect(days.code).toBe(2);
    expect(days.stderr).toMatch(/--day-seconds/);
    const none = await govloop(['program', 'status', '--json'], env);
    expect(none.code).toBe(3);
    expect(none.stderr).toMatch(/no migration program is running/);
  });

  it('start, status with every gate measured, a refused sign-off (exit 3 with its code, audited), a second start refused, the report', async () => {
    const r = await govloop(['program', 'start', '--day-seconds', '2', '--as', 'alice', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const shipped = loadProgramPlan();
    expect(r.json()).toMatchObject({ programId, version: shipped.version, phases: shipped.phases.map((p) => p.id) });
    const again = await govloop(['program', 'start', '--as', 'alice'], env);
    expect(again.code).toBe(3);
    expect(again.stderr).toMatch(/ALREADY_RUNNING/);
    // Wait for the first measurement, then read it through the CLI.
    const handle = h.client.workflow.getHandle(programId);
    for (let s = await handle.query(programStatusQuery); s.phases[0]!.gates.length === 0; s = await handle.query(programStatusQuery))
      await new Promise((res) => setTimeout(res, 100));
    const st = await govloop(['program', 'status', '--json'], env);
    expect(st.code, st.stderr).toBe(0);
    const s = st.json();
    expect(s.current).toBe(shipped.phases[0]!.id);
    expect(s.phases[0].gates.map((g: { id: string }) => g.id)).toEqual(shipped.phases[0]!.gates.map((g) => g.id));
    for (const g of s.phases[0].gates)
      expect(g).toEqual(expect.objectContaining({ threshold: expect.any(Number), detail: expect.any(String), measuredAt: expect.any(String) }));
    // The shared test ledger fails some phase-1 gate (teams without budgets...): a sign-off is refused, naming it.
    const failing = s.phases[0].gates.filter((g: { pass: boolean }) => !g.pass);
    expect(failing.length).toBeGreaterThan(0);
    const sign = await govloop(['program', 'signoff', shipped.phases[0]!.id, '--as', 'alice', '--reason', 'looks done'], env);
    expect(sign.code).toBe(3);
    expect(sign.stderr).toMatch(/GATES_NOT_PASSED/);
    expect(sign.stderr).toContain(failing[0].id);
    const audited = await h.db.query(
      "SELECT actor FROM audit_log WHERE action = 'program.signoff' AND decision = 'GATES_NOT_PASSED' AND detail->>'programId' = $1",
      [programId],
    );
    expect(audited.rows).toEqual([{ actor: 'alice (unverified)' }]);
    const noReason = await govloop(['program', 'signoff', shipped.phases[0]!.id, '--as', 'alice'], env);
    expect(noReason.code).toBe(2);
    expect(noReason.stderr).toMatch(/--reason/);
    // The payload is checked with the workflow's own schema: a control character in the reason is refused as the workflow would.
    const control = await govloop(['program', 'extend', shipped.phases[0]!.id, '--days', '1', '--as', 'alice', '--reason', 'late\u0007'], env);
    expect(control.code).toBe(2);
    expect(control.stderr).toMatch(/invalid request: reason: must not contain control characters/);
    const table = await govloop(['program', 'status'], env);
    expect(table.stdout).toMatch(/still to sign/);
    const report = await govloop(['program', 'report'], env);
    expect(report.code, report.stderr).toBe(0);
    for (const p of shipped.phases) expect(report.stdout).toContain(p.name);
    // Eleven CLI processes, each a Node start: on 2 busy cores (CI runs three test files at once) that passed 120 s once.
  }, 300_000);
});
