import { appendFileSync } from 'node:fs';
import { relative } from 'node:path';
import type { Reporter, TestCase, TestModule, TestSpecification } from 'vitest/node';

/**
 * A vitest reporter that appends one JSON line per event to $GOVLOOP_TEST_PROGRESS, written as it
 * happens (not at the end, as the JSON reporter is). scripts/test.mjs reads it to tell a suite that
 * is still working from one that has stalled, to name the files and tests a stalled run left
 * unfinished, and to count what the files that did end passed and failed.
 *
 * Lines: {e:'run', files}, {e:'queued'|'start', file}, {e:'test', file, name},
 * {e:'end', file, passed, failed, skipped, failures: [{name, message}]} (the whole first error
 * message: scripts/test.mjs shortens it as it does the JSON report's); each with t (ms since epoch).
 */
export default class ProgressReporter implements Reporter {
  private readonly path = process.env.GOVLOOP_TEST_PROGRESS;

  private write(line: Record<string, unknown>): void {
    if (this.path) appendFileSync(this.path, `${JSON.stringify({ t: Date.now(), ...line })}\n`);
  }

  onTestRunStart(specifications: ReadonlyArray<TestSpecification>): void {
    this.write({ e: 'run', files: specifications.map((s) => file(s.moduleId)) });
  }

  onTestModuleQueued(m: TestModule): void {
    this.write({ e: 'queued', file: file(m.moduleId) });
  }

  onTestModuleStart(m: TestModule): void {
    this.write({ e: 'start', file: file(m.moduleId) });
  }

  onTestCaseReady(t: TestCase): void {
    this.write({ e: 'test', file: file(t.module.moduleId), name: t.fullName });
  }

  onTestModuleEnd(m: TestModule): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    const failures: { name: string; message: string }[] = [];
    for (const t of m.children.allTests()) {
      const r = t.result();
      if (r.state === 'passed') passed++;
      else if (r.state === 'failed') {
        failed++;
        failures.push({ name: t.fullName, message: r.errors?.[0]?.message ?? '' });
      } else skipped++;
    }
    // A file that failed outside its tests (an import, a hook): one failure under the file's name.
    if (failed === 0 && m.state() === 'failed') {
      failed = 1;
      failures.push({ name: '(the file)', message: m.errors()[0]?.message ?? '' });
    }
    this.write({ e: 'end', file: file(m.moduleId), passed, failed, skipped, failures });
  }
}

const file = (moduleId: string) => relative(process.cwd(), moduleId);
