import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { stringify } from 'yaml';
import { createDatabase } from '../ledger/scratch';
import { searchAttributeTypes } from '../workflows/search-attributes';
import { freePort } from './dev-server';
import { cacheDir, executable } from './temporal-cli';
import { settings } from '../config/settings';

/**
 * A production-shaped Temporal (issue 13, decision 0029): the real `temporal-server` v1.29.1 (the
 * module the CLI's dev server embeds) with its four services in one process — frontend, history,
 * matching, worker — on PostgreSQL for persistence and visibility (the `postgres12` SQL plugin),
 * schema laid by `temporal-sql-tool` from the schema files of the same module. Unlike the dev
 * server it keeps nothing in SQLite, creates no namespace by itself and knows no search attribute
 * until an operator adds them: `startTemporalServer` does both, as a deployment's setup job would.
 *
 * Binaries: $TEMPORAL_SERVER / $TEMPORAL_SQL_TOOL, else ~/.cache/govloop/bin/temporal-server and
 * temporal-sql-tool; schema: $TEMPORAL_SCHEMA_DIR, else ~/.cache/govloop/temporal-schema-v1.29.1.
 * `bash test/temporal/build-temporal-server.sh` builds and copies all three from Go modules.
 */
export const TEMPORAL_SERVER_VERSION = 'v1.29.1';

const run = promisify(execFile);

export interface TemporalServerBinaries {
  server: string;
  sqlTool: string;
  /** Holds temporal/ and visibility/ (each with versioned/), as in the module's schema/postgresql/v12. */
  schemaDir: string;
}

function binaries(): TemporalServerBinaries {
  const bin = join(cacheDir(), 'bin');
  const env = settings();
  return {
    server: env.TEMPORAL_SERVER ?? join(bin, 'temporal-server'),
    sqlTool: env.TEMPORAL_SQL_TOOL ?? join(bin, 'temporal-sql-tool'),
    schemaDir: env.TEMPORAL_SCHEMA_DIR ?? join(cacheDir(), `temporal-schema-${TEMPORAL_SERVER_VERSION}`),
  };
}

/** Why a production-shaped Temporal cannot be started here, or null when it can. */
export function temporalServerSkipReason(): string | null {
  const b = binaries();
  const missing = [
    executable(b.server) ? null : `temporal-server (${b.server})`,
    executable(b.sqlTool) ? null : `temporal-sql-tool (${b.sqlTool})`,
    existsSync(join(b.schemaDir, 'temporal', 'versioned')) && existsSync(join(b.schemaDir, 'visibility', 'versioned')) ? null : `schema (${b.schemaDir})`,
  ].filter((m): m is string => m !== null);
  if (missing.length === 0) return null;
  return `no ${missing.join(', ')}: run \`bash test/temporal/build-temporal-server.sh\` (builds temporal-server ${TEMPORAL_SERVER_VERSION} and temporal-sql-tool from Go modules into ~/.cache/govloop/bin; needs Go), or set $TEMPORAL_SERVER, $TEMPORAL_SQL_TOOL and $TEMPORAL_SCHEMA_DIR`;
}

/** The binaries and schema, or null where `temporalServerSkipReason()` says what is missing. */
export function temporalServerBinaries(): TemporalServerBinaries | null {
  return temporalServerSkipReason() ? null : binaries();
}

export interface TemporalServer {
  /** host:port of the frontend (gRPC). */
  address: string;
  namespace: string;
  /** The two databases, on the server of `databaseUrl`. */
  databases: { persistence: string; visibility: string };
  /** Where its config and log are. */
  dataDir: string;
  /** SIGTERM (SIGKILL after 10 s), then drops both databases. */
  stop(): Promise<void>;
}

export interface TemporalServerOptions {
  /** Config and log go here. */
  dataDir: string;
  /** Any URL on the PostgreSQL server to use (default: the local one, trust auth). */
  databaseUrl?: string;
  namespace?: string;
  /** History shards; fixed for the life of the databases. Default 4. */
  numHistoryShards?: number;
  /** Extra dynamic config, key → value (default: eager activities on, as the tuned dev server). */
  dynamicConfig?: Record<string, unknown>;
  onProgress?: (msg: string) => void;
}

/** Runs `temporal-sql-tool` setup-schema + update-schema for one database. */
async function layDownSchema(b: TemporalServerBinaries, url: URL, db: string, schema: 'temporal' | 'visibility'): Promise<void> {
  const conn = [
    '--plugin',
    'postgres12',
    '--ep',
    url.hostname,
    '-p',
    url.port || '5432',
    '-u',
    decodeURIComponent(url.username || 'postgres'),
    ...(url.password ? ['--pw', decodeURIComponent(url.password)] : []),
    '--db',
    db,
  ];
  for (const args of [
    ['setup-schema', '-v', '0.0'],
    ['update-schema', '-d', join(b.schemaDir, schema, 'versioned')],
  ]) {
    try {
      await run(b.sqlTool, [...conn, ...args], { maxBuffer: 16 << 20 });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; message: string };
      throw new Error(`temporal-sql-tool ${args[0]} on ${db} failed: ${e.message}\n${(e.stderr ?? '').slice(-2000)}${(e.stdout ?? '').slice(-2000)}`);
    }
  }
}

/**
 * A free port below 32768: the cluster_membership table keeps the ringpop port as a smallint, so
 * the kernel's ephemeral ports (32768 and up, what `freePort()` gets) cannot be membership ports.
 */
async function freeMembershipPort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (taken.has(port)) continue;
    const ok = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (ok) {
      taken.add(port);
      return port;
    }
  }
}

type ServiceName = 'frontend' | 'history' | 'matching' | 'worker';

/** The server's static config (temporal-server's config/<env>.yaml), all on 127.0.0.1. */
function serverConfig(o: {
  url: URL;
  persistence: string;
  visibility: string;
  shards: number;
  ports: Record<ServiceName, { grpc: number; membership: number }>;
  httpPort: number;
  dynamicConfigPath: string;
}) {
  const sql = (databaseName: string, maxConns: number) => ({
    sql: {
      pluginName: 'postgres12',
      databaseName,
      connectAddr: `${o.url.hostname}:${o.url.port || '5432'}`,
      connectProtocol: 'tcp',
      user: decodeURIComponent(o.url.username || 'postgres'),
      password: decodeURIComponent(o.url.password),
      maxConns,
      maxIdleConns: maxConns,
      maxConnLifetime: '1h',
    },
  });
  const service = (s: ServiceName) => ({
    rpc: { grpcPort: o.ports[s].grpc, membershipPort: o.ports[s].membership, bindOnIP: '127.0.0.1', ...(s === 'frontend' ? { httpPort: o.httpPort } : {}) },
  });
  return {
    log: { stdout: true, level: 'warn' },
    persistence: {
      defaultStore: 'postgres-default',
      visibilityStore: 'postgres-visibility',
      numHistoryShards: o.shards,
      datastores: { 'postgres-default': sql(o.persistence, 20), 'postgres-visibility': sql(o.visibility, 4) },
    },
    global: { membership: { maxJoinDuration: '30s', broadcastAddress: '127.0.0.1' } },
    services: { frontend: service('frontend'), history: service('history'), matching: service('matching'), worker: service('worker') },
    clusterMetadata: {
      enableGlobalNamespace: false,
      failoverVersionIncrement: 10,
      masterClusterName: 'active',
      currentClusterName: 'active',
      clusterInformation: { active: { enabled: true, initialFailoverVersion: 1, rpcName: 'frontend', rpcAddress: `127.0.0.1:${o.ports.frontend.grpc}` } },
    },
    dcRedirectionPolicy: { policy: 'noop' },
    archival: { history: { state: 'disabled' }, visibility: { state: 'disabled' } },
    namespaceDefaults: { archival: { history: { state: 'disabled' }, visibility: { state: 'disabled' } } },
    dynamicConfigClient: { filepath: o.dynamicConfigPath, pollInterval: '10s' },
  };
}

async function waitUntil<T>(what: string, deadline: number, isDead: () => string | null, fn: () => Promise<T>): Promise<T> {
  for (;;) {
    const dead = isDead();
    if (dead) throw new Error(dead);
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** temporal.api.enums.v1.IndexedValueType, by the names workflows/search-attributes.ts uses. */
const SA_TYPE: Record<string, number> = { Keyword: 2, Int: 3, Double: 4, Bool: 5 };

/**
 * Starts temporal-server on fresh databases (persistence + visibility, names with a unique
 * suffix), registers `namespace` and govloop's search attributes, and resolves once the frontend
 * answers and accepts a visibility query on every one of those attributes.
 */
export async function startTemporalServer(opts: TemporalServerOptions): Promise<TemporalServer> {
  const b = temporalServerBinaries();
  if (!b) throw new Error(temporalServerSkipReason()!);
  const log = opts.onProgress ?? (() => undefined);
  const namespace = opts.namespace ?? 'default';
  const adminUrl = new URL(opts.databaseUrl ?? settings().TEST_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres');
  const suffix = `${process.pid}_${randomUUID().slice(0, 8)}`;
  const dbs = { persistence: `temporal_${suffix}`, visibility: `temporal_visibility_${suffix}` };
  const drops: (() => Promise<void>)[] = [];
  const dropAll = async () => {
    for (const d of drops.splice(0)) await d();
  };
  let child: ChildProcess | undefined;
  let exited: string | null = null;
  try {
    log(`temporal-server: databases ${dbs.persistence}, ${dbs.visibility}; laying down the schema ...`);
    for (const [db, schema] of [
      [dbs.persistence, 'temporal'],
      [dbs.visibility, 'visibility'],
    ] as const) {
      const created = await createDatabase(adminUrl.toString(), db);
      drops.push(created.drop);
      await layDownSchema(b, adminUrl, db, schema);
    }
    mkdirSync(join(opts.dataDir, 'config'), { recursive: true });
    const ports = {} as Record<ServiceName, { grpc: number; membership: number }>;
    const taken = new Set<number>();
    for (const s of ['frontend', 'history', 'matching', 'worker'] as const) ports[s] = { grpc: await freePort(), membership: await freeMembershipPort(taken) };
    const dynamicConfigPath = join(opts.dataDir, 'dynamicconfig.yaml');
    const dynamic = { 'system.enableActivityEagerExecution': true, ...opts.dynamicConfig };
    writeFileSync(dynamicConfigPath, stringify(Object.fromEntries(Object.entries(dynamic).map(([k, v]) => [k, [{ value: v, constraints: {} }]]))));
    const config = serverConfig({
      url: adminUrl,
      ...dbs,
      shards: opts.numHistoryShards ?? 4,
      ports,
      httpPort: await freePort(),
      dynamicConfigPath,
    });
    writeFileSync(join(opts.dataDir, 'config', 'govloop.yaml'), stringify(config));
    const logPath = join(opts.dataDir, 'temporal-server.log');
    const logFd = openSync(logPath, 'a');
    child = spawn(b.server, ['--root', opts.dataDir, '--config', 'config', '--env', 'govloop', '--allow-no-auth', 'start'], {
      stdio: ['ignore', logFd, logFd],
    });
    child.on('exit', (code, signal) => (exited = signal ?? `exit ${code}`));
    const isDead = () => (exited ? `temporal-server ended (${exited}); see ${logPath}` : null);
    const address = `127.0.0.1:${ports.frontend.grpc}`;
    const deadline = Date.now() + 120_000;
    const connection = await waitUntil(`temporal-server did not answer on ${address} within 120 s`, deadline, isDead, async () => {
      const c = await Connection.connect({ address, connectTimeout: 1000 });
      try {
        await c.workflowService.getSystemInfo({});
        return c;
      } catch (err) {
        await c.close();
        throw err;
      }
    });
    try {
      log(`temporal-server: frontend ${address} up; registering namespace ${namespace} and search attributes ...`);
      await waitUntil(`namespace ${namespace} not registered`, deadline, isDead, async () => {
        try {
          await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs('1 day') });
        } catch (err) {
          if (!/already exists/i.test((err as Error).message)) throw err;
        }
        await connection.workflowService.describeNamespace({ namespace });
      });
      const wanted = Object.entries(searchAttributeTypes);
      await waitUntil('search attributes not registered', deadline, isDead, async () => {
        const have = (await connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
        const missing = wanted.filter(([k]) => !(k in have));
        if (missing.length === 0) return;
        await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: Object.fromEntries(missing.map(([k, t]) => [k, SA_TYPE[t]!])) });
        throw new Error(`added ${missing.map(([k]) => k).join(', ')}; checking`);
      });
      // The frontend validates through its namespace registry, refreshed every 2 s
      // (system.namespaceCacheRefreshInterval): wait until a query naming every attribute passes.
      const query = wanted.map(([k, t]) => `${k} = ${t === 'Keyword' ? "'x'" : t === 'Bool' ? 'true' : '1'}`).join(' AND ');
      await waitUntil('search attributes not queryable', deadline, isDead, () => connection.workflowService.countWorkflowExecutions({ namespace, query }));
    } finally {
      await connection.close();
    }
    const proc = child;
    return {
      address,
      namespace,
      databases: dbs,
      dataDir: opts.dataDir,
      async stop() {
        if (exited === null) {
          const done = new Promise<void>((r) => proc.once('exit', () => r()));
          proc.kill('SIGTERM');
          const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
          await done;
          clearTimeout(timer);
        }
        await dropAll();
      },
    };
  } catch (err) {
    if (child && exited === null) {
      const c = child;
      const done = new Promise<void>((r) => c.once('exit', () => r()));
      c.kill('SIGKILL');
      await done;
    }
    await dropAll().catch(() => undefined);
    throw err;
  }
}
