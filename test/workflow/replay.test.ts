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
  // Histories recorded by earlier versions stay in sub-folders (pre-0022/: before continue-as-new):
  // workflows they describe may still be running somewhere when a new worker takes over. Newer
  // paths get a sub-folder of their own (0032-local-ledger/: governedTask's ledger calls as local
  // activities, taken from a full run's test/artifacts/histories; 0035-patch-epoch/: one patch
  // marker per run, the task's search attributes once per activation, admission reserving).
  const files = existsSync(fixturesDir) ? (readdirSync(fixturesDir, { recursive: true }) as string[]).filter((f) => f.endsWith('.json')).sort() : [];

  it('has recorded histories to replay', () => {
    expect(files.length).toBeGreaterThan(0);
  });

  it('covers the long-running workflows and continue-as-new', () => {
    const kinds = new Set<string>();
    for (const f of files) {
      const events = (
        JSON.parse(readFileSync(join(fixturesDir, f), 'utf8')) as {
          events: { eventType: string; workflowExecutionStartedEventAttributes?: { workflowType: { name: string } } }[];
        }
      ).events;
      kinds.add(events[0]!.workflowExecutionStartedEventAttributes!.workflowType.name);
      if (events.at(-1)!.eventType === 'EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW')
        kinds.add(`${events[0]!.workflowExecutionStartedEventAttributes!.workflowType.name} continued as new`);
    }
    expect([...kinds]).toEqual(
      expect.arrayContaining([
        'governedTask',
        'budgetController',
        'meteringRollup',
        'migrationProgram',
        'governedTask continued as new',
        'budgetController continued as new',
        'migrationProgram continued as new',
      ]),
    );
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
