import { log } from '@temporalio/activity';
import type { GovConfig } from '../config/load';
import { type Principal, PLATFORM_ADMIN, actorName } from '../governance/authz';
import type { GateResult, ProgramDeliverable, ProgramGate, ProgramPlan } from '../governance/program';
import type { Caller } from '../identity/authenticate';
import { type Authenticator } from '../identity/authenticate';
import { IdentityError } from '../identity/errors';
import { appendAudit } from '../ledger/audit';
import { holdsRoleAnywhere } from '../ledger/authz';
import type { Db } from '../ledger/db';
import { evaluateGates } from '../ledger/program-gates';
import { storeProgramArtifact } from '../ledger/program-artifacts';
import { produceDeliverable } from '../ledger/program-deliverables';

/** Who may do what to the program: a sign-off slot, or running it (extend, pause, resume, replan). */
export type ProgramAct = 'signoff' | 'extend' | 'pause' | 'resume' | 'replan';

export type ProgramAuth = { ok: true; by: string; subject: string; platform: boolean; workload: boolean } | { ok: false; code: string; message: string };

/**
 * The migration program's activities (workflows/migration-program.ts, decision 0027): measured
 * gates, who is calling and in which role, deliverables produced and hashed into the audit chain,
 * and the program's audit rows and webhooks.
 */
export function createProgramActivities({
  db,
  config,
  auth,
  notify,
  clock = () => new Date(),
}: {
  db: Db;
  config: GovConfig;
  auth: Authenticator;
  notify: (config: GovConfig, event: Record<string, unknown>) => Promise<void>;
  clock?: () => Date;
}) {
  /** Does `p` hold `role`: platform-admin from the auth config, any other role as a grant in some tenant. */
  async function holds(p: Principal, role: string): Promise<boolean> {
    return role === PLATFORM_ADMIN ? p.platformAdmin : holdsRoleAnywhere(db, p.subject, role);
  }

  return {
    /** Measures the gates of a phase now, from live data. */
    async evaluateProgramGates(input: { gates: ProgramGate[]; tenants?: string[] }): Promise<GateResult[]> {
      return evaluateGates(db, config, input.gates, clock(), input.tenants ? { tenants: input.tenants } : {});
    },

    /**
     * Who is calling, and whether they hold the plan's platform and workload roles. A caller that
     * cannot be identified, or holds neither role where one is needed, is refused and audited.
     */
    async authorizeProgramCall(input: {
      programId: string;
      act: ProgramAct;
      caller: Caller;
      platformRole: string;
      workloadRole: string;
      phase?: string;
    }): Promise<ProgramAuth> {
      const refuse = async (code: string, message: string, subject: string | null) => {
        await appendAudit(db, {
          actor: subject ?? 'unauthenticated',
          taskId: null,
          action: `program.${input.act}`,
          decision: code,
          detail: { programId: input.programId, phase: input.phase ?? null, message, claimed: input.caller.as ?? null },
        });
        return { ok: false as const, code, message };
      };
      let p: Principal;
      try {
        p = await auth.authenticate(db, input.caller);
      } catch (err) {
        if (err instanceof IdentityError) return refuse(err.code, err.message, null);
        throw err;
      }
      const by = actorName(p);
      const platform = await holds(p, input.platformRole);
      const workload = await holds(p, input.workloadRole);
      const needs = input.act === 'signoff' ? [input.platformRole, input.workloadRole] : [input.platformRole];
      if (!(platform || (input.act === 'signoff' && workload))) {
        return refuse('FORBIDDEN', `${by} holds none of the roles ${needs.join(', ')} (needed to ${input.act} the program)`, by);
      }
      return { ok: true, by, subject: p.subject, platform, workload };
    },

    /** One audit row for a program event (start, sign-off, extension, pause, close, refusal...). */
    async recordProgramEvent(input: {
      programId: string;
      actor: string;
      action: string;
      decision: string;
      detail: Record<string, unknown>;
      dedupeKey?: string;
    }): Promise<void> {
      await appendAudit(db, {
        actor: input.actor,
        taskId: null,
        action: `program.${input.action}`,
        decision: input.decision,
        detail: { programId: input.programId, ...input.detail },
        ...(input.dedupeKey ? { dedupeKey: input.dedupeKey } : {}),
      });
    },

    /**
     * Produces a phase's deliverables from live data, keeps each whole in program_artifacts and
     * puts its hash in the audit chain. Idempotent: the same content is the same row.
     */
    async produceProgramDeliverables(input: {
      programId: string;
      phase: string;
      deliverables: ProgramDeliverable[];
      plan: ProgramPlan;
    }): Promise<{ id: string; kind: string; version: string; sha256: string }[]> {
      const out = [];
      const tenants = input.plan.scope?.tenants;
      for (const d of input.deliverables) {
        const a = await produceDeliverable(db, config, d, clock(), { plan: input.plan, ...(tenants ? { tenants } : {}) });
        await db.tx(async (c) => {
          await storeProgramArtifact(c, input.programId, input.phase, a);
          await appendAudit(c, {
            actor: 'govloop',
            taskId: null,
            action: 'program.deliverable',
            decision: 'produced',
            detail: {
              programId: input.programId,
              phase: input.phase,
              deliverable: a.id,
              kind: a.kind,
              version: a.version,
              sha256: a.sha256,
              sources: a.sources,
            },
            dedupeKey: `program:${input.programId}:deliverable:${a.id}:${a.sha256}`,
          });
        });
        out.push({ id: a.id, kind: a.kind, version: a.version, sha256: a.sha256 });
      }
      return out;
    },

    /** A blocked gate: the webhook names the failing items and the runbook; the audit row is the record. */
    async escalateProgram(input: {
      programId: string;
      phase: string;
      day: number;
      failing: { gate: string; value: number | null; threshold: number; items: string[] }[];
    }): Promise<void> {
      await appendAudit(db, {
        actor: 'govloop',
        taskId: null,
        action: 'program.blocked',
        decision: 'escalated',
        detail: input,
        dedupeKey: `program:${input.programId}:blocked:${input.phase}:${input.day}`,
      });
      log.warn('program blocked', { programId: input.programId, phase: input.phase, day: input.day });
      await notify(config, { event: 'program.blocked', ...input, runbook: 'runbooks/program-gate.md' });
    },
  };
}

export type ProgramActivities = ReturnType<typeof createProgramActivities>;
