import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import { settings } from '../config/settings';

export const TEMPORAL_CLI_VERSION = 'v1.5.1';

/** Where govloop keeps what it builds: outside the repository, reused across checkouts. */
export const cacheDir = () => {
  const env = settings();
  return env.GOVLOOP_CACHE_DIR ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'govloop');
};

/** Whether `path` is a file this process may execute. */
export function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const p = join(dir, name);
    if (dir && executable(p)) return p;
  }
  return undefined;
}

export type CliSource = 'env' | 'path' | 'cache' | 'go-install' | 'sdk-download';

/**
 * Finds the `temporal` CLI in the order of the design: $TEMPORAL_CLI, `temporal` on PATH, the
 * cached build, a fresh `go install` of v1.5.1 when Go is present. Returns undefined when none of
 * those is possible: the caller then lets the SDK download the dev server (machines with internet).
 */
export function findTemporalCli(opts: { build?: boolean; onProgress?: (msg: string) => void } = {}): { path: string; source: CliSource } | undefined {
  const fromEnv = settings().TEMPORAL_CLI;
  if (fromEnv) {
    if (!executable(fromEnv)) throw new Error(`TEMPORAL_CLI=${fromEnv} is not an executable file`);
    return { path: fromEnv, source: 'env' };
  }
  const found = onPath('temporal');
  if (found) return { path: found, source: 'path' };
  const binDir = join(cacheDir(), 'bin');
  const cached = join(binDir, 'temporal');
  if (executable(cached)) return { path: cached, source: 'cache' };
  if (opts.build === false) return undefined;
  const go = onPath('go') ?? (existsSync('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : undefined);
  if (!go) return undefined;
  mkdirSync(binDir, { recursive: true });
  opts.onProgress?.(`building the temporal CLI ${TEMPORAL_CLI_VERSION} with go install (once; cached in ${binDir}) ...`);
  const r = spawnSync(go, ['install', `github.com/temporalio/cli/cmd/temporal@${TEMPORAL_CLI_VERSION}`], {
    env: { ...process.env, GOBIN: binDir },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0 || !executable(cached)) throw new Error(`go install of the temporal CLI failed (exit ${r.status})`);
  return { path: cached, source: 'go-install' };
}
