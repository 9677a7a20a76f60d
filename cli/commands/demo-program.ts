import type { Client, WorkflowHandle } from '@temporalio/client';
import type { GovConfig } from '../../config/load';
import { type BudgetKey, scopeOf } from '../../governance/budget-scope';
import type { ProgramPlan } from '../../governance/program';
import { grantAccess } from '../../ledger/approvals';
import { setBudget } from '../../ledger/budgets';
import type { Db } from '../../ledger/db';
import { createKey } from '../../ledger/keys';
import { startBudgetController } from '../../runtime/schedules';
import type { GovloopClient } from '../../sdk';
import {
  PROGRAM_WORKFLOW_ID,
  type ProgramAnswer,
  type ProgramStatus,
  migrationProgram,
  programNudgeSignal,
  programSignoffUpdate,
  programStatusQuery,
} from '../../workflows/migration-program';
import { CommandContext } from '../context';
import { usd } from '../util';
import { runOnboard } from './onboard';

/**
 * The migration program in the demo (issue 12): the demo's organisation (who holds which role),
 * the program started next to the demo's workload at accelerated days, the two landing paths
 * onboarded, a budget-ladder drill, and the two sign-offs of each phase once its gates pass. The
 * gates are measured by the workflow from the ledger the demo fills; nothing here ticks one.
 */

type Say = (m: string) => void;

/**
 * The demo organisation: the people the plan's team contract names (config/program.yaml) with
 * the roles the contract asks of them, and the platform owner. Under `auth: none` everyone may
 * act; the program's sign-offs below still use API keys, so its four eyes are two verified people.
 */
export const DEMO_PLATFORM_OWNER = 'pat';
export const DEMO_WORKLOAD_OWNER = 'oli';
export const DEMO_ROSTER: { tenant: string; user: string; role: string }[] = [
  { tenant: 'acme', user: 'ana', role: 'budget-owner' },
  { tenant: 'acme', user: 'oli', role: 'tenant-admin' },
  { tenant: 'acme', user: 'sam', role: 'requester' },
  { tenant: 'acme', user: 'rui', role: 'requester' },
  { tenant: 'acme', user: 'sue', role: 'requester' },
  { tenant: 'globex', user: 'gil', role: 'budget-owner' },
  { tenant: 'globex', user: 'gil', role: 'requester' },
  { tenant: 'globex', user: 'gus', role: 'tenant-admin' },
];

/** The two landing paths the demo onboards: a new use case on each golden path. */
export const DEMO_LANDING_PATHS = [
  { tenant: 'acme', team: 'search', useCase: 'query-rewrite', kind: 'inference', owner: 'sam' },
  { tenant: 'acme', team: 'research', useCase: 'reranker-distill', kind: 'training', owner: 'rui' },
] as const;

export interface DemoProgram {
  handle: WorkflowHandle<typeof migrationProgram>;
  /** Signs each phase off (platform owner, then workload owner) once its gates pass; resolves when all phases closed. */
  drive(timeoutMs: number): Promise<ProgramStatus>;
}

/** Grants the roster, issues the two signers' keys and starts the program. */
export async function startDemoProgram(
  db: Db,
  client: Client,
  o: { plan: ProgramPlan; daySeconds: number; taskQueue: string; say: Say },
): Promise<DemoProgram> {
  for (const g of DEMO_ROSTER) await grantAccess(db, { ...g, by: 'demo' });
  o.say(`roles: ${DEMO_ROSTER.map((g) => `${g.user} ${g.role}@${g.tenant}`).join(', ')}; platform owner ${DEMO_PLATFORM_OWNER}`);
  const keys: Record<string, string> = {
    [DEMO_PLATFORM_OWNER]: (await createKey(db, 'acme', 'demo', DEMO_PLATFORM_OWNER)).key,
    [DEMO_WORKLOAD_OWNER]: (await createKey(db, 'acme', 'demo', DEMO_WORKLOAD_OWNER)).key,
  };
  const handle = await client.workflow.start(migrationProgram, {
    workflowId: PROGRAM_WORKFLOW_ID,
    taskQueue: o.taskQueue,
    args: [{ plan: o.plan, daySeconds: o.daySeconds, startedBy: DEMO_PLATFORM_OWNER }],
  });
  o.say(`program "${o.plan.name}" started: ${o.plan.phases.length} phases over 90 days, a day every ${o.daySeconds} s`);

  const sign = async (phase: string, who: string): Promise<ProgramAnswer> =>
    handle.executeUpdate(programSignoffUpdate, {
      args: [{ phase, reason: `demo: ${phase} exit gates measured and passing`, credential: keys[who]! }],
    });

  async function drive(timeoutMs: number): Promise<ProgramStatus> {
    const end = Date.now() + timeoutMs;
    const seen = new Set<string>();
    for (;;) {
      const s = await handle.query(programStatusQuery);
      for (const p of s.phases)
        if (p.state === 'closed' && !seen.has(p.id)) {
          seen.add(p.id);
          o.say(
            `program: phase ${p.id} closed on day ${p.closedDay}; deliverables ${p.deliverables.map((d) => `${d.id} ${d.sha256.slice(0, 12)}`).join(', ')}`,
          );
        }
      if (s.done) return s;
      const a = s.phases.find((p) => p.id === s.current);
      if (Date.now() > end) {
        const failing = a?.gates.filter((g) => !g.pass).map((g) => `${g.id}: ${g.failing.slice(0, 3).join('; ') || g.detail}`) ?? [];
        throw new Error(`the program did not finish: day ${s.day}, phase ${s.current ?? '-'}${failing.length ? `, failing: ${failing.join(' | ')}` : ''}`);
      }
      if (a && a.gates.length > 0 && a.gates.every((g) => g.pass)) {
        for (const who of [DEMO_PLATFORM_OWNER, DEMO_WORKLOAD_OWNER]) {
          if (a.signoffs.platform?.by === who || a.signoffs.workload?.by === who) continue;
          const r = await sign(a.id, who);
          o.say(`program: ${r.accepted ? r.message : `${who}'s sign-off of ${a.id} refused: ${r.code} ${r.message}`}`);
          if (!r.accepted) break;
        }
        continue;
      }
      await handle.signal(programNudgeSignal);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  return { handle, drive };
}

/** Onboards the two landing paths through `govloop onboard`'s steps, against the running stack. */
export async function onboardLandingPaths(dataDir: string, say: Say): Promise<void> {
  // An empty credential: the demo acts by name (auth: none), whatever GOVLOOP_API_KEY says.
  const ctx = new CommandContext(dataDir, '');
  try {
    for (const p of DEMO_LANDING_PATHS) {
      const r = await runOnboard(ctx, { ...p, budgetUsd: 500, as: DEMO_PLATFORM_OWNER, out: dataDir, timeoutSeconds: 300, json: true }, () => undefined);
      say(`onboard ${r.useCase} (${r.kind}, template ${r.template}): first task ${r.outcome.state} in ${r.seconds.toFixed(2)} s`);
      if (r.outcome.state !== 'Succeeded') throw new Error(`landing path ${r.useCase} ended ${r.outcome.state}`);
    }
  } finally {
    await ctx.close();
  }
}

/**
 * The budget-ladder drill: a support agent runs while its team's month budget is cut below what
 * the team has spent and reserved, so the real controller walks every step (notify, throttle,
 * queue, preempt) and the agent's steps are degraded; then the budget is put back.
 */
export async function ladderDrill(
  db: Db,
  client: Client,
  gov: GovloopClient,
  o: { config: GovConfig; taskQueue: string; agentIntent: unknown; say: Say; restoreUsd: number },
): Promise<void> {
  const scope = { tenant: 'acme', team: 'support' };
  const key: BudgetKey = { ...scopeOf(scope), period: 'month' };
  const a = await gov.submit(o.agentIntent, { requester: 'sue' });
  if (a.decision !== 'admitted') throw new Error(`ladder drill: the drill agent was not admitted (${a.decision})`);
  const since = new Date();
  const cutUsd = 1;
  await setBudget(db, scope, 'month', cutUsd, 'demo');
  await startBudgetController(client, key, o.taskQueue);
  o.say(`ladder drill: acme/support month budget cut to ${usd(cutUsd)}, below what the team spent and reserved`);
  const fired = await waitFor(async () => {
    const { rows } = await db.query<{ step: string }>(
      `SELECT DISTINCT e.step FROM ladder_events e JOIN budgets b ON b.id = e.budget_id
        WHERE b.tenant = 'acme' AND b.team = 'support' AND b.project = '*' AND b.period = 'month' AND e.at >= $1`,
      [since],
    );
    const steps = rows.map((r) => r.step);
    return steps.includes('preempt') ? steps : null;
  }, 60_000);
  o.say(`ladder drill: the controller fired ${['notify', 'throttle', 'queue', 'preempt'].filter((s) => fired.includes(s)).join(', ')}`);
  const answers: string[] = [];
  for (const step of [
    { tokensIn: 900, tokensOut: 120, contextTokens: 900 },
    { tokensIn: 1200, tokensOut: 160, contextTokens: 2100 },
  ]) {
    const r = await gov.step(a.taskId, step, { as: 'sue' });
    answers.push(r.answer);
    if (r.answer === 'deny') break;
  }
  await gov.finish(a.taskId, 'sue');
  o.say(`ladder drill: the agent's steps under the cut budget: ${answers.join(', ')}`);
  await setBudget(db, scope, 'month', o.restoreUsd, 'demo');
  await startBudgetController(client, key, o.taskQueue);
  o.say(`ladder drill: acme/support month budget back to ${usd(o.restoreUsd)}`);
}

async function waitFor<T>(probe: () => Promise<T | null>, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== null) return v;
    if (Date.now() > end) throw new Error('ladder drill: the budget controller did not reach the preempt step in time');
    await new Promise((r) => setTimeout(r, 250));
  }
}
