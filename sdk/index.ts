import { randomBytes } from 'node:crypto';
import { Client, Connection, WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { z } from 'zod';
import { type FieldError, Intent, fieldErrors } from '../governance/intent';
import { type StepUsage, StepUsageSchema } from '../governance/step-gate';
import { governedTask } from '../workflows';
import {
  type AdmissionAnswer,
  type ApprovalAnswer,
  type ApprovalOutcome,
  type GovState,
  type StepAnswer,
  TASK_QUEUE_CONTROL,
  type TaskStatus,
  admissionUpdate,
  approvalOutcomeUpdate,
  approveUpdate,
  cancelSignal,
  rejectUpdate,
  resolveUpdate,
  finishSignal,
  statusQuery,
  stepUpdate,
} from '../workflows/messages';
import { GovState as GovStateKey } from '../workflows/search-attributes';

export type { AdmissionAnswer, ApprovalAnswer, ApprovalOutcome, StepAnswer, TaskStatus, StepUsage };

/** Bad input: nothing was started or changed. `errors` name each field and what is wrong with it. */
export class GovloopInputError extends Error {
  constructor(readonly errors: FieldError[]) {
    super(`invalid input:\n${errors.map((e) => `  ${e.path}: ${e.message}`).join('\n')}`);
    this.name = 'GovloopInputError';
  }
}

/** The task (or approval request) does not exist, or has closed and takes no more messages. */
export class GovloopNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GovloopNotFoundError';
  }
}

/** The task refused the message in its present state (e.g. a step after it ended). */
export class GovloopStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GovloopStateError';
  }
}

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

export const outcomeOf = (s: TaskStatus): TaskOutcome => ({ taskId: s.taskId, decision: s.decision, reasons: s.reasons, state: s.state, usage: s.usage, costUsd: s.costUsd });

const Requester = z.string().min(1).max(128);
const TaskId = z.string().min(1).max(200).regex(/^[A-Za-z0-9._:-]+$/, 'letters, digits, ".", "_", ":" and "-"');
const Decision = z.strictObject({ by: Requester, reason: z.string().min(1).max(1000) });
const ListFilter = z.strictObject({ state: z.string().min(1).optional(), tenant: z.string().min(1).optional(), team: z.string().min(1).optional(), kind: z.string().min(1).optional(), limit: z.number().int().positive().max(10_000).default(100) });

function check<T>(schema: z.ZodType<T>, value: unknown, prefix?: string): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new GovloopInputError(fieldErrors(r.error).map((e) => ({ ...e, path: prefix ? (e.path === '(root)' ? prefix : `${prefix}.${e.path}`) : e.path })));
}

/** Visibility query quoting: single quotes doubled away. */
const quote = (s: string) => `'${s.replace(/'/g, "''")}'`;

/**
 * The typed client an application service uses to run work inside the governance loop:
 * submit an intent, gate each agent step, read status, finish or cancel.
 */
export class GovloopClient {
  constructor(
    readonly client: Client,
    readonly taskQueue: string = process.env.GOVLOOP_TASK_QUEUE ?? TASK_QUEUE_CONTROL,
  ) {}

  static async connect(opts: { address?: string; namespace?: string; taskQueue?: string } = {}): Promise<GovloopClient> {
    const connection = await Connection.connect({ address: opts.address ?? process.env.TEMPORAL_ADDRESS ?? 'localhost:7233' });
    return new GovloopClient(new Client({ connection, namespace: opts.namespace ?? process.env.TEMPORAL_NAMESPACE ?? 'default' }), opts.taskQueue);
  }

  private handle(taskId: string): WorkflowHandle<typeof governedTask> {
    return this.client.workflow.getHandle<typeof governedTask>(check(TaskId, taskId, 'taskId'));
  }

  /**
   * Validates and starts a governed task, and waits for admission's answer (admitted, queued or
   * rejected). Invalid intents throw GovloopInputError and start nothing.
   */
  async submit(intent: unknown, opts: { requester: string; taskId?: string }): Promise<AdmissionAnswer> {
    const parsed = check(Intent, intent);
    const requester = check(Requester, opts.requester, 'requester');
    const taskId = opts.taskId !== undefined ? check(TaskId, opts.taskId, 'taskId') : `${parsed.name}-${randomBytes(4).toString('hex')}`;
    const handle = await this.client.workflow.start(governedTask, {
      taskQueue: this.taskQueue,
      workflowId: taskId,
      args: [{ taskId, intent: parsed, requester }],
      memo: { requester, runbook: 'runbooks/admitting.md', intent: parsed.name },
    });
    return handle.executeUpdate(admissionUpdate);
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

  /** The per-step gate. The usage is validated here first; bad usage never reaches the workflow. */
  async step(taskId: string, usage: StepUsage): Promise<StepAnswer> {
    const step = check(StepUsageSchema, usage, 'step');
    return this.update(taskId, () => this.handle(taskId).executeUpdate(stepUpdate, { args: [step] }));
  }

  /**
   * Waits until a held tool call is decided (approved, rejected, or expired at its TTL) and
   * returns the gate's answer to the step it held: allow/degrade means go ahead with the call.
   */
  async waitForApproval(approvalId: string): Promise<ApprovalOutcome> {
    const taskId = taskOfApproval(check(z.string().min(1), approvalId, 'approvalId'));
    return this.update(taskId, () => this.handle(taskId).executeUpdate(approvalOutcomeUpdate, { args: [{ approvalId }] }));
  }

  /**
   * Approves a held tool call. Answers `{recorded: true}` or a refusal with its code:
   * self-approval | missing-role | expired | already-decided.
   */
  async approve(approvalId: string, d: { by: string; reason: string }): Promise<ApprovalAnswer> {
    return this.decide('approve', approvalId, d);
  }

  async reject(approvalId: string, d: { by: string; reason: string }): Promise<ApprovalAnswer> {
    return this.decide('reject', approvalId, d);
  }

  private async decide(kind: 'approve' | 'reject', approvalId: string, d: { by: string; reason: string }): Promise<ApprovalAnswer> {
    const taskId = taskOfApproval(check(z.string().min(1), approvalId, 'approvalId'));
    const decision = check(Decision, d);
    const def = kind === 'approve' ? approveUpdate : rejectUpdate;
    return this.update(taskId, () => this.handle(taskId).executeUpdate(def, { args: [{ approvalId, ...decision }] }));
  }

  /** After a failed compensation (NeedsOperator): the operator says the side effect is dealt with. */
  async resolve(taskId: string, d: { by: string; reason: string }): Promise<{ state: GovState }> {
    const decision = check(Decision, d);
    return this.update(taskId, () => this.handle(taskId).executeUpdate(resolveUpdate, { args: [decision] }));
  }

  /** Runs an update and turns the workflow's refusals into typed errors. */
  private async update<T>(taskId: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const cause = err instanceof WorkflowUpdateFailedError ? (err.cause as { type?: string; message: string } | undefined) : undefined;
      if (cause?.type === 'InvalidStep' || cause?.type === 'InvalidDecision') {
        throw new GovloopInputError(cause.message.split('; ').map((m) => ({ path: m.split(': ')[0] ?? '(root)', message: m.split(': ').slice(1).join(': ') || m })));
      }
      if (cause?.type === 'UnknownApproval') throw new GovloopNotFoundError(cause.message);
      if (cause) throw new GovloopStateError(cause.message);
      const name = (err as Error).name;
      if (name === 'WorkflowNotFoundError') throw new GovloopNotFoundError(`task ${taskId} not found, or it has ended`);
      throw err;
    }
  }

  async finish(taskId: string, by: string): Promise<void> {
    await this.handle(taskId).signal(finishSignal, { by: check(Requester, by, 'by') });
  }

  async cancel(taskId: string, by: string, reason: string): Promise<void> {
    await this.handle(taskId).signal(cancelSignal, { by: check(Requester, by, 'by'), reason: check(z.string().min(1).max(500), reason, 'reason') });
  }

  /** Tasks by governance state and attribution, newest first (a visibility query on the search attributes). */
  async list(filter: z.input<typeof ListFilter> = {}): Promise<{ taskId: string; state: string; tenant: string; team: string; kind: string; status: string; startTime: Date }[]> {
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
