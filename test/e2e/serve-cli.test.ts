/**
 * `govloop keys` and `govloop serve` as separate processes, as an operator runs them, against the
 * real PostgreSQL of the test run: a key made by the CLI is accepted by the server over real HTTP.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { govloop, govloopBin, repoRoot } from '../support/cli';

let dir: string;
let env: Record<string, string>;
let server: ChildProcess | undefined;
let base: string;
const tenant = `t-${randomUUID().slice(0, 8)}`;
const METRICS_TOKEN = `m-${randomUUID()}`;

/** Starts `govloop serve --port 0` and resolves with the address it prints. */
function serve(): Promise<string> {
  return new Promise((resolve, reject) => {
    server = spawn(process.execPath, [govloopBin, 'serve', '--port', '0', '--max-age-hours', '24'], {
      cwd: repoRoot,
      env: { ...process.env, ...env, GOVLOOP_METRICS_TOKEN: METRICS_TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`govloop serve did not start in 60 s:\n${out}\n${err}`)), 60_000);
    server.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    server.stderr!.on('data', (d) => (err += d));
    server.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`govloop serve exited ${code}:\n${out}\n${err}`));
    });
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'govloop-serve-'));
  env = { DATABASE_URL: inject('databaseUrl'), GOVLOOP_DATA_DIR: join(dir, 'state') };
  base = await serve();
});

afterAll(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server!.once('exit', r));
    server.kill('SIGTERM');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

const usageEvent = (id: string, t: string) => ({
  id,
  time: new Date(Date.now() - 60_000).toISOString(),
  attribution: { tenant: t, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' },
  meter: 'tokens_out',
  quantity: 2_500_000,
});

describe('govloop keys + govloop serve, as separate processes', () => {
  it('keys create --json prints a key once; serve accepts it over HTTP, counts a re-send once, and refuses it after keys revoke', async () => {
    const created = await govloop(['keys', 'create', '--tenant', tenant, '--as', 'ops', '--json'], env);
    expect(created.code, created.stderr).toBe(0);
    const { key, prefix } = created.json();
    expect(key).toMatch(/^glk_[A-Za-z0-9_-]{43}$/);
    expect(key.startsWith(prefix)).toBe(true);

    const send = (k: string, body: unknown) =>
      fetch(`${base}/v1/usage`, { method: 'POST', headers: { authorization: `Bearer ${k}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const first = await send(key, { events: [usageEvent('cli-1', tenant), usageEvent('cli-2', tenant)] });
    expect(first.status).toBe(200);
    expect(await first.json()).toEqual({ accepted: 2, duplicates: 0, rejected: [], unattributed: 0 });
    const again = await send(key, { events: [usageEvent('cli-1', tenant)] });
    expect(await again.json()).toEqual({ accepted: 0, duplicates: 1, rejected: [], unattributed: 0 });
    const foreign = await send(key, { events: [usageEvent('cli-3', 'someone-else')] });
    expect(foreign.status).toBe(403);

    // 5M llama-3-8b output tokens at $0.40/M.
    const report = await fetch(`${base}/v1/usage?by=model`, { headers: { authorization: `Bearer ${key}` } });
    expect(((await report.json()) as { rows: unknown[] }).rows).toEqual([
      { model: 'llama-3-8b', meter: 'tokens_out', quantity: 5_000_000, costMicros: 2_000_000, costUsd: 2, events: 2 },
    ]);
    // The same figure through the ledger CLI.
    const cli = await govloop(['usage', '--by', 'model', '--tenant', tenant, '--period', 'all', '--json'], env);
    expect(cli.json()).toEqual([expect.objectContaining({ model: 'llama-3-8b', costUsd: 2 })]);

    const metrics = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
    expect(await metrics.text()).toMatch(/^govloop_usage_events_total\{outcome="accepted"\} 2$/m);

    const list = await govloop(['keys', 'list', '--tenant', tenant, '--json'], env);
    expect(list.json()).toEqual([expect.objectContaining({ prefix, tenant, createdBy: 'ops (unverified)', subject: null, revokedAt: null })]);
    expect(list.stdout).not.toContain(key);

    const revoked = await govloop(['keys', 'revoke', '--tenant', tenant, '--prefix', prefix, '--as', 'ops'], env);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect((await send(key, { events: [usageEvent('cli-4', tenant)] })).status).toBe(401);
    const twice = await govloop(['keys', 'revoke', '--tenant', tenant, '--prefix', prefix], env);
    expect([twice.code, twice.stdout]).toEqual([0, expect.stringMatching(/already revoked/)]);

    const audit = await govloop(['audit', 'verify', '--json'], env);
    expect(audit.json()).toMatchObject({ ok: true });
  });

  it('bad options exit 2 naming the option', async () => {
    const r = await govloop(['keys', 'create', '--tenant', 'Not A Tenant', '--json'], env);
    expect(r.code).toBe(2);
    expect(r.json().errors).toEqual([expect.objectContaining({ path: 'tenant' })]);
    const p = await govloop(['keys', 'revoke', '--tenant', tenant, '--prefix', 'abc'], env);
    expect([p.code, p.stderr]).toEqual([2, expect.stringMatching(/--prefix: /)]);
    const s = await govloop(['serve', '--port', 'eighty'], env);
    expect([s.code, s.stderr]).toEqual([2, expect.stringMatching(/--port: must be a port number/)]);
    const unknown = await govloop(['keys', 'revoke', '--tenant', tenant, '--prefix', 'glk_00000000'], env);
    expect([unknown.code, unknown.stderr]).toEqual([1, expect.stringMatching(/no API key glk_00000000/)]);
  });
});
