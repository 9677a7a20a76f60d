import { z } from 'zod';

/**
 * The 90-day migration program (issue 12): the plan is data (config/program.yaml), its exit gates
 * are checks computed from live data, and `migrationProgram` (workflows/migration-program.ts) runs
 * it on durable timers. This file is the contract between the plan, the gate checks
 * (ledger/program-gates.ts) and the workflow; it is imported by workflow code, so it stays pure.
 */

/** Every gate check govloop can compute. Each reads live data; none is ticked by hand. */
export const GateCheck = z.enum([
  /** Share of the last `windowDays` days' cost whose usage carries every attribution dimension. */
  'attributionCoverage',
  /** Share of teams with usage in the window that have a budget with ladder thresholds. */
  'budgetCoverage',
  /** Share of teams with GPU work in the window that have a GPU quota. */
  'quotaCoverage',
  /** Admission Policy v0: share of workload kinds with context, step and budget caps. */
  'admissionPolicyV0',
  /** Share of dispatches in the window that conform to the sharing/isolation whitelist. */
  'isolationPolicy',
  /** Share of multi-GPU gangs in the window placed in one NVLink domain, with capacity assumptions checked. */
  'topologyAcceptance',
  /** Share of golden-path templates (inference, training) whose smoke task Succeeded. */
  'goldenPaths',
  /** Share of the ladder's enforcement steps with evidence in ladder_events. */
  'ladderExecuted',
  /** Share of pilot use cases with an SLO whose ladder actions respect it. */
  'sloLinkage',
  /** Share of the pilots' usage in the window that came through governed tasks. */
  'pilotMigration',
  /** Share of teams with named, known owners for budget, SLO and on-call. */
  'teamContract',
  /** Runbook v1: share of the required sections and GovState links present. */
  'runbookV1',
  /** Onboarding: share of recorded onboardings that reached Succeeded within the time limit. */
  'onboarding',
]);
export type GateCheck = z.infer<typeof GateCheck>;

const Id = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/, 'lowercase letters, digits and dashes');

export const ProgramGate = z.strictObject({
  id: Id,
  check: GateCheck,
  /** The share (0-1) the measured value must reach. */
  threshold: z.number().min(0).max(1),
  /** Days of data the check looks at (where it looks at a window). */
  windowDays: z.number().int().min(1).max(90).default(7),
  /** Check-specific settings (e.g. pilot use cases, the onboarding limit in minutes). */
  params: z.record(z.string(), z.unknown()).default({}),
});
export type ProgramGate = z.infer<typeof ProgramGate>;

export const DeliverableKind = z.enum(['dashboard', 'admission-policy', 'templates', 'isolation-policy', 'runbook', 'onboarding-record']);
export const ProgramDeliverable = z.strictObject({ id: Id, kind: DeliverableKind, name: z.string().min(1).max(200) });
export type ProgramDeliverable = z.infer<typeof ProgramDeliverable>;

export const ProgramPhase = z.strictObject({
  id: Id,
  name: z.string().min(1).max(200),
  /** Planned days, 1-based and inclusive: day 0-30 of the seed is startDay 1, endDay 30. */
  startDay: z.number().int().min(1).max(365),
  endDay: z.number().int().min(1).max(365),
  work: z.array(z.string().min(1).max(300)).max(50),
  deliverables: z.array(ProgramDeliverable).max(20),
  gates: z.array(ProgramGate).min(1).max(30),
});
export type ProgramPhase = z.infer<typeof ProgramPhase>;

export const ProgramPlan = z
  .strictObject({
    name: z.string().min(1).max(200),
    version: z.number().int().min(1),
    /** The roles that sign a phase off: one person of each, never the same person (four-eyes). */
    signoff: z.strictObject({ platformRole: z.string().min(1).max(63), workloadRole: z.string().min(1).max(63) }),
    /** The tenants the gates and deliverables look at (a landing zone for part of the platform); absent: all of them. */
    scope: z.strictObject({ tenants: z.array(z.string().min(1).max(200)).min(1).max(1000) }).optional(),
    phases: z.array(ProgramPhase).min(1).max(12),
  })
  .superRefine((p, ctx) => {
    const ids = new Set<string>();
    let last = 0;
    p.phases.forEach((ph, i) => {
      if (ids.has(ph.id)) ctx.addIssue({ code: 'custom', path: ['phases', i, 'id'], message: `phase id ${ph.id} is used twice` });
      ids.add(ph.id);
      if (ph.endDay < ph.startDay)
        ctx.addIssue({ code: 'custom', path: ['phases', i, 'endDay'], message: `ends (day ${ph.endDay}) before it starts (day ${ph.startDay})` });
      if (ph.startDay <= last)
        ctx.addIssue({ code: 'custom', path: ['phases', i, 'startDay'], message: `starts on day ${ph.startDay}, not after the previous phase's day ${last}` });
      last = ph.endDay;
      const gateIds = new Set<string>();
      ph.gates.forEach((g, j) => {
        if (gateIds.has(g.id)) ctx.addIssue({ code: 'custom', path: ['phases', i, 'gates', j, 'id'], message: `gate id ${g.id} is used twice in the phase` });
        gateIds.add(g.id);
      });
    });
  });
export type ProgramPlan = z.infer<typeof ProgramPlan>;

/** One gate's measurement: the value beside its threshold, and what fails it by name. */
export interface GateResult {
  id: string;
  check: GateCheck;
  threshold: number;
  /** The measured share (0-1); null when there is nothing to measure yet (counts as failing). */
  value: number | null;
  pass: boolean;
  /** The items that fail it, named (teams, kinds, templates, dispatches...), at most 50. */
  failing: string[];
  /** One line: what was measured over what. */
  detail: string;
  measuredAt: string;
}
