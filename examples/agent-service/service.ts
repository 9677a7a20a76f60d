import type { IntentInput } from '../../governance/intent';
import type { GovloopClient, StepAnswer } from '../../sdk';
import { type AgentScript, scriptedCalls } from './fake-model';

/** What the service itself saw and reported: the ledger must agree with it exactly. */
export interface AgentReport {
  taskId: string;
  state: string;
  answers: StepAnswer['answer'][];
  /** Tokens the service reported on steps the gate let run, by the model they ran on. */
  reported: Record<string, { tokensIn: number; tokensOut: number }>;
}

export interface RunOptions {
  intent: IntentInput;
  script: AgentScript;
  requester: string;
  /** Decides held tool calls (a stand-in for the human in the loop; it must not be the requester). */
  approver?: (approvalId: string) => Promise<void>;
  /**
   * The tool executor's check before an approved high-risk call runs: the approval token govloop
   * signed must verify for this tool and these exact arguments. Null: run it; a string: refused.
   */
  checkApproval?: (tool: string, args: unknown, token: string | null | undefined) => string | null;
}

/**
 * Runs one scripted agent through the governance loop: every model or tool call goes through the
 * gate first; `allow` runs it on the asked model, `degrade` on the plan's fallback, `await-approval`
 * waits for a human, `deny` ends the agent's loop.
 */
export async function runAgent(gov: GovloopClient, o: RunOptions): Promise<AgentReport> {
  const admission = await gov.submit(o.intent, { requester: o.requester });
  const report: AgentReport = { taskId: admission.taskId, state: admission.state, answers: [], reported: {} };
  if (admission.decision === 'rejected') return report;
  const primary = o.intent.attribution.model;
  const count = (model: string, c: { tokensIn: number; tokensOut: number }) => {
    const r = (report.reported[model] ??= { tokensIn: 0, tokensOut: 0 });
    r.tokensIn += c.tokensIn;
    r.tokensOut += c.tokensOut;
  };
  let stopped = false;
  for (const call of scriptedCalls(o.script)) {
    let a = await gov.step(admission.taskId, { ...call, model: primary });
    if (a.answer === 'await-approval') {
      if (o.approver) await o.approver(a.approvalId!);
      const outcome = await gov.waitForApproval(a.approvalId!);
      a = outcome.step ?? a;
      // The call itself runs only with govloop's signed approval of exactly these arguments.
      if ((a.answer === 'allow' || a.answer === 'degrade') && o.checkApproval && call.tool) {
        const refused = o.checkApproval(call.tool, call.toolArgs ?? null, a.approvalToken);
        if (refused) {
          report.answers.push('deny');
          stopped = true;
          break;
        }
      }
    }
    report.answers.push(a.answer);
    if (a.answer === 'allow') count(primary, call);
    else if (a.answer === 'degrade') count(a.fallbackModel!, call);
    else {
      stopped = true;
      break;
    }
  }
  const status = await gov.status(admission.taskId);
  if (!stopped || status.state === 'Running') await gov.finish(admission.taskId, o.requester);
  report.state = (await gov.result(admission.taskId)).state;
  return report;
}

/** Runs many agents at once, at most `concurrency` in flight. */
export async function runAgents(gov: GovloopClient, runs: RunOptions[], concurrency: number): Promise<AgentReport[]> {
  const out: AgentReport[] = new Array(runs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, runs.length) }, async () => {
      while (next < runs.length) {
        const i = next++;
        out[i] = await runAgent(gov, runs[i]!);
      }
    }),
  );
  return out;
}
