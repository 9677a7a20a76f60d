import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { GovConfig } from '../config/load';
import { fieldErrors } from '../governance/intent';
import type { GateCheck, GateResult, ProgramGate } from '../governance/program';
import { parseGateParams } from '../governance/program-params';
import type { Db } from './db';
import type { Measure, Ctx, Check } from './program-gates-context';
import { attributionCoverage, budgetCoverage, quotaCoverage, admissionPolicyV0, isolationPolicy, topologyAcceptance } from './program-gates-platform';
import { goldenPaths, ladderExecuted, sloLinkage, pilotMigration, teamContract, runbookV1, onboarding } from './program-gates-operations';

export { sharingAllowed } from './program-gates-platform';
export { runbookFile, LADDER_RUNBOOK } from './program-gates-operations';

/**
 * The migration program's gate checks (issue 12, decision 0025): one SQL-backed measurement per
 * GateCheck over the ledger as it is, and the config govloop runs with. Each answers a share 0-1
 * (null when there is nothing to measure: the gate fails), the items that fail it by name, and one
 * line saying what was measured. Nothing here writes; nothing is ticked by hand.
 *
 * The checks live in `./program-gates-platform.ts` and `./program-gates-operations.ts`, what they
 * share in `./program-gates-context.ts`; this file runs them and re-exports their public names.
 */

export const RUNBOOK_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'runbooks');
const MAX_FAILING = 50;

export interface GateOptions {
  /** Measure only these tenants' data (tests, a per-tenant view); the workflow passes none: the whole ledger. */
  tenants?: string[];
  /** Where Runbook v1 is read from (default: the shipped runbooks/). */
  runbookDir?: string;
}

/** Measures each gate now. Bad params make that gate fail with the field paths; a ledger error throws. */
export async function evaluateGates(db: Db, config: GovConfig, gates: ProgramGate[], now: Date, opts: GateOptions = {}): Promise<GateResult[]> {
  const out: GateResult[] = [];
  for (const gate of gates) {
    const ctx: Ctx = {
      q: db,
      config,
      since: new Date(now.getTime() - gate.windowDays * 86_400_000),
      now,
      days: gate.windowDays,
      tenants: opts.tenants ?? null,
      runbookDir: opts.runbookDir ?? RUNBOOK_DIR,
    };
    const parsed = parseGateParams(gate.check, gate.params);
    const m: Measure = parsed.success
      ? await checks[gate.check](ctx, parsed.data as never)
      : { value: null, failing: fieldErrors(parsed.error).map((e) => `params.${e.path}: ${e.message}`), detail: `invalid params for ${gate.check}` };
    const value = m.value === null ? null : Math.round(m.value * 1e6) / 1e6;
    out.push({
      id: gate.id,
      check: gate.check,
      threshold: gate.threshold,
      value,
      pass: value !== null && value >= gate.threshold,
      failing: m.failing.slice(0, MAX_FAILING),
      detail: m.detail,
      measuredAt: now.toISOString(),
    });
  }
  return out;
}

const checks: { [C in GateCheck]: Check<C> } = {
  attributionCoverage,
  budgetCoverage,
  quotaCoverage,
  admissionPolicyV0,
  isolationPolicy,
  topologyAcceptance,
  goldenPaths,
  ladderExecuted,
  sloLinkage,
  pilotMigration,
  teamContract,
  runbookV1,
  onboarding,
};
