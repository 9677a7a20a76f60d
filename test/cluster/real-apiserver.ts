/**
 * Starts a real kube-apiserver (with its etcd) on 127.0.0.1 and random ports, for tests. No
 * controller-manager and no scheduler: Jobs are stored, validated, defaulted, authorized and
 * watched exactly as on a cluster, but nothing runs them (tests write `status` themselves, as the
 * Job controller would, and play the garbage collector).
 *
 * Binaries: `$KUBE_APISERVER`, else `kube-apiserver` on PATH, else ~/.cache/govloop/bin/kube-apiserver
 * (test/cluster/build-kube-apiserver.sh builds it from Go modules); `$ETCD`, else `etcd` on PATH
 * (Debian: `apt-get install etcd-server`). `findBinaries()` says which is missing.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { type AddressInfo, createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

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

export function findBinaries(): { kubeApiserver: string; etcd: string } | { missing: string } {
  const kas = [process.env.KUBE_APISERVER, onPath('kube-apiserver'), join(homedir(), '.cache/govloop/bin/kube-apiserver')].find(
    (p): p is string => !!p && executable(p),
  );
  const etcd = [process.env.ETCD, onPath('etcd')].find((p): p is string => !!p && executable(p));
  const missing = [
    kas ? null : 'kube-apiserver (set $KUBE_APISERVER, put it on PATH, or run test/cluster/build-kube-apiserver.sh)',
    etcd ? null : 'etcd (set $ETCD or `apt-get install etcd-server`)',
  ].filter(Boolean);
  return kas && etcd ? { kubeApiserver: kas, etcd } : { missing: missing.join('; ') };
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

function httpsStatus(url: string, token: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(url, { rejectUnauthorized: false, headers: { authorization: `Bearer ${token}` }, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

export interface RealApiServer {
  url: string;
  /** In group system:masters: may do anything. */
  adminToken: string;
  /** Authenticated, but granted nothing by RBAC. */
  nobodyToken: string;
  /**
   * Tokens of the ServiceAccounts `govloop/govloop-worker` and `govloop/govloop-trainer` (their
   * user names and groups, as the ServiceAccount authenticator would give them): RBAC grants them
   * what deploy/rbac.yaml grants, once a test applies it.
   */
  workerToken: string;
  trainerToken: string;
  stop(): Promise<void>;
}

export async function startRealApiServer(bins: { kubeApiserver: string; etcd: string }, timeoutMs = 60_000): Promise<RealApiServer> {
  const dir = mkdtempSync(join(tmpdir(), 'govloop-kas-'));
  const [etcdClient, etcdPeer, securePort] = [await freePort(), await freePort(), await freePort()];
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(join(dir, 'sa.key'), privateKey.export({ type: 'pkcs1', format: 'pem' }));
  const adminToken = 'govloop-admin-token';
  const nobodyToken = 'govloop-nobody-token';
  const workerToken = 'govloop-worker-token';
  const trainerToken = 'govloop-trainer-token';
  const sa = (name: string) => `system:serviceaccount:govloop:${name},${name}-uid,"system:serviceaccounts,system:serviceaccounts:govloop"`;
  writeFileSync(
    join(dir, 'tokens.csv'),
    `${adminToken},admin,admin-uid,system:masters\n${nobodyToken},nobody,nobody-uid\n${workerToken},${sa('govloop-worker')}\n${trainerToken},${sa('govloop-trainer')}\n`,
  );

  const children: ChildProcess[] = [];
  const logs: string[] = [];
  const start = (cmd: string, args: string[]) => {
    const c = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (b: Buffer) => {
      logs.push(b.toString());
      if (logs.length > 200) logs.shift();
    };
    c.stdout?.on('data', keep);
    c.stderr?.on('data', keep);
    children.push(c);
    return c;
  };
  const stop = async () => {
    for (const c of children.reverse()) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    start(bins.etcd, [
      '--data-dir',
      join(dir, 'etcd'),
      '--listen-client-urls',
      `http://127.0.0.1:${etcdClient}`,
      '--advertise-client-urls',
      `http://127.0.0.1:${etcdClient}`,
      '--listen-peer-urls',
      `http://127.0.0.1:${etcdPeer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${etcdPeer}`,
      '--initial-cluster',
      `default=http://127.0.0.1:${etcdPeer}`,
    ]);
    const kas = start(bins.kubeApiserver, [
      `--etcd-servers=http://127.0.0.1:${etcdClient}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${securePort}`,
      `--cert-dir=${join(dir, 'certs')}`,
      `--token-auth-file=${join(dir, 'tokens.csv')}`,
      '--authorization-mode=RBAC',
      `--service-account-key-file=${join(dir, 'sa.key')}`,
      `--service-account-signing-key-file=${join(dir, 'sa.key')}`,
      '--service-account-issuer=https://kubernetes.default.svc',
      '--service-cluster-ip-range=10.0.0.0/24',
      // Debian bookworm's etcd is 3.4; the watch cache of kube-apiserver 1.34 waits for progress
      // notifications 3.4 does not send ("Too large resource version"), so watches go to etcd.
      '--watch-cache=false',
    ]);
    const url = `https://127.0.0.1:${securePort}`;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (kas.exitCode !== null) throw new Error(`kube-apiserver exited with ${kas.exitCode}`);
      if ((await httpsStatus(`${url}/readyz`, adminToken)) === 200) break;
      if (Date.now() > deadline) throw new Error(`kube-apiserver not ready after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 250));
    }
    return { url, adminToken, nobodyToken, workerToken, trainerToken, stop };
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\n--- last output ---\n${logs.slice(-20).join('')}`);
  }
}
