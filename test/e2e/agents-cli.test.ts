import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDatabase } from '../../ledger/scratch';
import { bundleWorkflows } from '../../workers/worker';
import { govloop } from '../support/cli';
import { type Harness, createHarness, intent, testConfig } from '../support/harness';

let h: Harness;
let dir: string;
let env: Record<string, string>;

beforeAll(async () => {
  const config = testConfig();
  // A short-lived copy of payments.refund for the expiry test (the worker's catalog decides).
  config.tools.tools['payments.quick_refund'] = { ...config.tools.tools['payments.refund']!, approvalTtlSeconds: 3, escalateAfterSeconds: 3 };
  h = await createHarness({ bundle: await bundleWorkflows(), config });
  await h.startWorkers();
  dir = mkdtempSync(join(tmpdir(), 'govloop-agents-cli-'));
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

const agentFile = (name: string) => {
  const p = join(dir, `${name}.yaml`);
  writeFileSync(
    p,
    stringify(
      intent(h.tenant, {
        kind: 'agent',
        name,
        resources: { gpus: 0 },
        simulation: undefined,
        caps: { maxUsd: 5 },
        tools: ['search.web', 'payments.refund', 'payments.quick_refund'],
      }),
    ),
  );
  return p;
};

describe('agent commands of the CLI, as a separate process', () => {
  it('submit --as, step --json, access grant, approvals, approve/reject with exit codes and refusal codes, audit show', async () => {
    const sub = await govloop(['submit', agentFile('cli-agent'), '--as', 'carol', '--json'], env);
    expect(sub.code, sub.stderr).toBe(0);
    const { taskId } = sub.json();

    const step = await govloop(['step', taskId, '--tokens-in', '100', '--tokens-out', '20', '--context', '500', '--tool', 'search.web', '--json'], env);
    expect(step.code, step.stderr).toBe(0);
    expect(step.json()).toMatchObject({ answer: 'allow', reason: null, approvalId: null, fallbackModel: null });

    const badStep = await govloop(['step', taskId, '--tokens-in', 'many', '--tokens-out', '1', '--context', '1', '--tool-args', '{oops'], env);
    expect(badStep.code).toBe(2);
    expect(badStep.stderr).toMatch(/--tokens-in: tokens-in must be a number/);
    expect(badStep.stderr).toMatch(/--tool-args: must be JSON/);

    const held = await govloop(
      [
        'step',
        taskId,
        '--tokens-in',
        '100',
        '--tokens-out',
        '20',
        '--context',
        '500',
        '--tool',
        'payments.refund',
        '--tool-args',
        '{"orderId":"o-9","amountUsd":40}',
        '--json',
      ],
      env,
    );
    expect(held.code, held.stderr).toBe(0);
    const { approvalId, answer } = held.json();
    expect(answer).toBe('await-approval');

    const list = await govloop(['approvals', '--tenant', h.tenant, '--json'], env);
    expect(list.json()).toEqual([expect.objectContaining({ approvalId, tool: 'payments.refund', requester: 'carol (unverified)', state: 'pending', tier: 0 })]);

    const noRole = await govloop(['approve', approvalId, '--as', 'alice', '--reason', 'ok', '--json'], env);
    expect(noRole.code).toBe(3);
    expect(noRole.json()).toMatchObject({ recorded: false, code: 'missing-role' });

    const grant = await govloop(['access', 'grant', '--tenant', h.tenant, '--user', 'alice', '--role', 'payments-approver', '--as', 'admin'], env);
    expect(grant.code, grant.stderr).toBe(0);
    const self = await govloop(['approve', approvalId, '--as', 'carol', '--reason', 'mine'], env);
    expect(self.code).toBe(3);
    expect(self.stderr).toMatch(/self-approval/);

    const ok = await govloop(['approve', approvalId, '--as', 'alice', '--reason', 'refund policy 4.2', '--json'], env);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json()).toMatchObject({ recorded: true, state: 'approved', by: 'alice (unverified)' });
    const twice = await govloop(['reject', approvalId, '--as', 'alice', '--reason', 'no'], env);
    expect(twice.code).toBe(3);
    expect(twice.stderr).toMatch(/already-decided/);

    expect((await govloop(['approve', 'not-an-approval-id', '--as', 'alice', '--reason', 'x'], env)).code).toBe(2);
    expect((await govloop(['finish', taskId, '--as', 'carol'], env)).code).toBe(0);
    await h.client.workflow.getHandle(taskId).result();

    const trail = await govloop(['audit', 'show', taskId, '--json'], env);
    expect(trail.code, trail.stderr).toBe(0);
    const actions = trail.json().map((r: { action: string; decision: string }) => `${r.action}:${r.decision}`);
    expect(actions).toEqual([
      'admission:admitted',
      'reserve:held',
      'step:allow',
      'step:await-approval',
      'approval.refused:missing-role',
      'approval.refused:self-approval',
      'approval:approved',
      'step:allow', // the held call, run once approved
      'approval.refused:already-decided',
      'task.finish:accepted', // who finished it, and by which role
      'release:released',
      'settle:Succeeded',
    ]);

    const revoke = await govloop(['access', 'revoke', '--tenant', h.tenant, '--user', 'alice', '--role', 'payments-approver', '--as', 'admin', '--json'], env);
    expect(revoke.json()).toMatchObject({ changed: true });
    const { rows } = await h.db.query("SELECT action, actor FROM audit_log WHERE action LIKE 'access.%' AND detail->>'tenant' = $1 ORDER BY id", [h.tenant]);
    expect(rows).toEqual([
      { action: 'access.grant', actor: 'admin (unverified)' },
      { action: 'access.revoke', actor: 'admin (unverified)' },
    ]);
  }, 300_000); // a dozen CLI processes, each started by tsx: minutes on a loaded 2-core machine

  it('step --finish: the last step finishes the task in the same call, and the task settles Succeeded', async () => {
    const sub = await govloop(['submit', agentFile('cli-last-step'), '--as', 'carol', '--json'], env);
    expect(sub.code, sub.stderr).toBe(0);
    const { taskId } = sub.json();
    const last = await govloop(['step', taskId, '--tokens-in', '100', '--tokens-out', '20', '--context', '500', '--as', 'carol', '--finish'], env);
    expect(last.code, last.stderr).toBe(0);
    expect(last.stdout).toMatch(/^allow \(step 1, cost so far .*\); the task finishes$/m);
    expect((await h.client.workflow.getHandle(taskId).result()).state).toBe('Succeeded');
  }, 120_000);

  it('approve after the request expired exits 3 with the code expired, read from the ledger once the task has ended', async () => {
    const { taskId } = (await govloop(['submit', agentFile('cli-expire'), '--as', 'carol', '--json'], env)).json();
    const held = (
      await govloop(['step', taskId, '--tokens-in', '1', '--tokens-out', '1', '--context', '1', '--tool', 'payments.quick_refund', '--json'], env)
    ).json();
    const status = await h.client.workflow.getHandle(taskId).result();
    expect(status.reasons[0]?.code).toBe('APPROVAL_EXPIRED');
    const late = await govloop(['approve', held.approvalId, '--as', 'alice', '--reason', 'sorry, late', '--json'], env);
    expect(late.code).toBe(3);
    expect(late.json()).toMatchObject({ recorded: false, code: 'expired' });
  });

  it('audit verify exits 0 on an intact chain and 4 naming the first row edited with SQL', async () => {
    // A database of its own: the shared one must never be tampered with while other files use it.
    const database = await createDatabase(inject('databaseUrl'), `govloop_audit_${process.pid}_${Date.now()}`);
    const local = { ...env, DATABASE_URL: database.url };
    try {
      for (const user of ['u1', 'u2', 'u3', 'u4']) {
        expect((await govloop(['access', 'grant', '--tenant', 'acme', '--user', user, '--role', 'payments-approver', '--as', 'admin'], local)).code).toBe(0);
      }
      const intact = await govloop(['audit', 'verify', '--json'], local);
      expect(intact.code).toBe(0);
      expect(intact.json()).toEqual({ ok: true, rows: 4 });

      const c = new pg.Client({ connectionString: database.url });
      await c.connect();
      const { rows } = await c.query<{ id: number }>('SELECT id FROM audit_log ORDER BY id');
      // audit_log refuses UPDATE (0010_audit_guard): the tamperer owns the table and switches its triggers off first.
      await c.query('ALTER TABLE audit_log DISABLE TRIGGER USER');
      await c.query(`UPDATE audit_log SET detail = jsonb_set(detail, '{role}', '"payments-lead"') WHERE id = $1`, [rows[2]!.id]);
      await c.end();
      const broken = await govloop(['audit', 'verify'], local);
      expect(broken.code).toBe(4);
      expect(broken.stdout).toMatch(new RegExp(`broken at row ${rows[2]!.id} \\(altered\\)`));
    } finally {
      await database.drop();
    }
  });
});
