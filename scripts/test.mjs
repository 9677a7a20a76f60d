#!/usr/bin/env node
// The test command: type-check, lint, run every vitest file against the real Temporal dev server and
// PostgreSQL, then print one closing line "N passed, N failed[, N skipped]" that CI reads.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';

const run = (cmd, args) => spawnSync(cmd, args, { stdio: 'inherit' }).status ?? 1;
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';

if (run(npx, ['tsc', '-p', '.']) !== 0 || run(npx, ['eslint', '.']) !== 0) {
  console.log('0 passed, 1 failed');
  process.exit(1);
}
mkdirSync('test/artifacts', { recursive: true });
const report = 'test/artifacts/vitest.json';
rmSync(report, { force: true });
const code = run(npx, ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)]);
if (existsSync(report)) {
  const r = JSON.parse(readFileSync(report, 'utf8'));
  const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed${skipped ? `, ${skipped} skipped` : ''}`);
  if (r.numTotalTests === 0) process.exit(1);
} else {
  console.log('0 passed, 1 failed');
}
process.exit(code);
