/**
 * Patches (workflow versioning) through one marker per run. Each `patched()` that is new to a run
 * records a marker, and the SDK's core adds an upsert of the TemporalChangeVersion search
 * attribute beside it: two history events and a visibility write on the server, per patch, for
 * every task (issue 13). A run started on this code records one marker, EPOCH, which stands for
 * every patch in COVERED. Histories recorded before it have no EPOCH marker: there each id asks
 * `patched()` on its own, at the point it always did, and replays as it was recorded.
 *
 * A later change that needs a patch: either a new id in AFTER_EPOCH (a marker on the runs that ask
 * it), or a new epoch that covers the old ids and the new one (never a new id in COVERED: a run of
 * this epoch did not have it). Safe to import from workflow code.
 */
import { patched } from '@temporalio/workflow';

/** The marker a run records once, at its first patch question (decision 0035). */
export const EPOCH = 'govloop-2026-12';

/** Every patch id workflow code asks about; EPOCH stands for all of them. */
export const COVERED = [
  'continue-as-new',
  'task-ledger-local-activities',
  'step-gate-local-activity',
  'preemption',
  'identity-v1',
  'controller-local-activities',
  'admission-reserves',
  'coalesced-visibility',
] as const;
/**
 * Ids added after EPOCH: each asks `patched()` on its own, on every run, so a run records its
 * marker only where it comes to the question (two events there). For rare paths only: a change to
 * every task's path takes a new epoch that covers the old ids and the new one.
 */
export const AFTER_EPOCH = ['preempt-too-late'] as const;
export type PatchId = (typeof COVERED)[number] | (typeof AFTER_EPOCH)[number];
const afterEpoch: ReadonlySet<string> = new Set(AFTER_EPOCH);

// Module state is per workflow run: the SDK evaluates this module again for each one.
let epoch: boolean | undefined;

/** patched(id) for this run: for an id of COVERED, true on a run that has the epoch, else what the history (or, live, the id's own marker) says. */
export function hasPatch(id: PatchId): boolean {
  if (afterEpoch.has(id)) return patched(id);
  epoch ??= patched(EPOCH);
  return epoch || patched(id);
}
