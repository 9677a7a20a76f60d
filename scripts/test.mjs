#!/usr/bin/env node
// The test command: type-check, lint, run every vitest file against the real Temporal dev server and
// PostgreSQL, then print one closing line "N passed, N failed[, N skipped]" that CI reads.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';

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
const failures = [];
const firstLine = (text) =>
  (
    String(text ?? '')
      .split('\n')
      .find((l) => l.trim() !== '') ?? '(no message)'
  ).slice(0, 300);
/** Runs one vitest configuration; its counts from the JSON report (null when it wrote none). */
function suite(name, configArgs) {
  const report = `test/artifacts/vitest-${name}.json`;
  rmSync(report, { force: true });
  const code = run(npx, ['vitest', 'run', ...configArgs, '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)]);
  if (!existsSync(report)) return { code: code || 1, passed: 0, failed: 1, skipped: 0, total: 0 };
  const r = JSON.parse(readFileSync(report, 'utf8'));
  // CI shows only the output's tail: name each failure (and its first message line) at the end.
  for (const file of r.testResults ?? []) {
    const failed = (file.assertionResults ?? []).filter((t) => t.status === 'failed');
    if (failed.length === 0 && file.status === 'failed') failures.push(`${name}: ${file.name}: ${firstLine(file.message)}`);
    for (const t of failed) failures.push(`${name}: ${file.name} > ${t.fullName}: ${firstLine(t.failureMessages?.[0])}`);
  }
  return { code, passed: r.numPassedTests, failed: r.numFailedTests, skipped: (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0), total: r.numTotalTests };
}
// The main suite, then the chaos suite (its own dev server and PostgreSQL cluster; it restarts them).
// Arguments (a file filter) go to both; GOVLOOP_SKIP_CHAOS=1 runs the main suite alone.
const results = [suite('main', ['--passWithNoTests'])];
if (process.env.GOVLOOP_SKIP_CHAOS !== '1') results.push(suite('chaos', ['--config', 'test/chaos/vitest.config.ts', '--passWithNoTests']));
const sum = (k) => results.reduce((n, r) => n + r[k], 0);
const skipped = sum('skipped');
for (const f of failures) console.log(`FAILED ${f.replace(process.cwd() + '/', '')}`);
console.log(`${sum('passed')} passed, ${sum('failed')} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(sum('total') === 0 ? 1 : (results.find((r) => r.code !== 0)?.code ?? 0));
