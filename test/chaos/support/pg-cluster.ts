/**
 * A private PostgreSQL cluster for the chaos suite: initdb into a temp dir, its own port on
 * 127.0.0.1, trust auth, started and stopped with pg_ctl. Restarting it disturbs nobody else (the
 * main suite and other sessions use the machine's cluster on 5432). Plain functions over a plain
 * object, so the global setup builds it and the test files (test/chaos/support/postgres.ts) drive it.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from '../../../runtime/dev-server';

const run = promisify(execFile);

export interface PgCluster {
  /** The bin dir of the newest /usr/lib/postgresql/<version>. */
  bin: string;
  /** Temp dir of the cluster: data/, the server log, the unix socket. */
  root: string;
  dataDir: string;
  logFile: string;
  port: number;
  /** OS user the binaries run as: `postgres` when we are root (initdb and postgres refuse root), else null (ourselves). */
  runAs: string | null;
  /** The cluster's `postgres` database, superuser postgres, trust auth. */
  adminUrl: string;
}

/** The newest installed PostgreSQL's bin dir; throws, saying what to install, when there is none. */
export function findPostgresBin(base = '/usr/lib/postgresql'): string {
  const versions = existsSync(base)
    ? readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'initdb')) && existsSync(join(base, v, 'bin', 'pg_ctl')))
    : [];
  const newest = versions.sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))[0];
  if (newest === undefined) {
    throw new Error(
      `the chaos suite runs a private PostgreSQL cluster and needs initdb and pg_ctl under ${base}/<version>/bin, found none: install the server (apt-get install postgresql; .ci/run does), or skip the chaos suite with GOVLOOP_SKIP_CHAOS=1`,
    );
  }
  return join(base, newest, 'bin');
}

/** The command line that runs a PostgreSQL binary as the cluster's user. */
function pgArgv(c: Pick<PgCluster, 'bin' | 'runAs'>, tool: string, args: string[]): [string, ...string[]] {
  return c.runAs ? ['runuser', '-u', c.runAs, '--', join(c.bin, tool), ...args] : [join(c.bin, tool), ...args];
}

/** pg_ctl stop's arguments: `fast` ends every session (clients see 57P01) and writes a checkpoint; `immediate` is for teardown. */
const stopArgs = (c: Pick<PgCluster, 'dataDir'>, mode: 'fast' | 'immediate'): string[] => ['stop', '-D', c.dataDir, '-m', mode, '-w', '-t', '60'];

/** The whole pg_ctl stop command line (the test runner stops a cluster its run left behind with it). */
export const stopPgClusterArgv = (c: Pick<PgCluster, 'bin' | 'runAs' | 'dataDir'>, mode: 'fast' | 'immediate' = 'immediate'): string[] =>
  pgArgv(c, 'pg_ctl', stopArgs(c, mode));

/** Runs a PostgreSQL binary as the cluster's user; its output goes into the error when it fails. */
async function pgBin(c: Pick<PgCluster, 'bin' | 'runAs'>, tool: string, args: string[], timeoutMs = 120_000): Promise<void> {
  const [cmd, ...argv] = pgArgv(c, tool, args);
  try {
    await run(cmd, argv, { timeout: timeoutMs });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${tool} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

/** initdb + pg_ctl start: a running cluster, accepting connections. */
export async function createPgCluster(): Promise<PgCluster> {
  const bin = findPostgresBin();
  const runAs = process.getuid?.() === 0 ? 'postgres' : null;
  const root = mkdtempSync(join(tmpdir(), 'govloop-chaos-pg-'));
  const dataDir = join(root, 'data');
  const logFile = join(root, 'postgres.log');
  mkdirSync(dataDir, { mode: 0o700 });
  writeFileSync(logFile, '');
  if (runAs) {
    const uid = Number(execFileSync('id', ['-u', runAs], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', runAs], { encoding: 'utf8' }).trim());
    for (const p of [root, dataDir, logFile]) chownSync(p, uid, gid);
  }
  const port = await freePort();
  const c: PgCluster = { bin, root, dataDir, logFile, port, runAs, adminUrl: `postgresql://postgres@127.0.0.1:${port}/postgres` };
  try {
    await pgBin(c, 'initdb', ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions']);
    // In postgresql.conf, so pg_ctl restart keeps them. fsync off: the suite's restarts are clean
    // shutdowns (-m fast writes a checkpoint), and the machine is shared with other test runs.
    writeFileSync(
      join(dataDir, 'postgresql.auto.conf'),
      [`listen_addresses = '127.0.0.1'`, `port = ${port}`, `unix_socket_directories = '${root}'`, 'fsync = off', 'max_connections = 200', ''].join('\n'),
      { flag: 'a' },
    );
    await startPgCluster(c);
    return c;
  } catch (err) {
    await removePgCluster(c);
    throw err;
  }
}

/** Resolves once a new connection to the cluster succeeds (pg_ctl -w checks the same, through libpq's ping). */
export async function waitForPgCluster(c: Pick<PgCluster, 'adminUrl'>, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const client = new pg.Client({ connectionString: c.adminUrl, connectionTimeoutMillis: 2000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
      return;
    } catch (err) {
      if (Date.now() > end) throw new Error(`PostgreSQL at ${c.adminUrl} did not accept connections in ${timeoutMs / 1000} s: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}

export async function startPgCluster(c: PgCluster): Promise<void> {
  await pgBin(c, 'pg_ctl', ['start', '-D', c.dataDir, '-l', c.logFile, '-w', '-t', '60']);
  await waitForPgCluster(c);
}

/** pg_ctl stop (see stopArgs for the modes). */
export async function stopPgCluster(c: PgCluster, mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
  await pgBin(c, 'pg_ctl', stopArgs(c, mode));
}

/** Stops the cluster if it runs, and deletes its files. */
export async function removePgCluster(c: PgCluster): Promise<void> {
  if (existsSync(join(c.dataDir, 'postmaster.pid'))) await stopPgCluster(c, 'immediate').catch(() => undefined);
  rmSync(c.root, { recursive: true, force: true });
}
