import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { bundleWorkflows } from '../../workers/worker';
import { fixturesDir } from '../support/histories';

/**
 * Replays recorded histories against the current workflow code: a change that would break a
 * running workflow (non-determinism) fails here, before it reaches a worker in production.
 * Fixtures are committed under test/fixtures/histories (re-record: GOVLOOP_RECORD_HISTORIES=1 npm test).
 */
describe('workflow replay', () => {
  const files = existsSync(fixturesDir) ? readdirSync(fixturesDir).filter((f) => f.endsWith('.json')) : [];

  it('has recorded histories to replay', () => {
    expect(files.length).toBeGreaterThan(0);
  });

  it('replays every recorded history without non-determinism', async () => {
    const bundle = await bundleWorkflows();
    const histories = files.map((f) => ({ workflowId: f, history: historyFromJSON(JSON.parse(readFileSync(join(fixturesDir, f), 'utf8'))) }));
    const failures: string[] = [];
    for await (const r of Worker.runReplayHistories({ workflowBundle: bundle }, histories)) {
      if (r.error) failures.push(`${r.workflowId}: ${r.error.message}`);
    }
    expect(failures).toEqual([]);
  });
});
