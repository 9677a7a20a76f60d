import { describe, expect, it } from 'vitest';
import { govloop } from '../support/cli';

/**
 * The main job, as a user runs it on a fresh machine (`npm run demo`): its own Temporal dev
 * server and the embedded PGlite ledger (no DATABASE_URL), every example intent, the outcomes and
 * the showback table. The embedded ledger has one session shared by every connection, so this
 * also catches code that waits on a second connection inside a transaction (a deadlock there,
 * harmless on PostgreSQL).
 */
describe('govloop demo (the main job), as a separate process on the embedded ledger', () => {
  it('runs every example intent to its outcome and prints the showback by team', async () => {
    const env = { DATABASE_URL: undefined, TEMPORAL_ADDRESS: undefined, GOVLOOP_DATA_DIR: undefined, GOVLOOP_TASK_QUEUE: undefined };
    const r = await govloop(['demo'], env);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const row = (task: string) => r.stdout.split('\n').find((l) => l.includes(`│ ${task} `)) ?? '';
    expect(row('llama-ft-nightly')).toMatch(/admitted\s+│ Succeeded/);
    expect(row('support-agent')).toMatch(/admitted\s+│ Succeeded/);
    expect(row('chat-inference')).toMatch(/admitted\s+│ Succeeded/);
    expect(row('globex-finetune')).toMatch(/rejected\s+│ Rejected\s+│ BUDGET_EXCEEDED/);
    expect(row('too-big-pretrain')).toMatch(/rejected\s+│ Rejected\s+│ CAP_MAX_GPU_HOURS/);
    expect(r.stdout).toMatch(/bad-intent\.yaml: invalid intent, not submitted \(name: .*attribution\.team: required/);
    expect(r.stdout).toMatch(/Showback by team/);
    // 8 H100s for 1.5 h at $4: the nightly fine-tune's $48 shows on acme/search.
    expect(r.stdout.split('\n').find((l) => /│ acme\s+│ search /.test(l))).toMatch(/\$48\.00/);
  }, 300_000);
});
