/**
 * Starts a real ory hydra (v2.3.0, OAuth2/OIDC provider) on 127.0.0.1 and free ports, for tests:
 * `hydra serve all --dev` with an in-memory SQLite database, JWT access tokens and the
 * client_credentials grant. Each instance is its own issuer with its own signing keys.
 *
 * Binary: `$HYDRA`, else `hydra` on PATH, else ~/.cache/govloop/bin/hydra
 * (test/security/build-hydra.sh builds it from Go modules). `hydraBinary()` finds it;
 * `hydraSkipReason()` says what is missing when it is not there.
 *
 * Configuration is by environment variables (hydra maps `a.b.c` config keys to `A_B_C`):
 *   DSN=memory                   in-memory SQLite, migrated on start (needs the `sqlite` build tag)
 *   SECRETS_SYSTEM=<random hex>  required: without it hydra cannot create clients or signing keys
 *   STRATEGIES_ACCESS_TOKEN=jwt  access tokens are JWTs signed with the `hydra.jwt.access-token` key
 *   URLS_SELF_ISSUER=http://127.0.0.1:<public port>[/]   the `iss` of tokens, kept as given
 *   SERVE_PUBLIC_HOST/PORT, SERVE_ADMIN_HOST/PORT         127.0.0.1 and free ports
 *   TTL_ACCESS_TOKEN=<duration>  optional, e.g. 1s
 *   LOG_LEVEL=warn
 * and flags `--dev` (allows the http issuer) and `--sqa-opt-out` (no telemetry calls).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

export const HYDRA_VERSION = 'v2.3.0';

function executable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && executable(join(dir, name))) return join(dir, name);
  }
  return null;
}

/** The hydra binary: `$HYDRA`, else `hydra` on PATH, else ~/.cache/govloop/bin/hydra; null when none is there. */
export function hydraBinary(): string | null {
  return [process.env.HYDRA, onPath('hydra'), join(homedir(), '.cache/govloop/bin/hydra')].find((p): p is string => !!p && executable(p)) ?? null;
}

/** Why tests against hydra cannot run here, or null when they can. */
export function hydraSkipReason(): string | null {
  return hydraBinary()
    ? null
    : `no ory hydra binary: set $HYDRA, put hydra on PATH, or run \`bash test/security/build-hydra.sh\` (builds hydra ${HYDRA_VERSION} from Go modules into ~/.cache/govloop/bin/hydra; needs Go and gcc)`;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export interface HydraOptions {
  /** Access-token lifetime, a Go duration (`1s`, `1h`); hydra's default is 1h. */
  accessTokenTtl?: string;
  /** Configure the issuer URL with a trailing slash (`http://127.0.0.1:port/`); hydra then puts that form in `iss`. */
  issuerTrailingSlash?: boolean;
  /** Path to the binary; default hydraBinary(). */
  bin?: string;
  /** How long to wait for /health/ready; default 30 s. */
  timeoutMs?: number;
}

export interface Hydra {
  /** The issuer URL exactly as hydra puts it in `iss` and its discovery document. */
  issuer: string;
  /** The public API (token endpoint, discovery, JWKS), without a trailing slash. */
  publicUrl: string;
  /** The admin API (clients), without a trailing slash. */
  adminUrl: string;
  jwksUri: string;
  /** Registers a confidential client for the client_credentials grant, allowed to ask for `audience`. */
  createClient(id: string, opts: { audience: string[] }): Promise<{ clientId: string; clientSecret: string }>;
  /** A client_credentials access token (a JWT) for `audience`. */
  token(clientId: string, clientSecret: string, audience: string[]): Promise<string>;
  /** The last lines hydra wrote (stdout and stderr). */
  output(): string;
  stop(): Promise<void>;
}

async function ready(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}

async function startOnce(bin: string, opts: HydraOptions): Promise<Hydra | { retry: string }> {
  const [publicPort, adminPort] = [await freePort(), await freePort()];
  const publicUrl = `http://127.0.0.1:${publicPort}`;
  const adminUrl = `http://127.0.0.1:${adminPort}`;
  const issuer = opts.issuerTrailingSlash ? `${publicUrl}/` : publicUrl;
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TMPDIR: process.env.TMPDIR,
    DSN: 'memory',
    SECRETS_SYSTEM: randomBytes(16).toString('hex'),
    STRATEGIES_ACCESS_TOKEN: 'jwt',
    URLS_SELF_ISSUER: issuer,
    SERVE_PUBLIC_HOST: '127.0.0.1',
    SERVE_PUBLIC_PORT: String(publicPort),
    SERVE_ADMIN_HOST: '127.0.0.1',
    SERVE_ADMIN_PORT: String(adminPort),
    LOG_LEVEL: 'warn',
    ...(opts.accessTokenTtl ? { TTL_ACCESS_TOKEN: opts.accessTokenTtl } : {}),
  };
  const child: ChildProcess = spawn(bin, ['serve', 'all', '--dev', '--sqa-opt-out'], { cwd: tmpdir(), env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: string[] = [];
  const keep = (b: Buffer) => {
    logs.push(b.toString());
    if (logs.length > 200) logs.shift();
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let spawnError: Error | undefined;
  child.once('error', (e) => (spawnError = e));
  const output = () => logs.join('').slice(-8000);
  const exited = () => child.exitCode !== null || child.signalCode !== null;

  const stop = async () => {
    if (exited()) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
    if (!exited()) {
      child.kill('SIGKILL');
      await gone;
    }
  };

  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (;;) {
    if (spawnError) throw new Error(`cannot start ${bin}: ${spawnError.message}`);
    if (exited()) {
      const out = output();
      if (/address already in use/i.test(out)) return { retry: out };
      throw new Error(`hydra exited (code ${child.exitCode}, signal ${child.signalCode}) before it was ready:\n${out}`);
    }
    if ((await ready(`${adminUrl}/health/ready`)) && (await ready(`${publicUrl}/health/ready`))) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`hydra not ready on ${adminUrl} and ${publicUrl} after ${opts.timeoutMs ?? 30_000} ms:\n${output()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  const call = async (url: string, init: RequestInit, what: string): Promise<unknown> => {
    const res = await fetch(url, { ...init, signal: AbortSignal.timeout(15_000) });
    const text = await res.text();
    if (!res.ok) throw new Error(`hydra ${what}: HTTP ${res.status} ${text}\n--- hydra output ---\n${output()}`);
    return JSON.parse(text) as unknown;
  };

  // hydra creates its signing keys (RSA, ~1 s each) on first use; fetching the key set creates both
  // (access-token and ID-token keys) now, so tests do not pay for it.
  const jwksUri = `${publicUrl}/.well-known/jwks.json`;
  try {
    const jwks = (await call(jwksUri, {}, 'key set')) as { keys?: unknown[] };
    if (!jwks.keys?.length) throw new Error(`hydra published no signing keys at ${jwksUri}:\n${output()}`);
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    issuer,
    publicUrl,
    adminUrl,
    jwksUri,
    async createClient(id, { audience }) {
      const clientSecret = randomBytes(24).toString('hex');
      const body = {
        client_id: id,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        audience,
        token_endpoint_auth_method: 'client_secret_basic',
        access_token_strategy: 'jwt',
      };
      const created = (await call(
        `${adminUrl}/admin/clients`,
        { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) },
        `create client ${id}`,
      )) as { client_id: string };
      return { clientId: created.client_id, clientSecret };
    },
    async token(clientId, clientSecret, audience) {
      // RFC 6749 §2.3.1: id and secret are form-urlencoded before the Basic encoding.
      const basic = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64');
      const form = new URLSearchParams({ grant_type: 'client_credentials' });
      if (audience.length) form.set('audience', audience.join(' '));
      const res = (await call(
        `${publicUrl}/oauth2/token`,
        { method: 'POST', headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() },
        `token for ${clientId}`,
      )) as { access_token?: string };
      if (!res.access_token) throw new Error(`hydra token for ${clientId}: no access_token in ${JSON.stringify(res)}`);
      return res.access_token;
    },
    output,
    stop,
  };
}

/** Starts hydra and waits until its admin and public APIs answer /health/ready. */
export async function startHydra(opts: HydraOptions = {}): Promise<Hydra> {
  const bin = opts.bin ?? hydraBinary();
  if (!bin) throw new Error(hydraSkipReason() ?? 'no hydra binary');
  // A port picked free can be taken before hydra binds it: try again with new ports.
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const h = await startOnce(bin, opts);
    if (!('retry' in h)) return h;
    last = h.retry;
  }
  throw new Error(`hydra could not bind its ports after 3 tries:\n${last}`);
}
