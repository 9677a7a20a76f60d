import {
  ApplicationFailure,
  allHandlersFinished,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { z } from 'zod';
import type { Activities } from '../activities';
import type { ProgramAuth } from '../activities/program';
import { type GateResult, ProgramPlan } from '../governance/program';
import { LEDGER_ACTIVITY } from './activity-options';
import { CallerShape, ReasonText, issuesList, issuesText } from './schemas';
import * as SA from './search-attributes';

const ledger = proxyActivities<Activities>(LEDGER_ACTIVITY);

/** The one program's workflow id: a platform runs one landing-zone rollout at a time. */
export const PROGRAM_WORKFLOW_ID = 'govloop-migration-program';

export interface Signoff {
  by: string;
  reason: string;
  at: string;
}

export interface PhaseRecord {
  id: string;
  name: string;
  state: 'pending' | 'active' | 'closed';
  plannedStartDay: number;
  plannedEndDay: number;
  /** Days added by `extend`, each with who and why. */
  extensions: { days: number; reason: string; by: string; at: string }[];
  startedDay: number | null;
  closedDay: number | null;
  gates: GateResult[];
  evaluatedDay: number | null;
  /** Past its (extended) end with a gate failing: escalated once per end day. */
  blocked: boolean;
  escalatedForEndDay: number | null;
  signoffs: { platform: Signoff | null; workload: Signoff | null };
  deliverables: { id: string; kind: string; version: string; sha256: string }[];
}

export interface ProgramState {
  programId: string;
  plan: ProgramPlan;
  daySeconds: number;
  startedAt: number;
  startedBy: string;
  /** Milliseconds spent paused before the current pause. */
  pausedMs: number;
  pausedSince: number | null;
  phases: PhaseRecord[];
  weeklyReports: { week: number; day: number; at: string; summary: string }[];
  lastWeek: number;
  done: boolean;
  runs: number;
}

export interface ProgramInput {
  plan: ProgramPlan;
  daySeconds: number;
  startedBy: string;
  /** Events in a run before it hands over to a fresh one (default 2,000; tests set it low). */
  continueAsNewEvents?: number;
  /** Carried over continue-as-new. */
  state?: ProgramState;
}

export interface ProgramStatus extends ProgramState {
  day: number;
  paused: boolean;
  current: string | null;
  blocked: boolean;
  /** Per active phase: the slots still to sign. */
  awaitingSignoff: ('platform' | 'workload')[];
}

export const ProgramErrors = {
  InvalidRequest: 'InvalidProgramRequest',
  NotActive: 'PHASE_NOT_ACTIVE',
  GatesFailing: 'GATES_NOT_PASSED',
  AlreadySigned: 'ALREADY_SIGNED',
  FourEyes: 'FOUR_EYES',
  Paused: 'PROGRAM_PAUSED',
  NotPaused: 'PROGRAM_NOT_PAUSED',
  PlanVersion: 'PLAN_VERSION',
} as const;

const PhaseId = z.string().min(1).max(63);
export const SignoffSchema = z.strictObject({ phase: PhaseId, reason: ReasonText, ...CallerShape });
export const ExtendSchema = z.strictObject({ phase: PhaseId, days: z.number().int().min(1).max(90), reason: ReasonText, ...CallerShape });
export const PauseSchema = z.strictObject({ reason: ReasonText, ...CallerShape });
export const ReplanSchema = z.strictObject({ plan: z.unknown(), reason: ReasonText, ...CallerShape });

export type ProgramAnswer = { accepted: true; by: string; message: string } | { accepted: false; code: string; message: string };

export const programStatusQuery = defineQuery<ProgramStatus>('programStatus');
export const programSignoffUpdate = defineUpdate<ProgramAnswer, [z.infer<typeof SignoffSchema>]>('programSignoff');
export const programExtendUpdate = defineUpdate<ProgramAnswer, [z.infer<typeof ExtendSchema>]>('programExtend');
export const programPauseUpdate = defineUpdate<ProgramAnswer, [z.infer<typeof PauseSchema>]>('programPause');
export const programResumeUpdate = defineUpdate<ProgramAnswer, [z.infer<typeof PauseSchema>]>('programResume');
export const programReplanUpdate = defineUpdate<ProgramAnswer, [z.infer<typeof ReplanSchema>]>('programReplan');
/** Evaluate the gates now (data changed): the CLI's `program status --refresh`, tests, operators. */
export const programNudgeSignal = defineSignal('programNudge');

/** Events in a run before it hands over to a fresh one. */
const CONTINUE_AS_NEW_EVENTS = 2000;

function parse<T>(schema: z.ZodType<T>, v: unknown): T {
  const r = schema.safeParse(v);
  if (!r.success) throw ApplicationFailure.nonRetryable(`invalid request: ${issuesText(r.error)}`, ProgramErrors.InvalidRequest, issuesList(r.error));
  return r.data;
}

function freshPhases(plan: ProgramPlan): PhaseRecord[] {
  return plan.phases.map((p) => ({
    id: p.id,
    name: p.name,
    state: 'pending',
    plannedStartDay: p.startDay,
    plannedEndDay: p.endDay,
    extensions: [],
    startedDay: null,
    closedDay: null,
    gates: [],
    evaluatedDay: null,
    blocked: false,
    escalatedForEndDay: null,
    signoffs: { platform: null, workload: null },
    deliverables: [],
  }));
}

const endDay = (p: PhaseRecord) => p.plannedEndDay + p.extensions.reduce((s, e) => s + e.days, 0);
const allPass = (p: PhaseRecord) => p.gates.length > 0 && p.gates.every((g) => g.pass);

/**
 * The 90-day migration program (issue 12, decision 0027): the plan's phases in order, each with
 * gates measured from live data (ledger/program-gates.ts) on every program day and on each nudge.
 * A phase closes when its gates pass and a platform owner and a workload owner, two different
 * people in their roles, have signed it off; its deliverables are then produced and hashed into
 * the audit chain, and the next phase starts. Past its end with a gate failing, the phase is
 * blocked: escalated once per end day, naming the failing items and the runbook. Phases can be
 * extended, the program paused, resumed and replanned (for phases not started). Day length is
 * `daySeconds` (86,400 in production). Continues as new long before its history grows large.
 */
export async function migrationProgram(input: ProgramInput): Promise<ProgramStatus> {
  const programId = workflowInfo().workflowId;
  const st: ProgramState = input.state
    ? { ...input.state, runs: input.state.runs + 1 }
    : {
        programId,
        plan: input.plan,
        daySeconds: input.daySeconds,
        startedAt: Date.now(),
        startedBy: input.startedBy,
        pausedMs: 0,
        pausedSince: null,
        phases: freshPhases(input.plan),
        weeklyReports: [],
        lastWeek: 0,
        done: false,
        runs: 1,
      };
  let nudged = false;

  const day = () => {
    const paused = st.pausedSince === null ? 0 : Date.now() - st.pausedSince;
    return Math.floor((Date.now() - st.startedAt - st.pausedMs - paused) / (st.daySeconds * 1000)) + 1;
  };
  const active = () => st.phases.find((p) => p.state === 'active') ?? null;
  const status = (): ProgramStatus => {
    const a = active();
    return {
      ...st,
      day: day(),
      paused: st.pausedSince !== null,
      current: a?.id ?? null,
      blocked: a?.blocked ?? false,
      awaitingSignoff: a ? (['platform', 'workload'] as const).filter((s) => a.signoffs[s] === null) : [],
    };
  };
  const searchAttributes = () =>
    upsertSearchAttributes({
      [SA.ProgramPhase.name]: [active()?.id ?? (st.done ? 'done' : 'pending')],
      [SA.ProgramDay.name]: [day()],
      [SA.ProgramBlocked.name]: [active()?.blocked ?? false],
    });
  const record = (actor: string, action: string, decision: string, detail: Record<string, unknown>, dedupeKey?: string) =>
    ledger.recordProgramEvent({ programId, actor, action, decision, detail, ...(dedupeKey ? { dedupeKey } : {}) });
  const authorize = (
    act: 'signoff' | 'extend' | 'pause' | 'resume' | 'replan',
    m: { credential?: string | undefined; as?: string | undefined },
    phase?: string,
  ) =>
    ledger.authorizeProgramCall({
      programId,
      act,
      caller: { ...(m.credential !== undefined ? { credential: m.credential } : {}), ...(m.as !== undefined ? { as: m.as } : {}) },
      platformRole: st.plan.signoff.platformRole,
      workloadRole: st.plan.signoff.workloadRole,
      ...(phase ? { phase } : {}),
    });
  const refuse = async (who: string, act: string, code: string, message: string, detail: Record<string, unknown>): Promise<ProgramAnswer> => {
    await record(who, act, code, { message, ...detail });
    return { accepted: false, code, message };
  };

  async function evaluate(p: PhaseRecord): Promise<void> {
    const plan = st.plan.phases.find((x) => x.id === p.id)!;
    p.gates = await ledger.evaluateProgramGates({ gates: plan.gates, ...(st.plan.scope ? { tenants: st.plan.scope.tenants } : {}) });
    p.evaluatedDay = day();
  }

  async function start(p: PhaseRecord): Promise<void> {
    p.state = 'active';
    p.startedDay = day();
    await record('govloop', 'phase', 'started', { phase: p.id, day: p.startedDay }, `program:${programId}:${p.id}:started`);
  }

  /** Closes the active phase when its gates pass and both owners signed; starts the next. */
  async function maybeClose(p: PhaseRecord): Promise<boolean> {
    if (!allPass(p) || p.signoffs.platform === null || p.signoffs.workload === null) return false;
    const plan = st.plan.phases.find((x) => x.id === p.id)!;
    p.deliverables = await ledger.produceProgramDeliverables({ programId, phase: p.id, deliverables: plan.deliverables, plan: st.plan });
    p.state = 'closed';
    p.closedDay = day();
    p.blocked = false;
    await record(
      'govloop',
      'phase',
      'closed',
      {
        phase: p.id,
        day: p.closedDay,
        gates: p.gates.map((g) => ({ id: g.id, value: g.value, threshold: g.threshold })),
        signoffs: p.signoffs,
        deliverables: p.deliverables,
      },
      `program:${programId}:${p.id}:closed`,
    );
    const next = st.phases.find((x) => x.state === 'pending');
    if (next) await start(next);
    else st.done = true;
    return true;
  }

  async function maybeEscalate(p: PhaseRecord): Promise<void> {
    const end = endDay(p);
    if (day() <= end || allPass(p)) {
      p.blocked = false;
      return;
    }
    p.blocked = true;
    if (p.escalatedForEndDay === end) return;
    p.escalatedForEndDay = end;
    await ledger.escalateProgram({
      programId,
      phase: p.id,
      day: day(),
      failing: p.gates.filter((g) => !g.pass).map((g) => ({ gate: g.id, value: g.value, threshold: g.threshold, items: g.failing.slice(0, 20) })),
    });
  }

  async function maybeWeekly(): Promise<void> {
    const week = Math.floor((day() - 1) / 7);
    if (week <= st.lastWeek) return;
    st.lastWeek = week;
    const a = active();
    const summary = a
      ? `day ${day()}, phase ${a.id}: ${a.gates.filter((g) => g.pass).length}/${a.gates.length} gates pass` +
        (a.gates.some((g) => !g.pass)
          ? `; failing: ${a.gates
              .filter((g) => !g.pass)
              .map((g) => `${g.id} ${g.value === null ? 'no data' : g.value.toFixed(3)} < ${g.threshold}`)
              .join(', ')}`
          : '')
      : `day ${day()}: ${st.done ? 'done' : 'no active phase'}`;
    st.weeklyReports = [...st.weeklyReports, { week, day: day(), at: new Date().toISOString(), summary }].slice(-13);
    await record('govloop', 'weekly', 'reported', { week, summary }, `program:${programId}:week:${week}`);
  }

  setHandler(programStatusQuery, status);
  setHandler(programNudgeSignal, () => {
    nudged = true;
  });

  setHandler(
    programSignoffUpdate,
    async (m): Promise<ProgramAnswer> => {
      const p = active();
      if (!p || p.id !== m.phase)
        return { accepted: false, code: ProgramErrors.NotActive, message: `phase ${m.phase} is not the active phase (${p?.id ?? 'none'})` };
      const who: ProgramAuth = await authorize('signoff', m, m.phase);
      if (!who.ok) return { accepted: false, code: who.code, message: who.message };
      const detail = { phase: p.id, reason: m.reason };
      // Which slot this caller may take, or why none: decided again after every await, since
      // another sign-off may have been taken while this one waited.
      const pick = (): { slot: 'platform' | 'workload' } | { code: string; message: string } => {
        if (p.state !== 'active') return { code: ProgramErrors.NotActive, message: `phase ${p.id} is no longer active` };
        const signedBefore = (['platform', 'workload'] as const).find((s) => p.signoffs[s]?.by === who.by);
        if (signedBefore) {
          // Four-eyes: one person signs one slot, once.
          const code = p.signoffs.platform !== null && p.signoffs.workload !== null ? ProgramErrors.AlreadySigned : ProgramErrors.FourEyes;
          return { code, message: `${who.by} already signed phase ${p.id} as its ${signedBefore} owner; the other sign-off must be someone else's` };
        }
        const slot = (['platform', 'workload'] as const).find((s) => p.signoffs[s] === null && (s === 'platform' ? who.platform : who.workload));
        if (!slot) {
          const held = [who.platform ? 'platform' : null, who.workload ? 'workload' : null].filter(Boolean).join(' and ');
          return { code: ProgramErrors.AlreadySigned, message: `phase ${p.id}'s ${held} sign-off is already given` };
        }
        return { slot };
      };
      const first = pick();
      if ('code' in first) return refuse(who.by, 'signoff', first.code, first.message, detail);
      // A sign-off says the exit criteria are met: measured now, not at the last evaluation.
      await evaluate(p);
      if (!allPass(p)) {
        const failing = p.gates.filter((g) => !g.pass).map((g) => `${g.id} (${g.value === null ? 'no data' : g.value.toFixed(3)} < ${g.threshold})`);
        return refuse(who.by, 'signoff', ProgramErrors.GatesFailing, `phase ${p.id} cannot be signed off: gates failing: ${failing.join(', ')}`, detail);
      }
      const picked = pick();
      if ('code' in picked) return refuse(who.by, 'signoff', picked.code, picked.message, detail);
      const slot = picked.slot;
      p.signoffs[slot] = { by: who.by, reason: m.reason, at: new Date().toISOString() };
      await record(who.by, 'signoff', 'accepted', { ...detail, slot });
      nudged = true;
      return { accepted: true, by: who.by, message: `${who.by} signed phase ${p.id} off as its ${slot} owner` };
    },
    { validator: (m) => void parse(SignoffSchema, m) },
  );

  setHandler(
    programExtendUpdate,
    async (m): Promise<ProgramAnswer> => {
      const p = st.phases.find((x) => x.id === m.phase);
      if (!p || p.state === 'closed')
        return { accepted: false, code: ProgramErrors.NotActive, message: `phase ${m.phase} is ${p ? 'closed' : 'not in the plan'}` };
      const who = await authorize('extend', m, m.phase);
      if (!who.ok) return { accepted: false, code: who.code, message: who.message };
      p.extensions.push({ days: m.days, reason: m.reason, by: who.by, at: new Date().toISOString() });
      await record(who.by, 'extend', 'accepted', { phase: p.id, days: m.days, reason: m.reason, endDay: endDay(p) });
      nudged = true;
      return { accepted: true, by: who.by, message: `phase ${p.id} now ends on day ${endDay(p)}` };
    },
    { validator: (m) => void parse(ExtendSchema, m) },
  );

  setHandler(
    programPauseUpdate,
    async (m): Promise<ProgramAnswer> => {
      if (st.pausedSince !== null) return { accepted: false, code: ProgramErrors.Paused, message: 'the program is already paused' };
      const who = await authorize('pause', m);
      if (!who.ok) return { accepted: false, code: who.code, message: who.message };
      st.pausedSince = Date.now();
      await record(who.by, 'pause', 'accepted', { reason: m.reason, day: day() });
      return { accepted: true, by: who.by, message: `program paused on day ${day()}` };
    },
    { validator: (m) => void parse(PauseSchema, m) },
  );

  setHandler(
    programResumeUpdate,
    async (m): Promise<ProgramAnswer> => {
      if (st.pausedSince === null) return { accepted: false, code: ProgramErrors.NotPaused, message: 'the program is not paused' };
      const who = await authorize('resume', m);
      if (!who.ok) return { accepted: false, code: who.code, message: who.message };
      st.pausedMs += Date.now() - st.pausedSince;
      st.pausedSince = null;
      await record(who.by, 'resume', 'accepted', { reason: m.reason, day: day() });
      nudged = true;
      return { accepted: true, by: who.by, message: `program resumed on day ${day()}` };
    },
    { validator: (m) => void parse(PauseSchema, m) },
  );

  setHandler(
    programReplanUpdate,
    async (m): Promise<ProgramAnswer> => {
      const plan = ProgramPlan.safeParse(m.plan);
      if (!plan.success) return { accepted: false, code: ProgramErrors.InvalidRequest, message: `invalid plan: ${issuesText(plan.error)}` };
      if (plan.data.version <= st.plan.version) {
        return {
          accepted: false,
          code: ProgramErrors.PlanVersion,
          message: `plan version ${plan.data.version} is not after the running version ${st.plan.version}`,
        };
      }
      const started = st.phases.filter((p) => p.state !== 'pending');
      for (const p of started) {
        const same = plan.data.phases.find((x) => x.id === p.id);
        if (!same) return { accepted: false, code: ProgramErrors.PlanVersion, message: `the new plan drops phase ${p.id}, which has started` };
      }
      const who = await authorize('replan', m);
      if (!who.ok) return { accepted: false, code: who.code, message: who.message };
      // Phases that have started keep the plan they started under; the rest come from the new plan.
      const kept = new Set(started.map((p) => p.id));
      st.plan = { ...plan.data, phases: plan.data.phases.map((ph) => (kept.has(ph.id) ? st.plan.phases.find((x) => x.id === ph.id)! : ph)) };
      st.phases = [...started, ...freshPhases({ ...plan.data, phases: plan.data.phases.filter((ph) => !kept.has(ph.id)) })];
      if (!active() && !st.done) {
        const next = st.phases.find((x) => x.state === 'pending');
        if (next) await start(next);
      }
      await record(who.by, 'replan', 'accepted', {
        version: plan.data.version,
        reason: m.reason,
        pending: st.phases.filter((p) => p.state === 'pending').map((p) => p.id),
      });
      nudged = true;
      return {
        accepted: true,
        by: who.by,
        message: `plan version ${plan.data.version} applies to ${
          st.phases
            .filter((p) => p.state === 'pending')
            .map((p) => p.id)
            .join(', ') || 'no phase'
        }`,
      };
    },
    { validator: (m) => void parse(ReplanSchema, m) },
  );

  if (!input.state) {
    await record(
      input.startedBy,
      'start',
      'started',
      { plan: st.plan.name, version: st.plan.version, daySeconds: st.daySeconds },
      `program:${programId}:start`,
    );
    await start(st.phases[0]!);
  }

  while (!st.done) {
    // A nudge that arrives while this round measures is kept for the next wait.
    nudged = false;
    if (st.pausedSince === null) {
      const p = active();
      if (p) {
        await evaluate(p);
        if (!(await maybeClose(p))) await maybeEscalate(p);
      }
      await maybeWeekly();
    }
    await searchAttributes();
    if (st.done) break;
    const info = workflowInfo();
    if (info.continueAsNewSuggested || info.historyLength > (input.continueAsNewEvents ?? CONTINUE_AS_NEW_EVENTS)) {
      await condition(allHandlersFinished);
      await continueAsNew<typeof migrationProgram>({ ...input, plan: st.plan, daySeconds: st.daySeconds, state: st });
    }
    await condition(() => nudged, st.daySeconds * 1000);
  }
  await record('govloop', 'finish', 'done', { day: day(), phases: st.phases.map((p) => ({ id: p.id, closedDay: p.closedDay })) }, `program:${programId}:done`);
  await condition(allHandlersFinished);
  return status();
}
