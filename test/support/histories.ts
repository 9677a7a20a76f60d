import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';

export const fixturesDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'histories');
export const runHistoriesDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts', 'histories');

/**
 * Saves the histories of the closed workflows a test file ran (its own task queue) as replay
 * fixtures, in the JSON that `temporal workflow show --output json` writes: under
 * test/fixtures/histories/ when GOVLOOP_RECORD_HISTORIES=1 (committed), else under
 * test/artifacts/histories/ (not replayed there: copy the ones a change needs into a sub-folder of
 * the fixtures, as test/workflow/replay.test.ts describes).
 */
export async function saveHistories(client: Client, opts: { cli: string; address: string; taskQueue: string; prefix: string }): Promise<number> {
  const dir = process.env.GOVLOOP_RECORD_HISTORIES === '1' ? fixturesDir : runHistoriesDir;
  mkdirSync(dir, { recursive: true });
  let n = 0;
  // A workflow that continued as new has several closed runs under one id: the first run listed
  // (the newest) keeps the plain name, older ones get --run-2, --run-3 ...
  const seen = new Map<string, number>();
  for await (const wf of client.workflow.list({ query: `TaskQueue = '${opts.taskQueue}' AND ExecutionStatus != 'Running'` })) {
    const json = execFileSync(
      opts.cli,
      ['workflow', 'show', '--address', opts.address, '--workflow-id', wf.workflowId, '--run-id', wf.runId, '--output', 'json'],
      { maxBuffer: 64 << 20 },
    );
    const name = wf.workflowId
      // Stable names across re-recordings: no schedule timestamp, no random suffix or tenant, no odd characters.
      .replace(/-run-\d{4}-\d{2}-\d{2}T[\d:]+Z$/, '')
      .replace(/-[0-9a-f]{8}$/, '')
      .replace(/(?<![A-Za-z])t-[0-9a-f]{8}/g, 'tenant')
      .replace(/[^A-Za-z0-9_.-]+/g, '_');
    const k = (seen.get(name) ?? 0) + 1;
    seen.set(name, k);
    writeFileSync(join(dir, `${opts.prefix}--${name}${k > 1 ? `--run-${k}` : ''}.json`), json);
    n++;
  }
  return n;
}

/** The activity types of a workflow's local activities, in the order their markers are in its history. */
export async function localActivityTypes(client: Client, workflowId: string): Promise<string[]> {
  const { events } = await client.workflow.getHandle(workflowId).fetchHistory();
  return (events ?? [])
    .filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity')
    .map((e) => defaultPayloadConverter.fromPayload<{ activity_type: string }>(e.markerRecordedEventAttributes!.details!.data!.payloads![0]!).activity_type);
}
