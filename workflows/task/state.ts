/**
 * A governed task's memory: everything its parts read and write, in one object. Its helpers only
 * read it or write it (and the search attributes and memo that mirror it). Safe to import from
 * workflow code.
 */
import type { SearchAttributeUpdatePair } from '@temporalio/common';
import { upsertMemo, upsertSearchAttributes } from '@temporalio/workflow';
import type { Observation, Timing } from '../../activities';
import type { Intent } from '../../governance/intent';
import type { Plan } from '../../governance/plan';
import type { Reason } from '../../governance/reasons';
import { type StepTotals, zeroTotals } from '../../governance/step-gate';
import type { LeaseRecord } from '../../governance/step-lease';
import {
  type ApprovalView,
  type CarriedPhase,
  type CarriedTask,
  type CompensationView,
  type Decision,
  GovState,
  type HeldApproval,
  type PreemptRequest,
  type TaskInput,
  type TaskStatus,
} from '../messages';
import { hasPatch } from '../patches';
import * as SA from '../search-attributes';

/** Decided approvals a task carries into its next run, newest first (their outcome may still be asked for). */
const CARRIED_DECIDED_APPROVALS = 50;

export type Usage = CarriedTask['usage'];
/**
 * A settle under way. The run's parts start it where the task ends and hand it back unawaited, so
 * that, as ever, a failure while settling fails the workflow instead of reaching the run's own
 * failure path (which would settle a second time).
 */
export interface Finished {
  settled: Promise<TaskStatus>;
}
export type Finish = (final: GovState) => Finished;
export type Who = { by: string; reason: string };

/** An approval as the task shows it (status, memo). */
export const approvalView = (a: HeldApproval): ApprovalView => ({
  approvalId: a.approvalId,
  tool: a.tool,
  argsDigest: a.argsDigest,
  requester: a.requester,
  costSoFarUsd: a.costSoFarUsd,
  state: a.state,
  tier: a.tier,
  expiresAt: a.expiresAt,
  decidedBy: a.decidedBy,
});

export class TaskState {
  readonly input: TaskInput;
  readonly taskId: string;
  readonly intent: Intent;
  /** What the previous run carried over (continue-as-new, decision 0022); undefined in a task's first run. */
  readonly carried: CarriedTask | undefined;
  state: GovState = GovState.Admitting;
  decision: Decision = 'pending';
  reasons: Reason[] = [];
  plan: Plan | null = null;
  nodes: string[] = [];
  progress: number | null = null;
  cancelled: Who | null = null;
  finished = false;
  totals: StepTotals = zeroTotals;
  stepSeq = 0;
  lastObservation: Observation | null = null;
  usage: Usage = { gpuSeconds: 0, tokensIn: 0, tokensOut: 0, tokensProcessed: 0, costMicros: 0 };
  /** The step chain: every step, grant and report runs after the one before it. */
  gate: Promise<unknown> = Promise.resolve();
  readonly approvals = new Map<string, HeldApproval>();
  approval: HeldApproval | null = null;
  /** Completed side-effecting tool steps, oldest first: what rollback undoes, newest first. */
  readonly sideEffects: { seq: number; tool: string; args: unknown }[] = [];
  readonly compensations: CompensationView[] = [];
  resolution: Who | null = null;
  /** A preemption asked for and not yet carried out; how many this task has had. */
  preemptReq: PreemptRequest | null = null;
  preemptions = 0;
  /** Who submitted the task, as admission authenticated them (the typed claim until then). */
  requester: string;
  /** How the workflow paces itself and where it sends cluster work: from admission, the worker's config. */
  timing: Timing = { pollMillis: 1000, queueRetryMillis: 1000, dispatchQueue: '' };
  /** A step's input the ledger refused for good (a data error): the task ends Failed with it. */
  fatal: Reason | null = null;
  /** How many times a call ran out of retries and an operator was asked. */
  escalations = 0;
  /** The cluster job this task runs (or ran before a preemption). */
  job: string | null = null;
  /** Admission's attempt counter: its idempotency key in the ledger. */
  attempt = 0;
  /** How many runs this task had before this one (continue-as-new, decision 0022). */
  runs = 0;
  /** The cluster said the job changed (a signal): look now rather than at the next poll. */
  jobChanged = false;
  /** A released task woke this one (the requeue signal): a queued task asks again now, not at its next recheck. */
  requeued = false;

  /**
   * The search attributes and memo that mirror the task are written once per activation, after its
   * synchronous work, with the state it ended in (mirror): Admitting and the task's identity in one
   * upsert, Reserved and Running in one. Each upsert is a history event and a visibility write on
   * the server (issue 13, decision 0035). Runs recorded before write one per call, as they did.
   */
  readonly coalesced = hasPatch('coalesced-visibility');
  private mirrorPending: SearchAttributeUpdatePair[] | null = null;

  constructor(input: TaskInput) {
    this.input = input;
    this.taskId = input.taskId;
    this.intent = input.intent;
    this.requester = input.requester;
    // A run that continues an earlier one starts from what that run carried, not from admission.
    const carried = input.carried;
    this.carried = carried;
    if (carried) {
      ({
        state: this.state,
        decision: this.decision,
        reasons: this.reasons,
        plan: this.plan,
        job: this.job,
        nodes: this.nodes,
        progress: this.progress,
        usage: this.usage,
        totals: this.totals,
        stepSeq: this.stepSeq,
        requester: this.requester,
        timing: this.timing,
        attempt: this.attempt,
        preemptions: this.preemptions,
        escalations: this.escalations,
        runs: this.runs,
      } = carried);
      this.sideEffects.push(...carried.sideEffects);
      for (const a of carried.approvals) this.approvals.set(a.approvalId, a);
      this.approval = carried.approvalId === null ? null : (this.approvals.get(carried.approvalId) ?? null);
    }
  }

  awaiting(): boolean {
    return this.state === GovState.AwaitingApproval || this.state === GovState.Escalated;
  }
  /** A tool call waits for a human and its step has no answer yet. */
  held(): boolean {
    return this.approval !== null && this.approval.state === 'pending' && this.approval.outcome === null;
  }
  costUsd(): number {
    return this.usage.costMicros / 1e6;
  }

  /** Runs fn after every step before it (one at a time, each against the counters the last one left). */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.gate.then(fn);
    this.gate = run.catch(() => undefined);
    return run;
  }

  setState(next: GovState): void {
    this.state = next;
    if (this.coalesced) this.mirror([]);
    else this.writeMirror([]);
  }

  /**
   * Writes `extra` and the state's search attributes and runbook memo at the end of this
   * activation's synchronous work: one upsert and one memo change however many states it passed
   * through (a microtask, so before the activation's commands go out; deterministic on replay).
   */
  mirror(extra: SearchAttributeUpdatePair[]): void {
    if (this.mirrorPending !== null) {
      this.mirrorPending.push(...extra);
      return;
    }
    this.mirrorPending = [...extra];
    void Promise.resolve().then(() => {
      const pairs = this.mirrorPending ?? [];
      this.mirrorPending = null;
      this.writeMirror(pairs);
    });
  }

  /** The state (and `extra`) into the search attributes, and its runbook into the memo, now. */
  private writeMirror(extra: SearchAttributeUpdatePair[]): void {
    upsertSearchAttributes([...extra, { key: SA.GovState, value: this.state }, { key: SA.GovCostUsd, value: this.usage.costMicros / 1e6 }]);
    upsertMemo({ runbook: `${SA.RUNBOOK_BASE}${this.state.toLowerCase()}.md` });
  }

  status(): TaskStatus {
    const { usage, totals, approval } = this;
    return {
      taskId: this.taskId,
      name: this.intent.name,
      kind: this.intent.kind,
      attribution: this.intent.attribution,
      decision: this.decision,
      state: this.state,
      reasons: this.reasons,
      plan: this.plan,
      nodes: this.nodes,
      usage: {
        gpuSeconds: usage.gpuSeconds,
        gpuHours: usage.gpuSeconds / 3600,
        tokensIn: usage.tokensIn,
        tokensOut: usage.tokensOut,
        tokensProcessed: usage.tokensProcessed,
        steps: totals.steps,
        toolCalls: totals.toolCalls,
      },
      costUsd: usage.costMicros / 1e6,
      progress: this.progress,
      approval: approval && approvalView(approval),
      compensations: [...this.compensations],
      requester: this.requester,
      runs: this.runs + 1,
    };
  }

  /** What the next run starts from (CarriedTask), with the step leases' own part. */
  carry(phase: CarriedPhase, leased: { leased?: LeaseRecord[] }): CarriedTask {
    const all = [...this.approvals.values()];
    const decided = all.filter((a) => a.state !== 'pending').slice(-CARRIED_DECIDED_APPROVALS);
    return {
      phase,
      runs: this.runs + 1,
      state: this.state,
      decision: this.decision,
      reasons: this.reasons,
      plan: this.plan,
      job: this.job,
      nodes: this.nodes,
      progress: this.progress,
      usage: this.usage,
      totals: this.totals,
      stepSeq: this.stepSeq,
      requester: this.requester,
      timing: this.timing,
      attempt: this.attempt,
      preemptions: this.preemptions,
      escalations: this.escalations,
      sideEffects: [...this.sideEffects],
      approvals: [...all.filter((a) => a.state === 'pending'), ...decided],
      approvalId: this.approval?.approvalId ?? null,
      ...leased,
    };
  }
}
