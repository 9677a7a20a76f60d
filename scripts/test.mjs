#!/usr/bin/env node
// The test command: type-check, lint, run every vitest file against the real Temporal dev server and
// PostgreSQL, then print one closing line "N passed, N failed[, N skipped]" that CI reads.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import pg from 'pg';

const run = (cmd, args) => spawnSync(cmd, args, { stdio: 'inherit' }).status ?? 1;
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';

// Types, lint rules, then the formatter's check (prettier: `npm run format` rewrites).
if (
  run(npx, ['tsc', '-p', '.']) !== 0 ||
  run(npx, ['eslint', '.']) !== 0 ||
  run(npx, ['prettier', '--check', '--log-level', 'warn', '**/*.{ts,js,mjs}']) !== 0
) {
  console.log('0 passed, 1 failed');
  process.exit(1);
}
mkdirSync('test/artifacts', { recursive: true });

/**
 * The watchdog. A vitest run whose progress log (test/support/progress-reporter.ts) has had no
 * event (no test started, no file ended) for this long has stalled: every test has a timeout far
 * below it (main suite 2 min a test, 3 min a hook; chaos 15 and 5), so only the runner itself can
 * be stuck. A CI run once sat silent in the main suite's last file until CI's 90 minutes ran out,
 * with nothing to tell where. GOVLOOP_TEST_STALL_MINUTES overrides both.
 */
const STALL_MS = { main: 12 * 60_000, chaos: 25 * 60_000 };
/** After its last file has ended, a run must exit (global teardown) within this. */
const EXIT_GRACE_MS = 3 * 60_000;
const stallMs = (name) => (process.env.GOVLOOP_TEST_STALL_MINUTES ? Number(process.env.GOVLOOP_TEST_STALL_MINUTES) * 60_000 : STALL_MS[name]);

const readEvents = (path) =>
  existsSync(path)
    ? readFileSync(path, 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .flatMap((l) => {
          try {
            return [JSON.parse(l)];
          } catch {
            return []; // a line being written as we read
          }
        })
    : [];

const firstLine = (text) =>
  (
    String(text ?? '')
      .split('\n')
      .find((l) => l.trim() !== '') ?? '(no message)'
  ).slice(0, 300);

/**
 * Removes what a run's global setup made and its teardown did not remove: the run was ended by the
 * watchdog, or crashed (test/support/scratch-record.ts). Says what it removed.
 */
async function cleanScratch(file) {
  if (!existsSync(file)) return;
  let r;
  try {
    r = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return; // written as the run was killed: nothing readable
  }
  const done = [];
  for (const argv of r.commands ?? []) {
    const res = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 90_000 });
    done.push(`ran ${argv.join(' ')} (exit ${res.status ?? res.signal})`);
  }
  for (const d of r.databases ?? []) {
    const c = new pg.Client({ connectionString: d.adminUrl });
    try {
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS "${d.name.replace(/"/g, '""')}" WITH (FORCE)`);
      done.push(`dropped database ${d.name}`);
    } catch (err) {
      done.push(`could not drop database ${d.name}: ${firstLine(err?.message)}`);
    } finally {
      await c.end().catch(() => undefined);
    }
  }
  for (const dir of r.dirs ?? []) {
    rmSync(dir, { recursive: true, force: true });
    done.push(`removed ${dir}`);
  }
  rmSync(file, { force: true });
  console.log(`== the run's global teardown did not run; cleaned what its setup left:\n   ${done.join('\n   ')}`);
}

/**
 * One vitest run, in its own process group so that a stalled one can be ended with everything it
 * started. Resolves with its exit code, or with `stall` (what it had not finished) when the
 * watchdog ended it.
 */
function vitest(name, label, args) {
  const report = `test/artifacts/vitest-${label}.json`;
  const progress = `test/artifacts/progress-${label}.jsonl`;
  const scratch = `test/artifacts/scratch-${label}.json`;
  rmSync(report, { force: true });
  rmSync(progress, { force: true });
  rmSync(scratch, { force: true });
  const started = Date.now();
  const child = spawn(
    npx,
    ['vitest', 'run', ...args, '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, '--reporter=./test/support/progress-reporter.ts'],
    { stdio: 'inherit', detached: true, env: { ...process.env, GOVLOOP_TEST_PROGRESS: progress, GOVLOOP_TEST_SCRATCH: scratch } },
  );
  let stall = null;
  const kill = (signal) => {
    try {
      process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  const watchdog = setInterval(() => {
    const events = readEvents(progress);
    const files = events.find((e) => e.e === 'run')?.files ?? [];
    const ended = new Set(events.filter((e) => e.e === 'end').map((e) => e.file));
    const idle = Date.now() - Math.max(started, ...events.map((e) => e.t));
    const allEnded = files.length > 0 && files.every((f) => ended.has(f));
    if (stall || !(idle > stallMs(name) || (allEnded && idle > EXIT_GRACE_MS))) return;
    const begun = new Set(events.filter((e) => e.e === 'queued' || e.e === 'start').map((e) => e.file));
    const running = files.filter((f) => begun.has(f) && !ended.has(f));
    const lastTest = new Map(events.filter((e) => e.e === 'test').map((e) => [e.file, e.name]));
    stall = { events, files, unfinished: files.filter((f) => !ended.has(f)), allEnded, idleS: Math.round(idle / 1000) };
    console.log(`\n== WATCHDOG (${label}): no progress for ${stall.idleS} s`);
    if (allEnded) console.log('   every file has ended, but vitest did not exit (its global teardown is stuck)');
    for (const f of running) console.log(`   unfinished: ${f}${lastTest.has(f) ? ` (last test started: ${lastTest.get(f)})` : ' (no test started)'}`);
    const notStarted = stall.unfinished.filter((f) => !begun.has(f));
    if (notStarted.length) console.log(`   never started: ${notStarted.join(', ')}`);
    console.log('   its processes:');
    console.log(spawnSync('ps', ['-o', 'pid,ppid,etimes,pcpu,rss,stat,args', '-g', String(child.pid)], { encoding: 'utf8' }).stdout ?? '');
    kill('SIGTERM');
    setTimeout(() => kill('SIGKILL'), 10_000).unref();
  }, 15_000);
  return new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      clearInterval(watchdog);
      kill('SIGKILL'); // whatever it left behind in its group
      void cleanScratch(scratch).finally(() => resolve({ code: code ?? (signal ? 1 : 0), stall, report }));
    });
  });
}

/** The counts and failures of a run that exited by itself, from its JSON report. */
function fromReport(name, r, failures) {
  if (!existsSync(r.report)) return { code: r.code || 1, passed: 0, failed: 1, skipped: 0, total: 0 };
  const j = JSON.parse(readFileSync(r.report, 'utf8'));
  // CI shows only the output's tail: name each failure (and its first message line) at the end.
  for (const file of j.testResults ?? []) {
    const failed = (file.assertionResults ?? []).filter((t) => t.status === 'failed');
    if (failed.length === 0 && file.status === 'failed') failures.push(`${name}: ${file.name}: ${firstLine(file.message)}`);
    for (const t of failed) failures.push(`${name}: ${file.name} > ${t.fullName}: ${firstLine(t.failureMessages?.[0])}`);
  }
  return {
    code: r.code,
    passed: j.numPassedTests,
    failed: j.numFailedTests,
    skipped: (j.numPendingTests ?? 0) + (j.numTodoTests ?? 0),
    total: j.numTotalTests,
  };
}

/** The counts and failures of the files a stalled run did finish, from its progress log. */
function fromProgress(name, stall, failures) {
  const out = { code: 0, passed: 0, failed: 0, skipped: 0, total: 0 };
  for (const e of stall.events.filter((x) => x.e === 'end')) {
    out.passed += e.passed;
    out.failed += e.failed;
    out.skipped += e.skipped;
    for (const f of e.failures) failures.push(`${name}: ${e.file} > ${f.name}: ${firstLine(f.message)}`);
  }
  out.total = out.passed + out.failed + out.skipped;
  if (out.failed) out.code = 1;
  return out;
}

const failures = [];
const notes = [];
/**
 * Runs one vitest configuration. When the watchdog ends a stalled run, the files it had not
 * finished are run once more in a new vitest process (said loudly, here and in the closing lines);
 * a second stall fails the suite, naming what it left unfinished.
 */
async function suite(name, configArgs) {
  const first = await vitest(name, name, [...configArgs, ...process.argv.slice(2)]);
  if (!first.stall) return fromReport(name, first, failures);
  const done = fromProgress(name, first.stall, failures);
  // Before it listed its files, nothing can be said to have ended: that is a failure, not a stuck teardown.
  if (first.stall.files.length === 0) {
    failures.push(`${name}: vitest stalled before it listed its files`);
    return { ...done, code: 1, failed: done.failed + 1 };
  }
  if (first.stall.allEnded) {
    notes.push(`${name}: vitest did not exit after its last file ended (global teardown stuck); ended by the watchdog, all files had reported`);
    return done;
  }
  notes.push(
    `${name}: the run stalled (no progress for ${first.stall.idleS} s) with ${first.stall.unfinished.join(', ')} unfinished; those were run once more`,
  );
  console.log(`\n== rerunning the ${first.stall.unfinished.length} file(s) the stalled ${name} run left unfinished, once`);
  const second = await vitest(name, `${name}-rerun`, [...configArgs, ...first.stall.unfinished]);
  let again;
  if (second.stall) {
    again = fromProgress(name, second.stall, failures);
    for (const f of second.stall.unfinished) failures.push(`${name}: ${f}: stalled twice (see the WATCHDOG lines above)`);
    again.failed += second.stall.unfinished.length;
    again.code = 1;
  } else again = fromReport(name, second, failures);
  const sum = (k) => done[k] + again[k];
  return { code: done.code || again.code, passed: sum('passed'), failed: sum('failed'), skipped: sum('skipped'), total: sum('total') };
}

// The main suite, then the chaos suite (its own dev server and PostgreSQL cluster; it restarts them).
// Arguments (a file filter) go to both; GOVLOOP_SKIP_CHAOS=1 runs the main suite alone.
const results = [await suite('main', ['--passWithNoTests'])];
if (process.env.GOVLOOP_SKIP_CHAOS !== '1') results.push(await suite('chaos', ['--config', 'test/chaos/vitest.config.ts', '--passWithNoTests']));
const sum = (k) => results.reduce((n, r) => n + r[k], 0);
const skipped = sum('skipped');
for (const n of notes) console.log(`WATCHDOG ${n}`);
for (const f of failures) console.log(`FAILED ${f.replace(process.cwd() + '/', '')}`);
console.log(`${sum('passed')} passed, ${sum('failed')} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(sum('total') === 0 ? 1 : (results.find((r) => r.code !== 0)?.code ?? 0));
