import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { govloop, govloopBin, repoRoot } from '../support/cli';

/**
 * The main job, as a user runs it on a fresh machine (`npm run demo`): its own Temporal dev
 * server and the embedded PGlite ledger (no DATABASE_URL), every example intent, the outcomes and
 * the showback table, and the 90-day migration program run at 2 s a day next to that work, to
 * completion, with its report. The embedded ledger has one session shared by every connection, so
 * this also catches code that waits on a second connection inside a transaction (a deadlock there,
 * harmless on PostgreSQL). With --keep the stack stays up, and the CLI then shows that the gates
 * are measured: a second program over the same ledger, with one team's budget removed, is blocked
 * at phase 1 by that team.
 */
const env = { DATABASE_URL: undefined, TEMPORAL_ADDRESS: undefined, GOVLOOP_DATA_DIR: undefined, GOVLOOP_TASK_QUEUE: undefined, GOVLOOP_PROGRAM_ID: undefined };
const dir = mkdtempSync(join(tmpdir(), 'govloop-demo-test-'));
let demo: ReturnType<typeof spawn> | undefined;

afterAll(async () => {
  if (demo && demo.exitCode === null) {
    const exited = new Promise((r) => demo!.once('exit', r));
    demo.kill('SIGINT');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });

describe('govloop demo (the main job), as a separate process on the embedded ledger', () => {
  it('runs every example intent to its outcome, the migration program to completion, and prints the showback and the report', async () => {
    const child = spawn(process.execPath, [govloopBin, '--data-dir', dir, 'demo', '--keep', '--ui-port', String(await freePort())], {
      cwd: repoRoot,
      env: Object.fromEntries(Object.entries({ ...process.env, ...env }).filter(([, v]) => v !== undefined)) as NodeJS.ProcessEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    demo = child;
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    // The demo stays up with --keep once it printed this line (or it ended: then it failed).
    await new Promise<void>((resolve, reject) => {
      const check = () => {
        if (stdout.includes('govloop keeps running')) resolve();
      };
      child.stdout!.on('data', check);
      child.once('exit', (code) => reject(new Error(`demo exited ${code}:\n${stdout}\n${stderr}`)));
    });

    const row = (task: string) => stdout.split('\n').find((l) => l.includes(`│ ${task} `)) ?? '';
    expect(row('llama-ft-nightly')).toMatch(/admitted\s+│ Succeeded/);
    expect(row('support-agent')).toMatch(/admitted\s+│ Succeeded/);
    expect(row('chat-inference')).toMatch(/admitted\s+│ Succeeded/);
    expect(row('globex-finetune')).toMatch(/rejected\s+│ Rejected\s+│ BUDGET_EXCEEDED/);
    expect(row('too-big-pretrain')).toMatch(/rejected\s+│ Rejected\s+│ CAP_MAX_GPU_HOURS/);
    expect(stdout).toMatch(/bad-intent\.yaml: invalid intent, not submitted \(name: .*attribution\.team: required/);
    expect(stdout).toMatch(/Showback by team/);
    // 8 H100s for 1.5 h at $4: the nightly fine-tune costs $48; its team's showback has it and the onboarded query-rewrite.
    expect(row('llama-ft-nightly')).toMatch(/│ \$48\.00 │/);
    expect(stdout.split('\n').find((l) => /│ acme\s+│ search /.test(l))).toMatch(/│ 2\s+│ .* │ \$48\.\d\d │/);

    // The program: each phase signed off by the two owners, in that order, and closed.
    for (const phase of ['ledger', 'resource-governance', 'loop']) {
      expect(stdout).toMatch(new RegExp(`pat signed phase ${phase} off as its platform owner`));
      expect(stdout).toMatch(new RegExp(`oli signed phase ${phase} off as its workload owner`));
      expect(stdout).toMatch(new RegExp(`phase ${phase} closed on day \\d+`));
    }
    expect(stdout).toMatch(/onboard acme\/search\/query-rewrite \(inference, template vllm-inference\): first task Succeeded/);
    expect(stdout).toMatch(/onboard acme\/research\/reranker-distill \(training, template torchrun-training\): first task Succeeded/);
    expect(stdout).toMatch(/ladder drill: the controller fired notify, throttle, queue, preempt/);
    expect(stdout).toMatch(/ladder drill: the agent's steps under the cut budget: degrade/);
    expect(stdout).toMatch(/program: all 3 phases closed on day \d+/);
    // The report: every gate measured and passing, each deliverable hashed.
    const report = stdout.slice(stdout.indexOf('# AI Landing Zone + Minimum Governance Loop'));
    expect(report).toMatch(/all phases closed/);
    for (const gate of [
      'attribution-coverage',
      'budget-coverage',
      'isolation-policy',
      'topology-acceptance',
      'golden-paths',
      'ladder-executed',
      'team-contract',
      'onboarding',
    ])
      expect(report).toMatch(new RegExp(`\\| ${gate} \\| \\d+\\.\\d % \\| \\d+\\.\\d % \\| yes \\|`));
    expect(report.match(/- deliverable \S+ \(\S+\) v[0-9a-f]{12}, sha256 [0-9a-f]{64}/g)).toHaveLength(6);

    // The gates are measured, not ticked: the research team's budget removed, a second program over
    // the same ledger is blocked at phase 1, and its status names the team.
    const dev = JSON.parse(readFileSync(join(dir, 'dev.json'), 'utf8')) as { databaseUrl: string };
    const db = new pg.Client({ connectionString: dev.databaseUrl });
    await db.connect();
    try {
      await db.query("DELETE FROM budgets WHERE tenant = 'acme' AND team = 'research'");
    } finally {
      await db.end();
    }
    const recheck = { ...env, GOVLOOP_PROGRAM_ID: 'program-recheck' };
    const started = await govloop(['--data-dir', dir, 'program', 'start', '--day-seconds', '2', '--as', 'pat', '--json'], recheck);
    expect(started.code, started.stderr).toBe(0);
    let status: any;
    for (let i = 0; i < 300; i++) {
      const s = await govloop(['--data-dir', dir, 'program', 'status', '--refresh', '--json'], recheck);
      expect(s.code, s.stderr).toBe(0);
      status = s.json();
      if (status.phases[0].gates.length > 0) break;
    }
    const ledger = status.phases[0];
    expect(status.current).toBe('ledger');
    const budgets = ledger.gates.find((g: { id: string }) => g.id === 'budget-coverage');
    expect(budgets.pass).toBe(false);
    expect(budgets.failing.join('\n')).toMatch(/^acme\/research: no budget covers project .*ranker-eval/m);
    expect(budgets.failing.join('\n')).not.toMatch(/acme\/search|acme\/support/);
    const signoff = await govloop(['--data-dir', dir, 'program', 'signoff', 'ledger', '--as', 'pat', '--reason', 'the budget gate is red', '--json'], recheck);
    expect(signoff.code).toBe(3);
    expect(signoff.stdout + signoff.stderr).toMatch(/GATES_NOT_PASSED/);
  }, 600_000);
});
