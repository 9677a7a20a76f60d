/**
 * Every message a governed task understands, and the types they carry. Safe to import from
 * workflow code and from clients (no Node builtins, no Temporal client/worker imports).
 */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import { type BudgetKey, scopeLabel } from '../governance/budget-scope';
import type { Timing } from '../config/task-queues';
import type { Intent } from '../governance/intent';
import type { Plan } from '../governance/plan';
import type { Reason } from '../governance/reasons';
import type { StepTotals, StepUsage } from '../governance/step-gate';
import type { LeaseRecord } from '../governance/step-lease';
import type { StepLeaseAnswer, StepLeaseRequest } from './leased-steps';
import type { z } from 'zod';
import type {
  ApprovalDecisionSchema,
  CallerFields,
  CancelRequestSchema,
  CancelSignalSchema,
  FinishRequestSchema,
  FinishSignalSchema,
  LeaseRequestSchema,
  LeaseReturnSchema,
  LeaseSpendSchema,
  PreemptRequestSchema,
  PreemptSignalSchema,
  RequeueSignalSchema,
  ResolveRequestSchema,
} from './schemas';

export { TASK_QUEUE_CONTROL, clusterTaskQueue } from '../config/task-queues';

/** GovState values, as shown in Temporal UI. */
export const GovState = {
  Admitting: 'Admitting',
  Queued: 'Queued',
  Rejected: 'Rejected',
  Reserved: 'Reserved',
  Dispatched: 'Dispatched',
  Running: 'Running',
  /** Suspended for another task (or by an operator) after a checkpoint; requeued, resumes from the checkpoint. */
  Preempted: 'Preempted',
  /** A high-risk tool call waits for a human; Escalated once the next approver tier was notified. */
  AwaitingApproval: 'AwaitingApproval',
  Escalated: 'Escalated',
  /** A compensation failed for good: an operator must undo by hand and resolve the task. */
  NeedsOperator: 'NeedsOperator',
  Settling: 'Settling',
  Succeeded: 'Succeeded',
  CapExceeded: 'CapExceeded',
  Cancelled: 'Cancelled',
  Failed: 'Failed',
} as const;
export type GovState = (typeof GovState)[keyof typeof GovState];
export const FINAL_STATES: GovState[] = ['Rejected', 'Succeeded', 'CapExceeded', 'Cancelled', 'Failed'];

export type Decision = 'pending' | 'admitted' | 'queued' | 'rejected';

export interface TaskInput {
  taskId: string;
  intent: Intent;
  /** A claim: taken as the requester only under `auth: none`, where it is marked unverified. */
  requester: string;
  /** The submitter's credential; admission derives the requester from it (decision 0018). */
  credential?: string;
  /** Set only by the task itself when it continues as new: where the previous run stopped (decision 0022). */
  carried?: CarriedTask;
}

/** A tool call held for a human, with what the workflow needs to time it. */
export interface HeldApproval extends ApprovalView {
  seq: number;
  step: StepUsage;
  requestedAtMs: number;
  escalateAfterMs: number;
  expiresAtMs: number;
  tiers: number;
  /** The gate's answer to the held step once decided. */
  outcome: StepAnswer | null;
}

/** Where a run of a governed task stops and its next run (continue-as-new) picks up. */
export type CarriedPhase =
  /** Admission's queue: waiting for quota or budget (again after a preemption when `preemptions` > 0). */
  | 'admission'
  /** Admitted and reserved; the cluster has no room yet. */
  | 'dispatch'
  /** The cluster job runs; the new run watches it. */
  | 'running'
  /** Hosted work (agent steps): the new run takes the next step. */
  | 'hosted';

/**
 * Everything a governed task knows that its next run needs: the ledger holds the money, this holds
 * the loop's own memory (plan, job, counters, the gate's totals, the rollback stack, approvals).
 */
export interface CarriedTask {
  phase: CarriedPhase;
  /** How many runs this task has had before the one that starts with this. */
  runs: number;
  state: GovState;
  decision: Decision;
  reasons: Reason[];
  plan: Plan | null;
  job: string | null;
  nodes: string[];
  progress: number | null;
  usage: { gpuSeconds: number; tokensIn: number; tokensOut: number; tokensProcessed: number; costMicros: number };
  totals: StepTotals;
  stepSeq: number;
  requester: string;
  /** How the task paces itself and where its cluster work goes, as admission told the first run. */
  timing: Timing;
  /** Admission's attempt counter (its idempotency key goes on counting). */
  attempt: number;
  preemptions: number;
  escalations: number;
  /** Completed side-effecting steps: what a rollback would undo. */
  sideEffects: { seq: number; tool: string; args: unknown }[];
  /** Approvals still pending and the most recent decided ones (their outcome can still be asked for). */
  approvals: HeldApproval[];
  /** The approval in force or last decided, by id. */
  approvalId: string | null;
  /** Step leases (decision 0030): the open ones and the last closed ones; absent when the task never had one. */
  leased?: LeaseRecord[];
}

export interface UsageSummary {
  gpuSeconds: number;
  gpuHours: number;
  tokensIn: number;
  tokensOut: number;
  tokensProcessed: number;
  steps: number;
  toolCalls: number;
}

export interface TaskStatus {
  taskId: string;
  name: string;
  kind: Intent['kind'];
  attribution: Intent['attribution'];
  decision: Decision;
  state: GovState;
  reasons: Reason[];
  plan: Plan | null;
  nodes: string[];
  usage: UsageSummary;
  costUsd: number;
  progress: number | null;
  /** The approval request in force or last decided (agent tasks). */
  approval?: ApprovalView | null;
  compensations?: CompensationView[];
  /** Who submitted it, as admission authenticated them; "(unverified)" under `auth: none`. */
  requester?: string;
  /** Which run of the task this is: 1, then one more at each continue-as-new (absent in older versions). */
  runs?: number;
}

/**
 * The gate's answer to one step. `degrade`: run the step on `fallbackModel` (it is charged so);
 * `await-approval`: the tool call waits for a human, see `approvalOutcomeUpdate(approvalId)`.
 */
export interface StepAnswer {
  answer: 'allow' | 'degrade' | 'deny' | 'await-approval';
  reason: Reason | null;
  approvalId: string | null;
  fallbackModel: string | null;
  step: number;
  costUsd: number;
  /** An approved high-risk call: govloop's signed token the tool executor checks before the call runs. */
  approvalToken?: string | null;
  /**
   * A step sent with `finish`: true when the task now finishes (it settles after this answer), or
   * the refusal of the finish (the step's own answer stands). Absent when the step did not run.
   */
  finished?: true | { refused: { code: string; message: string } };
}

/** A tool call waiting for (or decided by) a human, as the task shows it. */
export interface ApprovalView {
  approvalId: string;
  tool: string;
  argsDigest: string;
  requester: string;
  costSoFarUsd: number;
  state: 'pending' | 'approved' | 'rejected' | 'expired';
  tier: number;
  expiresAt: string;
  decidedBy: string | null;
}

/** What an approver sends: the approval, why, and a credential (the approver is derived from it). */
export type ApprovalDecision = z.infer<typeof ApprovalDecisionSchema>;

/** Recorded, or refused with a code: self-approval | missing-role | expired | already-decided | not-found | an identity code (UNAUTHENTICATED, TOKEN_EXPIRED, …). */
export type ApprovalAnswer =
  | { recorded: true; approvalId: string; state: 'approved' | 'rejected' | 'expired'; by: string; idempotent: boolean }
  | { recorded: false; approvalId: string; code: string; message: string; state: string | null };

/** How an approval ended for the agent: the decision, and the gate's answer to the step it held. */
export interface ApprovalOutcome {
  approvalId: string;
  state: 'approved' | 'rejected' | 'expired';
  decidedBy: string | null;
  step: StepAnswer | null;
}

export interface CompensationView {
  step: number;
  tool: string;
  state: 'pending' | 'done' | 'failed';
  error: string | null;
}

export interface AdmissionAnswer {
  taskId: string;
  decision: Decision;
  reasons: Reason[];
  state: GovState;
  /** Asked for with the admission (`stepLease`): the step lease granted once the task runs, or why not. */
  stepLease?: StepLeaseAnswer;
}
/** What a submit may ask of admission besides its answer: a step lease for the agent's first steps (decision 0030). */
export interface AdmissionRequest {
  stepLease?: StepLeaseRequest;
}

export const statusQuery = defineQuery<TaskStatus>('status');
/** Resolves as soon as admission has decided (admitted, queued or rejected). */
export const admissionUpdate = defineUpdate<AdmissionAnswer>('admission');
/** The same update with its request (the task's handler takes both: no argument is no request). */
export const admissionWithRequestUpdate = defineUpdate<AdmissionAnswer, [AdmissionRequest]>('admission');
/** The per-step gate: an agent reports the step it is about to commit and gets allow | deny. */
export const stepUpdate = defineUpdate<StepAnswer, [StepUsage & CallerFields & { finish?: boolean }]>('step');
/** An agent or hosted-inference task says it is done. */
export const approveUpdate = defineUpdate<ApprovalAnswer, [ApprovalDecision]>('approve');
export const rejectUpdate = defineUpdate<ApprovalAnswer, [ApprovalDecision]>('reject');
/** Waits until the approval is decided; answers with the held step's fate. */
export const approvalOutcomeUpdate = defineUpdate<ApprovalOutcome, [{ approvalId: string }]>('approvalOutcome');
/** An operator declares the side effects a failed compensation left behind handled (NeedsOperator → final state). */
export const resolveUpdate = defineUpdate<{ state: GovState } | TaskCallRefused, [z.infer<typeof ResolveRequestSchema>]>('resolve');

/** A task call (cancel, finish, preempt) taken, or refused with a code and audited. */
export type TaskCallRefused = { accepted: false; code: string; message: string };
export type TaskCallAnswer = { accepted: true; by: string; state: GovState } | TaskCallRefused;
/** People cancel, finish and preempt through updates: validated, authenticated, answered. */
export const cancelTaskUpdate = defineUpdate<TaskCallAnswer, [z.infer<typeof CancelRequestSchema>]>('cancelTask');
export const finishTaskUpdate = defineUpdate<TaskCallAnswer, [z.infer<typeof FinishRequestSchema>]>('finishTask');
export const preemptTaskUpdate = defineUpdate<TaskCallAnswer, [z.infer<typeof PreemptRequestSchema>]>('preemptTask');

/**
 * Signals, for govloop's own workflows (which cannot send updates) and older clients. Each is
 * checked before it acts: a budget controller's cancel and a preemptor's preempt against the
 * ledger row that ordered them, anything else by its credential. A payload that fails its schema
 * is ignored.
 */
export const finishSignal = defineSignal<[z.infer<typeof FinishSignalSchema>]>('finish');
export const cancelSignal = defineSignal<[z.infer<typeof CancelSignalSchema>]>('cancel');

/** Who preempts a task and why: `preemptor` is the task it makes room for (null: an operator). */
export type PreemptRequest = z.infer<typeof PreemptSignalSchema>;
/** Checkpoint, suspend after the grace period, requeue; the task resumes from its checkpoint when readmitted. */
export const preemptSignal = defineSignal<[PreemptRequest]>('preempt');
/** The cluster's watch saw the task's job change (Kubernetes backend): observe it now, not at the next poll. */
export const jobChangedSignal = defineSignal<[{ job: string; phase: string }]>('jobChanged');
/**
 * GPUs of the task's quota (or cluster capacity) were released: a task waiting for them asks
 * admission (or dispatch) again now, not at its next recheck.
 */
export const requeueSignal = defineSignal<[z.infer<typeof RequeueSignalSchema>]>('requeue');

/** A budget's key: its scope (`*` for a level it does not narrow) and period. */
/** The budget controller: one long-lived workflow per budget, id `budget:<tenant>/<team>/<project>:<period>`. */
export const budgetControllerId = (k: BudgetKey) => `budget:${scopeLabel(k)}:${k.period}`;
/** Something changed (a budget set, a large charge): look at the ledger now instead of at the next poll. */
export const budgetNudgeSignal = defineSignal('budgetNudge');
export interface BudgetControllerState {
  budget: BudgetKey;
  scope: string | null;
  window: string | null;
  step: 'ok' | 'notify' | 'throttle' | 'queue' | 'preempt';
  sharePct: number | null;
  crossing: number;
  rounds: number;
  preempted: string[];
}
export const budgetStatusQuery = defineQuery<BudgetControllerState>('budgetStatus');

/** Budget leases, through the budget controller of the scope's budget (sdk `lease()`): exactly one of usd or tokens (tokens at `model`'s output price). */
export type LeaseRequest = z.infer<typeof LeaseRequestSchema>;
export type LeaseAnswer =
  { granted: true; leaseId: string; amountUsd: number; expiresAt: string; step: string } | { granted: false; leaseId: string; reason: Reason };
export const leaseUpdate = defineUpdate<LeaseAnswer, [LeaseRequest]>('lease');
export type LeaseSpend = z.infer<typeof LeaseSpendSchema>;
export const leaseSpendUpdate = defineUpdate<{ recorded: boolean; spentUsd?: number; leftUsd?: number; duplicate?: boolean; code?: string }, [LeaseSpend]>(
  'leaseSpend',
);
export const leaseReturnUpdate = defineUpdate<{ closed: boolean; returnedUsd: number }, [z.infer<typeof LeaseReturnSchema>]>('leaseReturn');
/** Error types a refused lease call carries (the SDK reads them): a payload its schema refuses, a lease of another budget. */
export const LeaseErrors = { InvalidLeaseRequest: 'InvalidLeaseRequest', UnknownLease: 'UnknownLease' } as const;

export type { BudgetKey, Timing };
