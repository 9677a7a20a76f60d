import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import { searchAttributeTypes } from '../workflows/search-attributes';
import { findTemporalCli } from './temporal-cli';

export interface DevServer {
  address: string;
  uiUrl: string | null;
  namespace: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * The dev server's SQLite and dynamic-config settings (decision 0028). `tuned`: WAL journal,
 * `synchronous=NORMAL` (a commit is one WAL append, no fsync per commit: an OS crash or power
 * loss can lose the last commits, a process crash cannot), a busy timeout instead of an
 * immediate SQLITE_BUSY, and eager activity execution (a workflow task that schedules an activity
 * gets it back in its completion's response, one round trip less). `default`: the CLI's own
 * (DELETE journal, FULL sync), for side-by-side benchmarks.
 */
export type DevServerTuning = 'tuned' | 'default';
export function devServerTuningArgs(tuning: DevServerTuning): string[] {
  if (tuning === 'default') return [];
  return [
    '--sqlite-pragma',
    'journal_mode=WAL',
    '--sqlite-pragma',
    'synchronous=NORMAL',
    '--sqlite-pragma',
    'busy_timeout=10000',
    '--dynamic-config-value',
    'system.enableActivityEagerExecution=true',
  ];
}

/**
 * Starts the Temporal dev server (the `temporal` CLI): state in a SQLite file under `dataDir`,
 * govloop's search attributes registered, UI on `uiPort` unless headless, tuned as
 * `devServerTuningArgs` says (default `tuned`). Resolves once the server answers on its frontend port.
 */
export async function startDevServer(opts: {
  dataDir: string;
  port?: number;
  uiPort?: number;
  headless?: boolean;
  namespace?: string;
  tuning?: DevServerTuning;
  onProgress?: (msg: string) => void;
}): Promise<DevServer> {
  const cli = findTemporalCli({ onProgress: opts.onProgress });
  if (!cli) {
    throw new Error('no temporal CLI: set TEMPORAL_CLI, put `temporal` on PATH, or install Go so govloop can build it');
  }
  mkdirSync(opts.dataDir, { recursive: true });
  const uiPort = opts.uiPort ?? 8233;
  const namespace = opts.namespace ?? 'default';
  const logPath = join(opts.dataDir, 'temporal.log');
  // Ports are picked free and then bound by the server a moment later; another process can take
  // one in between. A start that fails on a taken port is tried again with new ones (ports the
  // caller chose are never changed); any other failure throws with the server's last log lines.
  for (let attempt = 1; ; attempt++) {
    const port = opts.port ?? (await freePort());
    const args = [
      'server',
      'start-dev',
      '--db-filename',
      join(opts.dataDir, 'temporal.db'),
      '--ip',
      '127.0.0.1',
      '--port',
      String(port),
      '--namespace',
      namespace,
      '--log-level',
      'error',
      // Dev-server metrics bind a fixed port by default; a random one lets several servers coexist.
      '--metrics-port',
      String(await freePort()),
      '--http-port',
      String(await freePort()),
      ...(opts.headless ? ['--headless'] : ['--ui-port', String(uiPort)]),
      ...Object.entries(searchAttributeTypes).flatMap(([k, t]) => ['--search-attribute', `${k}=${t}`]),
      ...devServerTuningArgs(opts.tuning ?? 'tuned'),
    ];
    const logFrom = existsSync(logPath) ? statSync(logPath).size : 0;
    const logFd = openSync(logPath, 'a');
    const child: ChildProcess = spawn(cli.path, args, { stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    let exited: number | null = null;
    child.on('exit', (code) => (exited = code ?? -1));
    const address = `127.0.0.1:${port}`;
    const deadline = Date.now() + 60_000;
    let up = false;
    while (!up) {
      if (exited !== null) {
        const log = readFileSync(logPath).subarray(logFrom).toString('utf8');
        const tail = log.trim().split('\n').slice(-12).join('\n');
        if (/address already in use/i.test(log) && opts.port === undefined && attempt < 3) break;
        throw new Error(`temporal dev server exited with ${exited}; its log (${logPath}) ends:\n${tail}`);
      }
      // A probe that fails closes its connection too: a channel left open keeps reconnecting.
      const conn = Connection.lazy({ address, connectTimeout: 1000 });
      try {
        await conn.ensureConnected();
        await conn.withDeadline(Date.now() + 5000, () => conn.workflowService.describeNamespace({ namespace }));
        up = true;
      } catch (err) {
        if (Date.now() > deadline) {
          child.kill('SIGKILL');
          throw new Error(`temporal dev server did not answer on ${address} within 60s: ${(err as Error).message}`);
        }
        await new Promise((r) => setTimeout(r, 250));
      } finally {
        await conn.close();
      }
    }
    if (up) return devServer(child, () => exited, address, opts.headless ? null : `http://127.0.0.1:${uiPort}`, namespace);
    opts.onProgress?.(`temporal dev server: a port was taken before it could bind it; starting it again (attempt ${attempt + 1})`);
  }
}

function devServer(child: ChildProcess, exited: () => number | null, address: string, uiUrl: string | null, namespace: string): DevServer {
  return {
    address,
    uiUrl,
    namespace,
    async stop() {
      if (exited() !== null) return;
      const done = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await done;
      clearTimeout(timer);
    },
  };
}
