import { randomBytes } from 'node:crypto';
import {
  Client,
  Connection,
  ServiceError,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  WorkflowUpdateRPCTimeoutOrCancelledError,
  WithStartWorkflowOperation,
  type WorkflowHandle,
  isGrpcServiceError,
} from '@temporalio/client';
import { z } from 'zod';
import { type BudgetKey, scopeOf } from '../governance/budget-scope';
import { Intent } from '../governance/intent';
import { type StepUsage, StepUsageSchema } from '../governance/step-gate';
import { budgetController, governedTask } from '../workflows';
import { TaskErrors } from '../workflows/governed-task';
import { type LeasedGateOptions, LeasedStepGate } from './leased-steps';
import {
  type AdmissionAnswer,
  type ApprovalAnswer,
  type ApprovalOutcome,
  type GovState,
  type StepAnswer,
  TASK_QUEUE_CONTROL,
  type TaskStatus,
  admissionWithRequestUpdate,
  approvalOutcomeUpdate,
  approveUpdate,
  cancelTaskUpdate,
  finishTaskUpdate,
  preemptTaskUpdate,
  rejectUpdate,
  resolveUpdate,
  statusQuery,
  type TaskCallAnswer,
  stepUpdate,
  budgetControllerId,
  budgetNudgeSignal,
} from '../workflows/messages';
import { GovState as GovStateKey } from '../workflows/search-attributes';
import {
  ApprovalDecisionSchema,
  ApprovalOutcomeRequestSchema,
  CallerSchema,
  CancelRequestSchema,
  FinishRequestSchema,
  NameText,
  PreemptRequestSchema,
  ReasonText,
  ResolveRequestSchema,
  StepRequestSchema,
} from '../workflows/schemas';
import { settings } from '../config/settings';
import { GovloopAccessError, GovloopInputError, GovloopNotFoundError, GovloopStateError, GovloopWorkerError, check } from './errors';
import { BudgetLease, LeaseOptions, Requester } from './budget-lease';

/** The admission update's id prefix; each submit adds its own suffix, so its retries attach to its own admission. */
const ADMISSION_UPDATE_ID = 'admission';

export type { AdmissionAnswer, ApprovalAnswer, ApprovalOutcome, StepAnswer, TaskStatus, StepUsage };
export { GovloopAccessError, GovloopInputError, GovloopLeaseError, GovloopNotFoundError, GovloopStateError, GovloopWorkerError } from './errors';
export { BudgetLease, type LeaseOptions } from './budget-lease';
export {
  GovloopLeaseReportError,
  LeasedGateOptions,
  type LeasedCloseAnswer,
  type LeasedStepAnswer,
  LeasedStepErrors,
  LeasedStepGate,
  type SyncReason,
} from './leased-steps';

/** Approval ids are `<taskId>.a<step>`: the task is found from the id alone. */
export function taskOfApproval(approvalId: string): string {
  const m = /^(.+)\.a\d+$/.exec(approvalId);
  if (!m) throw new GovloopInputError([{ path: 'approvalId', message: 'expected <taskId>.a<step>, as the step gate answered' }]);
  return m[1]!;
}

/** The one-line outcome of a task, as `govloop submit --json` prints it. */
export interface TaskOutcome {
  taskId: string;
  decision: TaskStatus['decision'];
  reasons: TaskStatus['reasons'];
  state: GovState;
  usage: TaskStatus['usage'] | null;
  costUsd: number | null;
}

export const outcomeOf = (s: TaskStatus): TaskOutcome => ({
  taskId: s.taskId,
  decision: s.decision,
  reasons: s.reasons,
  state: s.state,
  usage: s.usage,
  costUsd: s.costUsd,
});

const TaskId = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[A-Za-z0-9._:-]+$/, 'letters, digits, ".", "_", ":" and "-"');
/** A person's decision: why, and (under `auth: none` only) a typed name; `by` is the older spelling of `as`. */
const Decision = z
  .strictObject({ by: NameText.optional(), as: NameText.optional(), reason: ReasonText })
  .transform(({ by, as, reason }) => ({ reason, ...((as ?? by) ? { as: (as ?? by)! } : {}) }));
const ListFilter = z.strictObject({
  state: z.string().min(1).optional(),
  tenant: z.string().min(1).optional(),
  team: z.string().min(1).optional(),
  kind: z.string().min(1).optional(),
  limit: z.number().int().positive().max(10_000).default(100),
});

/** Visibility query quoting: single quotes doubled away. */
const quote = (s: string) => `'${s.replace(/'/g, "''")}'`;

/**
 * The server refuses an update outright (FAILED_PRECONDITION, "Workflow Task in failed state")
 * while the workflow's task has failed or timed out twice or more in a row. The refused update was
 * never admitted, so asking again is safe for every update; it goes through once a worker has
 * completed the task. Why the task keeps failing decides how long to ask, read from the history
 * since the last completed workflow task (its first failure is the one the server records):
 * - **the workflow's code threw** (an unhandled error, a non-deterministic replay): waiting cannot
 *   fix that, so the call stops at once with the failure's message (GovloopWorkerError);
 * - **workers took the task and never answered** (killed, or overloaded past the task's timeout):
 *   the server retries it, each attempt's timeout growing by up to 10 minutes after the third
 *   (history.workflowTaskRetryMaxInterval). The call keeps asking for as long as that, so a fleet
 *   that crash-loops for a few minutes delays the answer instead of losing it.
 */
const NOT_READY_MAX_MS = 10 * 60_000;
const GRPC_FAILED_PRECONDITION = 9;
/** temporal.api.enums.v1.WorkflowTaskFailedCause: the worker ran the workflow's code and it failed. */
const CODE_FAILURE_CAUSES = new Map([
  [14, 'the workflow code threw'], // WORKFLOW_WORKER_UNHANDLED_FAILURE
  [24, 'the workflow code is not deterministic'], // NON_DETERMINISTIC_ERROR
]);
/** The text of a FAILED_PRECONDITION answer (the server's WorkflowNotReady), else undefined. */
const notReadyText = (err: unknown): string | undefined => {
  const grpc = err instanceof ServiceError ? err.cause : err;
  // Update-with-start's refusal carries the update's own status in its message; its details still
  // say only that the multi-operation failed (the client copies the status in, @temporalio/client helpers).
  return isGrpcServiceError(grpc) && grpc.code === GRPC_FAILED_PRECONDITION ? `${grpc.details ?? ''} ${grpc.message}` : undefined;
};
const workflowNotReady = (err: unknown): boolean => /Workflow Task in failed state/i.test(notReadyText(err) ?? '');
/**
 * The workflow task the update was handed to failed before it accepted the update, and the
 * server dropped the update with it (it was never applied). Asking again, with the same update
 * id, is safe; a workflow whose code keeps failing answers "in failed state" next, and
 * whenWorkflowReady tells why. Seen once in CI-shaped load: twelve concurrent `govloop submit`
 * while other tasks woke them (decision 0034).
 */
const updateDroppedWithTask = (err: unknown): boolean => /update due to unexpected workflow task failure/i.test(notReadyText(err) ?? '');
/** The code failure behind a failing workflow task, if its code is the reason (else undefined: workers). */
async function codeFailure(client: Client, workflowId: string): Promise<string | undefined> {
  const { history } = await client.workflowService.getWorkflowExecutionHistoryReverse({
    namespace: client.options.namespace,
    execution: { workflowId },
    maximumPageSize: 50,
  });
  for (const e of history?.events ?? []) {
    if (e.workflowTaskCompletedEventAttributes || e.workflowExecutionStartedEventAttributes) return undefined;
    const failed = e.workflowTaskFailedEventAttributes;
    const why = failed?.cause ? CODE_FAILURE_CAUSES.get(failed.cause) : undefined;
    if (why) return `${why}: ${failed!.failure?.message ?? '(no message)'}`;
  }
  return undefined;
}
async function whenWorkflowReady<T>(client: Client, workflowId: string, call: () => Promise<T>): Promise<T> {
  const since = Date.now();
  for (let attempt = 1; ; attempt++) {
    const backoff = () => new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** (attempt - 1))));
    try {
      return await call();
    } catch (err) {
      if (updateDroppedWithTask(err) && Date.now() - since < NOT_READY_MAX_MS) {
        await backoff();
        continue;
      }
      if (!workflowNotReady(err)) throw err;
      const code = await codeFailure(client, workflowId).catch(() => undefined);
      if (code) throw new GovloopWorkerError(workflowId, `its workflow task fails in the worker, ${code}`, { cause: err });
      if (Date.now() - since >= NOT_READY_MAX_MS)
        throw new GovloopWorkerError(workflowId, `no worker has completed its workflow task for ${Math.round((Date.now() - since) / 60_000)} min`, {
          cause: err,
        });
      await backoff();
    }
  }
}
/** The field errors a refused update carries as its details. */
const FieldErrorList = z.array(z.object({ path: z.string(), message: z.string() })).min(1);

/**
 * The typed client an application service uses to run work inside the governance loop:
 * submit an intent, gate each agent step, read status, finish or cancel.
 */
export class GovloopClient {
  /**
   * The credential every mutating call carries: an OIDC access token or a govloop API key
   * (default: $GOVLOOP_TOKEN, else $GOVLOOP_API_KEY). govloop derives the caller from it.
   */
  readonly credential: string | undefined;

  constructor(
    readonly client: Client,
    readonly taskQueue: string = settings().GOVLOOP_TASK_QUEUE ?? TASK_QUEUE_CONTROL,
    opts: { credential?: string } = {},
  ) {
    const env = settings();
    const credential = opts.credential ?? env.GOVLOOP_TOKEN ?? env.GOVLOOP_API_KEY;
    this.credential = credential ? check(CallerSchema.shape.credential, credential, 'credential') : undefined;
  }

  static async connect(opts: { address?: string; namespace?: string; taskQueue?: string; credential?: string } = {}): Promise<GovloopClient> {
    const env = settings();
    const connection = await Connection.connect({ address: opts.address ?? env.TEMPORAL_ADDRESS ?? 'localhost:7233' });
    return new GovloopClient(
      new Client({ connection, namespace: opts.namespace ?? env.TEMPORAL_NAMESPACE ?? 'default' }),
      opts.taskQueue,
      opts.credential ? { credential: opts.credential } : {},
    );
  }

  /** The same client acting with another credential (a service acting for several users). */
  withCredential(credential: string): GovloopClient {
    return new GovloopClient(this.client, this.taskQueue, { credential });
  }

  /** What a message says about its sender: the credential, and a typed name (`auth: none` only). */
  private caller(as?: string): { credential?: string; as?: string } {
    return { ...(this.credential ? { credential: this.credential } : {}), ...(as !== undefined && !this.credential ? { as } : {}) };
  }

  /**
   * Takes a budget lease on a scope (its budget of `period` must exist): spend it in process with
   * `trySpend`, which renews in the background before it runs out; `close()` returns the rest.
   * The lease's size follows the scope's burn rate and shrinks under throttle; at the queue step
   * no lease is granted (GovloopLeaseError). Bad options throw GovloopInputError.
   */
  async lease(options: LeaseOptions): Promise<BudgetLease> {
    const o = check(LeaseOptions, options);
    const key: BudgetKey = { ...scopeOf(o.scope), period: o.period };
    const workflowId = budgetControllerId(key);
    // The budget's controller: started here if no worker has started it yet.
    await this.client.workflow.signalWithStart(budgetController, {
      workflowId,
      taskQueue: this.taskQueue,
      args: [{ budget: key }],
      signal: budgetNudgeSignal,
      signalArgs: [],
    });
    const lease = new BudgetLease(this, workflowId, o, `${o.holder.replace(/[^A-Za-z0-9._:-]/g, '_')}-${randomBytes(4).toString('hex')}`);
    await lease.acquire();
    return lease;
  }

  private handle(taskId: string): WorkflowHandle<typeof governedTask> {
    return this.client.workflow.getHandle<typeof governedTask>(check(TaskId, taskId, 'taskId'));
  }

  /**
   * Validates and starts a governed task, and waits for admission's answer (admitted, queued or
   * rejected). Invalid intents throw GovloopInputError and start nothing.
   */
  async submit(intent: unknown, opts?: { requester?: string; taskId?: string }): Promise<AdmissionAnswer>;
  /**
   * With `leasedSteps`: admission also grants the task's first step lease once it runs, in the same
   * round trip, and the answer carries the leased gate holding it (`leasedSteps`; with no lease
   * granted — queued, rejected — the gate asks for one at its first step, as any gate does).
   */
  async submit(
    intent: unknown,
    opts: { requester?: string; taskId?: string; leasedSteps: LeasedGateOptions },
  ): Promise<AdmissionAnswer & { leasedSteps: LeasedStepGate }>;
  async submit(
    intent: unknown,
    opts: { requester?: string; taskId?: string; leasedSteps?: LeasedGateOptions } = {},
  ): Promise<AdmissionAnswer | (AdmissionAnswer & { leasedSteps: LeasedStepGate })> {
    const parsed = check(Intent, intent);
    // With a credential the requester is whoever it names; a typed one counts only under auth: none.
    if (opts.requester === undefined && !this.credential)
      throw new GovloopInputError([{ path: 'requester', message: 'required without a credential (GOVLOOP_TOKEN / GOVLOOP_API_KEY)' }]);
    const requester = check(Requester, opts.requester ?? 'credential', 'requester');
    const taskId = opts.taskId !== undefined ? check(TaskId, opts.taskId, 'taskId') : `${parsed.name}-${randomBytes(4).toString('hex')}`;
    // The gate checks its options before anything starts; its first lease goes with the admission.
    const gate = opts.leasedSteps !== undefined ? new LeasedStepGate(this, taskId, opts.leasedSteps) : null;
    const request = gate ? { stepLease: gate.leaseRequest() } : null;
    const args = [{ taskId, intent: parsed, requester, ...(this.credential ? { credential: this.credential } : {}) }] as const;
    // Start and admission in one call (update-with-start): the first workflow task takes the
    // admission update with it, one round trip instead of two (issue 13). The update id is this
    // call's own: a closed task's id then starts a new run, which refuses it (TASK_ID_REUSED),
    // instead of the server answering with the old run's admission. The first try refuses a task
    // id that is running (FAIL), as start always did.
    const updateId = `${ADMISSION_UPDATE_ID}-${randomBytes(6).toString('hex')}`;
    // The run this call starts carries the call's id in its memo, so a retry knows its own run.
    const memo = { requester, runbook: 'runbooks/admitting.md', intent: parsed.name, submitId: updateId };
    const startAndAdmit = () =>
      this.client.workflow.executeUpdateWithStart(admissionWithRequestUpdate, {
        updateId,
        args: [request ?? {}],
        startWorkflowOperation: new WithStartWorkflowOperation(governedTask, {
          taskQueue: this.taskQueue,
          workflowId: taskId,
          args,
          memo,
          workflowIdConflictPolicy: 'FAIL',
        }),
      });
    // A retry may find that an earlier try started the task: the server's long poll gave up (a busy
    // server answers DEADLINE_EXCEEDED), or the server refused the admission because the new run's
    // first workflow task kept failing (a worker died holding it). The retry then asks that run,
    // and only that run, for the same admission (by update id), waiting as whenWorkflowReady does;
    // if the run has ended meanwhile (cancelled, say), its final status answers. It never starts a
    // second run, and never sends FAIL for a run it started itself (both seen in chaos worker-kills,
    // seed 610318127: TASK_ID_REUSED from a second run; "already started" from a resent start).
    const retry = async (): Promise<AdmissionAnswer> => {
      const run = await this.runStartedBy(taskId, updateId);
      if (!run) return startAndAdmit();
      const h = this.client.workflow.getHandle<typeof governedTask>(taskId, run.runId);
      if (run.running) return whenWorkflowReady(this.client, taskId, () => h.executeUpdate(admissionWithRequestUpdate, { updateId, args: [request ?? {}] }));
      const { decision, reasons, state } = await h.result();
      return { taskId, decision, reasons, state };
    };
    for (let tries = 1; ; tries++) {
      try {
        const answer = tries === 1 ? await startAndAdmit() : await retry();
        if (!gate) return answer;
        if (answer.stepLease?.granted) gate.adopt(answer.stepLease);
        return { ...answer, leasedSteps: gate };
      } catch (err) {
        // A refusal of a start's admission (its run's first workflow task failing) goes the retry
        // way, whichever try started the run. "Already started" or "not found" on a retry may only
        // mean that the run started, or ended, in between: the next try looks again.
        const again =
          err instanceof WorkflowUpdateRPCTimeoutOrCancelledError ||
          workflowNotReady(err) ||
          updateDroppedWithTask(err) ||
          (tries > 1 && (err instanceof WorkflowExecutionAlreadyStartedError || err instanceof WorkflowNotFoundError));
        if (!again || tries >= 5) throw err;
      }
    }
  }

  /** The run of `taskId` that the submit call `submitId` started, if it started one. */
  private async runStartedBy(taskId: string, submitId: string): Promise<{ runId: string; running: boolean } | undefined> {
    try {
      const d = await this.handle(taskId).describe();
      return d.memo?.submitId === submitId ? { runId: d.runId, running: d.status.name === 'RUNNING' } : undefined;
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return undefined;
      throw err;
    }
  }

  /** Waits for the task to end and returns its final status. */
  async result(taskId: string): Promise<TaskStatus> {
    return this.handle(taskId).result();
  }

  async status(taskId: string): Promise<TaskStatus> {
    const h = this.handle(taskId);
    const d = await h.describe();
    return d.status.name === 'RUNNING' ? h.query(statusQuery) : h.result();
  }

  /**
   * The per-step gate. The usage is validated here first; bad usage never reaches the workflow.
   * `finish`: this is the task's last step; if the gate lets it run, the task finishes in the same
   * round trip (`answer.finished`), as `finish()` after it would.
   */
  async step(taskId: string, usage: StepUsage, opts: { as?: string; finish?: boolean } = {}): Promise<StepAnswer> {
    const step = check(StepUsageSchema, usage, 'step');
    const as = opts.as === undefined ? undefined : check(NameText, opts.as, 'as');
    const finish = opts.finish === undefined ? undefined : check(z.boolean(), opts.finish, 'finish');
    // The step update's own schema (workflows/schemas.ts), as the task's validator checks it.
    const payload = check(StepRequestSchema, { ...step, ...this.caller(as), ...(finish ? { finish } : {}) }, 'step');
    return this.update(taskId, () => this.handle(taskId).executeUpdate(stepUpdate, { args: [payload] }));
  }

  /** The leased step gate for a task (decision 0030): low-risk steps decided in process, reported in batches. */
  leasedSteps(taskId: string, opts: LeasedGateOptions = {}): LeasedStepGate {
    return new LeasedStepGate(this, check(TaskId, taskId, 'taskId'), opts);
  }

  /**
   * Waits until a held tool call is decided (approved, rejected, or expired at its TTL) and
   * returns the gate's answer to the step it held: allow/degrade means go ahead with the call.
   */
  async waitForApproval(approvalId: string): Promise<ApprovalOutcome> {
    const payload = check(ApprovalOutcomeRequestSchema, { approvalId });
    const taskId = taskOfApproval(payload.approvalId);
    return this.update(taskId, () => this.handle(taskId).executeUpdate(approvalOutcomeUpdate, { args: [payload] }));
  }

  /**
   * Approves a held tool call. Answers `{recorded: true}` or a refusal with its code:
   * self-approval | missing-role | expired | already-decided.
   */
  async approve(approvalId: string, d: { reason: string; as?: string; by?: string }): Promise<ApprovalAnswer> {
    return this.decide('approve', approvalId, d);
  }

  async reject(approvalId: string, d: { reason: string; as?: string; by?: string }): Promise<ApprovalAnswer> {
    return this.decide('reject', approvalId, d);
  }

  private async decide(kind: 'approve' | 'reject', approvalId: string, d: { reason: string; as?: string; by?: string }): Promise<ApprovalAnswer> {
    const decision = check(Decision, d);
    const payload = check(ApprovalDecisionSchema, { approvalId, reason: decision.reason, ...this.caller(decision.as) });
    const taskId = taskOfApproval(payload.approvalId);
    const def = kind === 'approve' ? approveUpdate : rejectUpdate;
    return this.update(taskId, () => this.handle(taskId).executeUpdate(def, { args: [payload] }));
  }

  /** After a failed compensation (NeedsOperator): the operator says the side effect is dealt with. */
  async resolve(taskId: string, d: { reason: string; as?: string; by?: string }): Promise<{ state: GovState }> {
    const decision = check(Decision, d);
    const payload = check(ResolveRequestSchema, { reason: decision.reason, ...this.caller(decision.as) });
    const r = await this.update(taskId, () => this.handle(taskId).executeUpdate(resolveUpdate, { args: [payload] }));
    if ('accepted' in r) throw new GovloopAccessError(r.code, r.message);
    return r;
  }

  /** Runs an update and turns the workflow's refusals into typed errors. */
  private async update<T>(taskId: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await whenWorkflowReady(this.client, taskId, fn);
    } catch (err) {
      const cause = err instanceof WorkflowUpdateFailedError ? (err.cause as { type?: string; message: string; details?: unknown[] } | undefined) : undefined;
      if (cause?.type === TaskErrors.InvalidStep || cause?.type === TaskErrors.InvalidDecision || cause?.type === TaskErrors.InvalidRequest) {
        // The refusal carries the field errors as data; a task started before they did carries only the text.
        const listed = FieldErrorList.safeParse(cause.details?.[0]);
        throw new GovloopInputError(
          listed.success
            ? listed.data
            : cause.message.split('; ').map((m) => ({ path: m.split(': ')[0] ?? '(root)', message: m.split(': ').slice(1).join(': ') || m })),
        );
      }
      if (cause?.type === TaskErrors.UnknownApproval) throw new GovloopNotFoundError(cause.message);
      if (cause) throw new GovloopStateError(cause.message);
      if (err instanceof WorkflowNotFoundError) throw new GovloopNotFoundError(`task ${taskId} not found, or it has ended`);
      throw err;
    }
  }

  /** The task's work is done (hosted tasks): it settles. Refused (GovloopAccessError) for anyone but its requester or an operator. */
  async finish(taskId: string, as?: string): Promise<TaskCallAnswer & { accepted: true }> {
    const by = as === undefined ? undefined : check(NameText, as, 'as');
    const payload = check(FinishRequestSchema, this.caller(by));
    return this.taskCall(taskId, () => this.handle(taskId).executeUpdate(finishTaskUpdate, { args: [payload] }));
  }

  /** Cancels the task: its job is stopped, what it used is charged, the rest released. */
  async cancel(taskId: string, as: string | undefined, reason: string): Promise<TaskCallAnswer & { accepted: true }> {
    const by = as === undefined ? undefined : check(NameText, as, 'as');
    const why = check(ReasonText, reason, 'reason');
    const payload = check(CancelRequestSchema, { reason: why, ...this.caller(by) });
    return this.taskCall(taskId, () => this.handle(taskId).executeUpdate(cancelTaskUpdate, { args: [payload] }));
  }

  /** An operator preempts a running cluster task: checkpoint, suspend, requeue. */
  async preempt(taskId: string, d: { reason: string; as?: string }): Promise<TaskCallAnswer & { accepted: true }> {
    const decision = check(Decision, d);
    const payload = check(PreemptRequestSchema, { reason: decision.reason, ...this.caller(decision.as) });
    return this.taskCall(taskId, () => this.handle(taskId).executeUpdate(preemptTaskUpdate, { args: [payload] }));
  }

  private async taskCall(taskId: string, fn: () => Promise<TaskCallAnswer>): Promise<TaskCallAnswer & { accepted: true }> {
    const r = await this.update(taskId, fn);
    if (!r.accepted) throw new GovloopAccessError(r.code, r.message);
    return r;
  }

  /** Tasks by governance state and attribution, newest first (a visibility query on the search attributes). */
  async list(
    filter: z.input<typeof ListFilter> = {},
  ): Promise<{ taskId: string; state: string; tenant: string; team: string; kind: string; status: string; startTime: Date }[]> {
    const f = check(ListFilter, filter);
    const clauses = [`WorkflowType = 'governedTask'`];
    if (f.state) clauses.push(`GovState = ${quote(f.state)}`);
    if (f.tenant) clauses.push(`GovTenant = ${quote(f.tenant)}`);
    if (f.team) clauses.push(`GovTeam = ${quote(f.team)}`);
    if (f.kind) clauses.push(`GovKind = ${quote(f.kind)}`);
    const out = [];
    for await (const wf of this.client.workflow.list({ query: clauses.join(' AND '), pageSize: Math.min(f.limit, 1000) })) {
      const sa = wf.typedSearchAttributes;
      out.push({
        taskId: wf.workflowId,
        state: sa.get(GovStateKey) ?? '',
        tenant: String(wf.searchAttributes.GovTenant?.[0] ?? ''),
        team: String(wf.searchAttributes.GovTeam?.[0] ?? ''),
        kind: String(wf.searchAttributes.GovKind?.[0] ?? ''),
        status: wf.status.name,
        startTime: wf.startTime,
      });
      if (out.length >= f.limit) break;
    }
    return out;
  }
}
