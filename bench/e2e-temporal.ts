/**
 * bench/e2e.ts's choice of Temporal and of workers (issue 13):
 *   --temporal dev         the dev server (`temporal server start-dev`, SQLite), as `govloop dev` runs it;
 *   --temporal production  temporal-server v1.29.1 on PostgreSQL (runtime/temporal-server.ts);
 *   --workers N            N `govloop worker` processes on the same task queues, instead of the
 *                          workers in the bench's own process;
 *   --side-by-side         the bench three times, one after the other in this run — dev server with
 *                          1 worker process, production with 1, production with 2 — and the figures
 *                          next to each other.
 */
import { spawn } from 'node:child_process';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import type { GovConfig } from '../config/load';
import { defaultConfigDir } from '../config/load';
import { type DevServerTuning, startDevServer } from '../runtime/dev-server';
import { startTemporalServer, temporalServerSkipReason } from '../runtime/temporal-server';
import { type WorkerProcess, startWorkerProcess } from '../test/support/worker-process';
import { fmt, table } from './lib';

export type TemporalKind = 'dev' | 'production';

export interface BenchTemporal {
  address: string;
  namespace: string;
  /** In words, for the report. */
  describe: string;
  stop(): Promise<void>;
}

export async function startBenchTemporal(
  kind: TemporalKind,
  o: { dataDir: string; tuning: DevServerTuning; log: (m: string) => void },
): Promise<BenchTemporal> {
  if (kind === 'dev') {
    const s = await startDevServer({ dataDir: o.dataDir, headless: true, tuning: o.tuning, onProgress: o.log });
    return { address: s.address, namespace: s.namespace, describe: `Temporal dev server (${o.tuning}) ${s.address}`, stop: () => s.stop() };
  }
  const why = temporalServerSkipReason();
  if (why) throw new Error(`--temporal production: ${why}`);
  const s = await startTemporalServer({ dataDir: join(o.dataDir, 'temporal-server'), onProgress: o.log });
  return {
    address: s.address,
    namespace: s.namespace,
    describe: `temporal-server v1.29.1 on PostgreSQL (${s.databases.persistence}, ${s.databases.visibility}) ${s.address}`,
    stop: () => s.stop(),
  };
}

/**
 * Starts `n` `govloop worker` processes with the bench's simulation settings: a copy of config/
 * whose simulation.yaml carries them (GOVLOOP_CONFIG_DIR), and the workflow bundle the bench
 * built (GOVLOOP_WORKFLOW_BUNDLE), so no process bundles on its own.
 */
export async function startBenchWorkers(
  n: number,
  o: { dataDir: string; config: GovConfig; bundleCode: string; taskQueue: string; temporalAddress: string; namespace: string; databaseUrl: string },
): Promise<{ stop(): Promise<void> }> {
  const configDir = join(o.dataDir, 'config');
  cpSync(defaultConfigDir, configDir, { recursive: true });
  const simulation = parse(readFileSync(join(configDir, 'simulation.yaml'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(configDir, 'simulation.yaml'), stringify({ ...simulation, ...o.config.simulation }));
  const bundlePath = join(o.dataDir, 'workflow-bundle.js');
  writeFileSync(bundlePath, o.bundleCode);
  const workers: WorkerProcess[] = [];
  const stop = async () => {
    await Promise.all(workers.map((w) => w.stop()));
  };
  try {
    for (let i = 0; i < n; i++) {
      workers.push(
        startWorkerProcess({
          taskQueue: o.taskQueue,
          cluster: o.config.cluster.name,
          temporalAddress: o.temporalAddress,
          databaseUrl: o.databaseUrl,
          speedup: o.config.simulation.speedup,
          env: { TEMPORAL_NAMESPACE: o.namespace, GOVLOOP_CONFIG_DIR: configDir, GOVLOOP_WORKFLOW_BUNDLE: bundlePath },
        }),
      );
    }
    await Promise.all(workers.map((w) => w.ready));
  } catch (err) {
    await stop();
    throw err;
  }
  return { stop };
}

/** The flags --side-by-side passes on to each run, less its own. */
function passOn(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--side-by-side' || a === '--json') continue;
    if (a === '--temporal' || a === '--workers') {
      i++;
      continue;
    }
    out.push(a);
  }
  return out;
}

/** Runs bench/e2e.ts as a child for each configuration, one after the other, and prints them side by side. */
export async function sideBySide(script: string, argv: string[], json: boolean): Promise<void> {
  const runs: { name: string; args: string[] }[] = [
    { name: 'dev server, 1 worker process', args: ['--temporal', 'dev', '--workers', '1'] },
    { name: 'temporal-server on PostgreSQL, 1 worker process', args: ['--temporal', 'production', '--workers', '1'] },
    { name: 'temporal-server on PostgreSQL, 2 worker processes', args: ['--temporal', 'production', '--workers', '2'] },
  ];
  const reports: { name: string; report: any; error?: string }[] = [];
  for (const r of runs) {
    if (!json) console.log(`== ${r.name} ...`);
    const child = spawn(process.execPath, ['--import', 'tsx', script, ...passOn(argv), ...r.args, '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += String(d)));
    const code = await new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? 1)));
    const line = out.trim().split('\n').pop() ?? '';
    try {
      reports.push({ name: r.name, report: JSON.parse(line), ...(code !== 0 ? { error: `exit ${code}` } : {}) });
    } catch {
      reports.push({ name: r.name, report: null, error: `exit ${code}, no report` });
    }
  }
  if (json) {
    console.log(JSON.stringify({ benchmark: 'e2e-side-by-side', runs: reports }));
    return;
  }
  const col = (f: (rep: any) => string) => reports.map((r) => (r.report ? f(r.report) : (r.error ?? '-')));
  const rows: [string, (rep: any) => string][] = [
    ['agent tasks per second', (x) => String(x.agents.tasksPerSecond)],
    ['agent tasks done / failed', (x) => `${x.agents.completed} / ${x.agents.failed}`],
    ['step-gate round trip p50 / p99 ms', (x) => `${fmt(x.stepGate.roundTripMs.p50)} / ${fmt(x.stepGate.roundTripMs.p99)}`],
    ['start → admission p50 ms', (x) => fmt(x.agents.admissionMs.p50)],
    ['training jobs per second', (x) => String(x.cluster.tasksPerSecond)],
    ['training jobs done / failed', (x) => `${x.cluster.completed} / ${x.cluster.failed}`],
    ['training job p50 ms', (x) => fmt(x.cluster.taskMs.p50)],
    ['server start ms', (x) => String(x.setupMs.temporalStartMs)],
    ['load average at start', (x) => (x.machine.loadAverage as number[]).join(' / ')],
  ];
  console.log(
    table(
      ['', ...reports.map((r) => r.name)],
      rows.map(([name, f]) => [name, ...col(f)]),
    ),
  );
  if (reports.some((r) => r.error || r.report?.failures?.length)) process.exitCode = 1;
}
