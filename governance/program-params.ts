import { z } from 'zod';
import { WorkloadKind } from './intent';
import type { GateCheck } from './program';

/**
 * The `params` each gate check takes (decision 0025). Pure zod: the plan loader validates a plan's
 * gate params with these, and ledger/program-gates.ts reads them. A check not listed takes none
 * beyond the defaults; unknown keys are refused everywhere, so a typo never silently weakens a gate.
 */

/** `tenant/team/useCase`: a pilot use case. */
const UseCaseRef = z.string().regex(/^[^/\s]+\/[^/\s]+\/[^/\s]+$/, 'tenant/team/useCase');
/** `tenant/team`. */
const TeamRef = z.string().regex(/^[^/\s]+\/[^/\s]+$/, 'tenant/team');
/** A sharing mode a whitelist allows: exclusive, mps, timeslice, mig (any profile) or one MIG profile. */
const SharingMode = z.string().regex(/^(exclusive|mps|timeslice|mig|mig:\d+g\.\d+gb)$/, 'exclusive | mps | timeslice | mig | mig:<profile>');
const Whitelist = z.record(z.string().min(1), z.array(SharingMode).min(1));

export const AttributionDimension = z.enum(['team', 'project', 'model', 'useCase']);
export const LadderEvidenceStep = z.enum(['notify', 'throttle', 'queue', 'preempt', 'degrade']);

export const GateParams = {
  attributionCoverage: z.strictObject({
    /** Dimensions that must be set (not '' and not 'unknown'); tenant always is. The tool is per event (none on GPU time), so no dimension here. */
    dimensions: z.array(AttributionDimension).min(1).default(['team', 'project', 'model', 'useCase']),
  }),
  budgetCoverage: z.strictObject({}),
  quotaCoverage: z.strictObject({}),
  admissionPolicyV0: z.strictObject({
    /** Workload kinds that must have context, step and budget caps (default: every kind). */
    kinds: z
      .array(WorkloadKind)
      .min(1)
      .default([...WorkloadKind.options]),
  }),
  isolationPolicy: z.strictObject({
    /** GPU type → the sharing modes allowed on it. */
    allowed: Whitelist,
    /** Per tenant, a whitelist that replaces `allowed` for the types it names. */
    tenants: z.record(z.string().min(1), Whitelist).default({}),
  }),
  topologyAcceptance: z.strictObject({
    /** The capacity assumption: GPUs of each type the cluster must have. */
    capacity: z.record(z.string().min(1), z.number().int().nonnegative()).default({}),
    /** Share of each type's capacity that must stay free on average over the window (0-1). */
    headroom: z.number().min(0).max(1).default(0),
  }),
  goldenPaths: z.strictObject({
    /** Template names; default: the templates that serve `inference` and `training`. */
    templates: z.array(z.string().min(1)).min(1).optional(),
  }),
  ladderExecuted: z.strictObject({
    steps: z.array(LadderEvidenceStep).min(1).default(['notify', 'throttle', 'queue', 'preempt', 'degrade']),
  }),
  sloLinkage: z.strictObject({
    pilots: z.array(UseCaseRef).min(1),
  }),
  pilotMigration: z.strictObject({ pilots: z.array(UseCaseRef).min(1) }),
  teamContract: z.strictObject({
    /** The contract: per team, who owns its budget, its SLOs and its on-call. */
    owners: z.record(TeamRef, z.strictObject({ budget: z.string().min(1), slo: z.string().min(1), oncall: z.string().min(1) })).default({}),
    /** The tenant role each owner must hold. */
    roles: z
      .strictObject({ budget: z.string().min(1), slo: z.string().min(1), oncall: z.string().min(1) })
      .default({ budget: 'budget-owner', slo: 'requester', oncall: 'tenant-admin' }),
  }),
  runbookV1: z.strictObject({
    /** Sections Runbook v1 must have: a heading (any level, any runbooks/*.md) containing `heading`, case-insensitive. */
    sections: z
      .array(z.strictObject({ name: z.string().min(1), heading: z.string().min(1) }))
      .min(1)
      .default([
        { name: 'on-call', heading: 'on-call' },
        { name: 'changes', heading: 'change' },
        { name: 'cost audit', heading: 'cost audit' },
      ]),
  }),
  onboarding: z.strictObject({ maxMinutes: z.number().positive().max(1440).default(30) }),
} satisfies Record<GateCheck, z.ZodType>;

export type GateParamsOf<C extends GateCheck> = z.infer<(typeof GateParams)[C]>;

/** Parses a gate's params for its check; the issues carry paths relative to `params`. */
export function parseGateParams<C extends GateCheck>(check: C, params: unknown): z.ZodSafeParseResult<GateParamsOf<C>> {
  return (GateParams[check] as unknown as z.ZodType<GateParamsOf<C>>).safeParse(params ?? {});
}
