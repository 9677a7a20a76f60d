/**
 * What a global setup made outside the repo: temp dirs, scratch databases, servers that outlive
 * the run's process group (a private PostgreSQL cluster: pg_ctl detaches it). Its teardown removes
 * them. A run the watchdog ends never gets to its teardown, so the setup writes them down here too,
 * and scripts/test.mjs removes what is still written down once the run has exited (decision 0037).
 *
 * GOVLOOP_TEST_SCRATCH names the file; scripts/test.mjs sets it for each vitest run. Unset (vitest
 * run by hand), nothing is written.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

export interface ScratchRecord {
  /** Directories to remove. */
  dirs: string[];
  /** Databases to drop: DROP DATABASE … WITH (FORCE) on `adminUrl`'s server. */
  databases: { adminUrl: string; name: string }[];
  /** Commands to run first (argv), e.g. stopping a server that left the process group. */
  commands: string[][];
}

const path = () => process.env.GOVLOOP_TEST_SCRATCH;

function read(file: string): ScratchRecord {
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as ScratchRecord) : { dirs: [], databases: [], commands: [] };
}

/** Adds to the record (written at once, so a run killed the next moment leaves it complete). */
export function recordScratch(add: Partial<ScratchRecord>): void {
  const file = path();
  if (!file) return;
  const r = read(file);
  writeFileSync(
    file,
    JSON.stringify({
      dirs: [...r.dirs, ...(add.dirs ?? [])],
      databases: [...r.databases, ...(add.databases ?? [])],
      commands: [...r.commands, ...(add.commands ?? [])],
    }),
  );
}

/** The teardown removed everything itself: nothing is left to clean. */
export function clearScratchRecord(): void {
  const file = path();
  if (file) rmSync(file, { force: true });
}
