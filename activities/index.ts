import { log } from '@temporalio/activity';
import type { GovConfig } from '../config/load';
import { type AdmissionResult, admit, gpuQuotaFor } from '../governance/admission';
import type { Intent } from '../governance/intent';
import type { Plan } from '../governance/plan';
import { costMicros, priceVersionAt } from '../governance/pricing';
import type { Reason } from '../governance/reasons';
import { type StepTotals, type StepUsage, evaluateStep } from '../governance/step-gate';
import { type ClusterBackend, type CreateResult, jobName } from '../cluster/backend';
import { appendAudit } from '../ledger/audit';
import { budgetHeadroom, release, reserve, type ReserveResult } from '../ledger/budgets';
import type { Db } from '../ledger/db';
import { teamGpusInUse, updateTask, upsertTask } from '../ledger/tasks';
import { type TaskUsage, type UsageEvent, recordUsage, recordUsageIn, taskUsage } from '../ledger/usage';

export interface ActivityDeps {
  db: Db;
  config: GovConfig;
  backend: ClusterBackend;
  /** The task queue the cluster's dispatch activities are served on. */
  dispatchQueue: string;
  clock?: () => Date;
}

/** How the workflow paces itself and where it sends cluster work; decided by the worker's config. */
export interface Timing {
  pollMillis: number;
  queueRetryMillis: number;
  dispatchQueue: string;
}

export interface Observation {
  phase: string;
  nodes: string[];
  progress: number;
  usage: TaskUsage;
  capBreach: Reason | null;
  message: string | null;
}

/**
 * Side effects of the governance loop, thin over governance/ (decisions), ledger/ and cluster/.
 * Every write is idempotent by task id plus a step or sequence number (design principle 2).
 */
export function createActivities({ db, config, backend, dispatchQueue, clock = () => new Date() }: ActivityDeps) {
  const timing: Timing = { pollMillis: config.simulation.pollMillis, queueRetryMillis: config.simulation.queueRetryMillis, dispatchQueue };

  return {
    /** Admission (pure policy over a ledger snapshot), recorded on the task and in the audit log. */
    async admitTask(input: { taskId: string; intent: Intent; requester: string; attempt: number }): Promise<{ result: AdmissionResult; timing: Timing }> {
      const { taskId, intent } = input;
      const now = clock();
      await upsertTask(db, { taskId, intent, requester: input.requester, state: 'Admitting' });
      const budgets = await budgetHeadroom(db, intent.attribution, now);
      const gpuType = intent.resources.gpuType;
      const teamGpus = gpuType ? await teamGpusInUse(db, intent.attribution.tenant, intent.attribution.team, gpuType, taskId) : 0;
      const result = admit(intent, { config, now: now.toISOString(), budgets, teamGpusInUse: teamGpus });
      await db.tx(async (c) => {
        await updateTask(c, taskId, {
          decision: result.decision,
          reasons: result.reasons,
          state: result.decision === 'rejected' ? 'Rejected' : result.decision === 'queued' ? 'Queued' : 'Admitting',
          ...(result.decision !== 'rejected' ? { plan: result.plan } : {}),
        });
        await appendAudit(c, {
          actor: 'govloop',
          taskId,
          action: 'admission',
          decision: result.decision,
          detail: { requester: input.requester, reasons: result.reasons, worstCaseUsd: result.decision !== 'rejected' ? result.plan.worstCaseMicros / 1e6 : null },
          dedupeKey: `${taskId}:admission:${input.attempt}`,
        });
      });
      log.info('admission', { taskId, decision: result.decision, reasons: result.reasons.map((r) => r.code) });
      return { result, timing };
    },

    /** Reserves the plan's worst case against every covering budget, atomically; re-checks GPU quota. */
    async reserveBudget(input: { taskId: string; intent: Intent; plan: Plan }): Promise<ReserveResult> {
      const { intent, plan } = input;
      const quota =
        plan.gpu.count > 0 && plan.gpu.type
          ? { gpuType: plan.gpu.type, gpus: plan.gpu.count, ...gpuQuotaFor(config.policies, intent.attribution, plan.gpu.type) }
          : undefined;
      return reserve(db, input.taskId, intent.attribution, plan.worstCaseMicros, clock(), quota);
    },

    /** Creates the job suspended on the cluster and resumes it. No room: answers with a reason (the task queues). */
    async dispatchJob(input: { taskId: string; intent: Intent; plan: Plan }): Promise<CreateResult & { job: string }> {
      const { taskId, intent, plan } = input;
      const name = jobName(taskId);
      const a = intent.attribution;
      const created = await backend.create({
        name,
        taskId,
        gpus: plan.gpu.count,
        gpuType: plan.gpu.type ?? '',
        sharing: plan.gpu.sharing,
        priorityClass: `govloop-${plan.priority.name}`,
        labels: { 'govloop.io/tenant': a.tenant, 'govloop.io/team': a.team, 'govloop.io/project': a.project, 'govloop.io/task': taskId },
        runtime: plan.runtime,
        simulation: plan.simulation,
      });
      if (created.ok) {
        await backend.resume(name);
        await db.tx(async (c) => {
          await updateTask(c, taskId, { state: 'Running' });
          await appendAudit(c, { actor: 'govloop', taskId, action: 'dispatch', decision: 'running', detail: { cluster: backend.cluster, job: name, nodes: created.nodes }, dedupeKey: `${taskId}:dispatch` });
        });
      }
      return { ...created, job: name };
    },

    /**
     * Reads the job and meters what it used since the last look. Exactly once: a cursor per task
     * and meter moves in the same transaction as the usage it justifies.
     */
    async observeJob(input: { taskId: string; job: string; intent: Intent; plan: Plan }): Promise<Observation> {
      const { taskId, job, intent, plan } = input;
      const status = await backend.status(job);
      if (!status) throw new Error(`job ${job} is missing from cluster ${backend.cluster}`);
      const now = clock();
      const gpuSubject = `${plan.gpu.type}:${plan.gpu.sharing}`;
      await db.tx(async (c) => {
        const events: UsageEvent[] = [];
        for (const [meter, cumulative, subject] of [
          ['gpu_seconds', status.gpuSeconds, gpuSubject],
          ['tokens_processed', status.tokens, intent.attribution.model],
        ] as const) {
          await c.query('INSERT INTO meter_cursors (task_id, meter, metered) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING', [taskId, meter]);
          const cur = await c.query<{ metered: number }>('SELECT metered FROM meter_cursors WHERE task_id = $1 AND meter = $2 FOR UPDATE', [taskId, meter]);
          const metered = cur.rows[0]!.metered;
          if (cumulative > metered) {
            events.push({ key: `${taskId}:${meter}:${metered}-${cumulative}`, taskId, attribution: intent.attribution, meter, subject, quantity: cumulative - metered, cumulativeBefore: metered, occurredAt: now });
            await c.query('UPDATE meter_cursors SET metered = $3 WHERE task_id = $1 AND meter = $2', [taskId, meter, cumulative]);
          }
        }
        await recordUsageIn(c, config.priceBook, events);
      });
      const usage = await taskUsage(db, taskId);
      let capBreach: Reason | null = null;
      const maxUsdMicros = Math.round(plan.caps.maxUsd * 1e6);
      if (usage.gpuSeconds / 3600 > plan.caps.maxGpuHours) {
        capBreach = { code: 'CAP_MAX_GPU_HOURS', message: `used ${(usage.gpuSeconds / 3600).toFixed(3)} GPU-hours, cap ${plan.caps.maxGpuHours}`, limit: plan.caps.maxGpuHours, requested: usage.gpuSeconds / 3600, policy: 'task#caps.maxGpuHours' };
      } else if (usage.costMicros > maxUsdMicros) {
        capBreach = { code: 'CAP_MAX_USD', message: `spent $${(usage.costMicros / 1e6).toFixed(2)}, cap $${plan.caps.maxUsd}`, limit: plan.caps.maxUsd, requested: usage.costMicros / 1e6, policy: 'task#caps.maxUsd' };
      } else if (plan.caps.deadline !== null && now.getTime() > Date.parse(plan.caps.deadline) && status.phase === 'Running') {
        capBreach = { code: 'CAP_DEADLINE', message: `deadline ${plan.caps.deadline} passed while running`, limit: plan.caps.deadline, requested: now.toISOString(), policy: 'task#caps.deadline' };
      }
      return { phase: status.phase, nodes: status.nodes, progress: status.progressSeconds / plan.simulation.durationSeconds, usage, capBreach, message: status.message };
    },

    async deleteJob(input: { job: string }): Promise<void> {
      await backend.delete(input.job);
    },

    /**
     * The agent step gate: prices the step, checks every cap with it, and commits its usage if
     * allowed. Idempotent by (task, seq): a retried activity answers the same and charges once.
     */
    async gateStep(input: { taskId: string; seq: number; intent: Intent; plan: Plan; totals: StepTotals; step: StepUsage }): Promise<{ answer: 'allow'; totals: StepTotals; costMicros: number } | { answer: 'deny'; reason: Reason; costMicros: number }> {
      const { taskId, seq, intent, plan, totals, step } = input;
      const now = clock();
      const model = step.model ?? intent.attribution.model;
      const version = priceVersionAt(config.priceBook, now.toISOString());
      const cost =
        costMicros(version, { meter: 'tokens_in', quantity: step.tokensIn, subject: model }) +
        costMicros(version, { meter: 'tokens_out', quantity: step.tokensOut, subject: model });
      const decision = evaluateStep(plan.caps, totals, step, cost, intent.tools, now.toISOString());
      if (decision.answer === 'deny') {
        await appendAudit(db, { actor: 'govloop', taskId, action: 'step', decision: 'deny', detail: { seq, reason: decision.reason, step }, dedupeKey: `${taskId}:step:${seq}` });
        return { answer: 'deny', reason: decision.reason, costMicros: cost };
      }
      const attribution = { ...intent.attribution, model };
      await recordUsage(db, config.priceBook, [
        { key: `${taskId}:step:${seq}:tokens_in`, taskId, attribution, tool: step.tool ?? null, meter: 'tokens_in', subject: model, quantity: step.tokensIn, occurredAt: now },
        { key: `${taskId}:step:${seq}:tokens_out`, taskId, attribution, tool: step.tool ?? null, meter: 'tokens_out', subject: model, quantity: step.tokensOut, occurredAt: now },
      ]);
      return { answer: 'allow', totals: decision.totals, costMicros: cost };
    },

    /** Settle: release what is left of the reservation, close the task, audit the charge. Idempotent. */
    async settleTask(input: { taskId: string; state: string; reasons: Reason[] }): Promise<TaskUsage> {
      const { taskId, state, reasons } = input;
      const released = await release(db, taskId);
      const usage = await taskUsage(db, taskId);
      await db.tx(async (c) => {
        await updateTask(c, taskId, { state, finished: true, ...(reasons.length ? { reasons } : {}) });
        await appendAudit(c, { actor: 'govloop', taskId, action: 'settle', decision: state, detail: { costUsd: usage.costMicros / 1e6, releasedUsd: released / 1e6, gpuSeconds: usage.gpuSeconds, reasons }, dedupeKey: `${taskId}:settle` });
      });
      return usage;
    },

    async recordState(input: { taskId: string; state: string; reasons?: Reason[] }): Promise<void> {
      await updateTask(db, input.taskId, { state: input.state, ...(input.reasons ? { reasons: input.reasons } : {}) });
    },
  };
}

export type Activities = ReturnType<typeof createActivities>;
