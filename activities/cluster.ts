import { log } from '@temporalio/activity';
import { type CreateResult, jobName } from '../cluster/backend';
import { clusterCapBreach } from '../governance/caps';
import type { Intent } from '../governance/intent';
import type { Plan } from '../governance/plan';
import { priceVersionAt, unitPriceUsd } from '../governance/pricing';
import type { Reason } from '../governance/reasons';
import { runLimit } from '../governance/run-limit';
import { appendAudit } from '../ledger/audit';
import { advanceMeterCursor } from '../ledger/meter-cursors';
import { closePreemption } from '../ledger/quota';
import { dispatchedJob, reservedMicros, taskTeam } from '../ledger/task-lookups';
import { updateTask } from '../ledger/tasks';
import { type TaskUsage, type UsageEvent, recordUsageIn, taskUsage } from '../ledger/usage';
import { type ActivityContext, gpuRequest } from './context';
import { notifyOverage } from './notify';

export interface Observation {
  phase: string;
  nodes: string[];
  progress: number;
  usage: TaskUsage;
  capBreach: Reason | null;
  message: string | null;
}

/**
 * A task's job on the cluster: dispatch it under its run limit, observe and meter it, check its
 * caps (governance/caps.ts), and the three steps of a preemption. The first five are served on the
 * cluster's dispatch queue (workers/worker.ts).
 */
export function createClusterActivities(ctx: ActivityContext) {
  const { db, config, backend, clock, nudgeBudgets, wakeQueued } = ctx;

  /**
   * The run limit for a job about to run (governance/run-limit.ts): what the task's caps and its
   * reservation leave after everything it used, metered or not yet (the cluster's own counters
   * can be ahead of the ledger), at the plan's GPU price now, less the cluster's stop margin.
   */
  async function runLimitOf(taskId: string, job: string, intent: Intent, plan: Plan) {
    const [usage, status] = await Promise.all([taskUsage(db, taskId), backend.status(job)]);
    const limit = runLimit({ ...(await runLimitInput(taskId, intent, plan, usage, status?.gpuSeconds ?? 0)), stopMarginSeconds: backend.stopMarginSeconds });
    log.info('run limit', { taskId, job, maxRunSeconds: limit.maxRunSeconds, binding: limit.binding });
    return limit;
  }

  /** What the run limit is computed from: caps, reservation, GPUs, the GPU price now, and usage including what the cluster ran that is not metered yet. */
  async function runLimitInput(taskId: string, intent: Intent, plan: Plan, usage: TaskUsage, clusterGpuSeconds: number) {
    const subject = `${plan.gpu.type}:${plan.gpu.sharing}`;
    const microsPerGpuSecond = plan.gpu.type
      ? unitPriceUsd(priceVersionAt(config.priceBook, clock().toISOString()), { meter: 'gpu_seconds', subject }) * 1e6
      : 0;
    const unmetered = Math.max(0, clusterGpuSeconds - usage.gpuSeconds);
    return {
      caps: plan.caps,
      reservationMicros: await reservedMicros(db, taskId),
      gpus: gpuRequest(intent).gpus,
      microsPerGpuSecond,
      used: { gpuSeconds: usage.gpuSeconds + unmetered, costMicros: usage.costMicros + unmetered * microsPerGpuSecond },
    };
  }

  return {
    /**
     * Creates the job suspended on the cluster and resumes it. No room: answers with a reason (the
     * task queues); with `recordQueued`, it also records the task Queued with that reason in the
     * ledger and answers `recordedQueued`, where the workflow called recordState after it (issue 13).
     */
    async dispatchJob(input: {
      taskId: string;
      intent: Intent;
      plan: Plan;
      recordQueued?: boolean;
    }): Promise<CreateResult & { job: string; recordedQueued?: true }> {
      const { taskId, intent, plan } = input;
      // A task dispatched before (preempted, now placed again) keeps its job, whatever name
      // jobName() gives today: the name it ran under is in its dispatch audit row.
      const name = (await dispatchedJob(db, taskId)) ?? jobName(taskId);
      const a = intent.attribution;
      const created = await backend.create({
        name,
        taskId,
        ...gpuRequest(intent),
        priorityClass: `govloop-${plan.priority.name}`,
        labels: { 'govloop.io/tenant': a.tenant, 'govloop.io/team': a.team, 'govloop.io/project': a.project, 'govloop.io/task': taskId },
        runtime: plan.runtime,
        simulation: plan.simulation,
      });
      if (created.ok) {
        const limit = await runLimitOf(taskId, name, intent, plan);
        await backend.resume(name, { maxRunSeconds: limit.maxRunSeconds });
        await db.tx(async (c) => {
          await updateTask(c, taskId, { state: 'Running' });
          await appendAudit(c, {
            actor: 'govloop',
            taskId,
            action: 'dispatch',
            decision: 'running',
            detail: {
              cluster: backend.cluster,
              job: name,
              nodes: created.nodes,
              placement: created.explanation ?? null,
              runLimit: { seconds: limit.maxRunSeconds, cap: limit.binding },
            },
            dedupeKey: `${taskId}:dispatch`,
          });
        });
      } else if (input.recordQueued) {
        await updateTask(db, taskId, { state: 'Queued', reasons: [created.reason] });
        return { ...created, job: name, recordedQueued: true };
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
      const recorded = await db.tx(async (c) => {
        const events: UsageEvent[] = [];
        for (const [meter, cumulative, subject] of [
          ['gpu_seconds', status.gpuSeconds, gpuSubject],
          ['tokens_processed', status.tokens, intent.attribution.model],
        ] as const) {
          const { metered } = await advanceMeterCursor(c, taskId, meter, cumulative);
          if (cumulative > metered) {
            events.push({
              key: `${taskId}:${meter}:${metered}-${cumulative}`,
              taskId,
              attribution: intent.attribution,
              meter,
              subject,
              quantity: cumulative - metered,
              cumulativeBefore: metered,
              occurredAt: now,
            });
          }
        }
        return recordUsageIn(c, config.priceBook, events, config.policies.usageLimits);
      });
      await notifyOverage(config, recorded.overages);
      await nudgeBudgets(intent.attribution);
      const usage = await taskUsage(db, taskId);
      // The cluster stopped the job at the run limit dispatch gave it: a cap did, not a fault.
      const stoppedAtRunLimit = status.deadlineExceeded ? await runLimitInput(taskId, intent, plan, usage, status.gpuSeconds) : undefined;
      const capBreach = clusterCapBreach({
        caps: plan.caps,
        used: usage,
        running: status.phase === 'Running',
        now,
        ...(stoppedAtRunLimit ? { stoppedAtRunLimit } : {}),
      });
      return {
        phase: status.phase,
        nodes: status.nodes,
        progress: status.progressSeconds / plan.simulation.durationSeconds,
        usage,
        capBreach,
        message: status.message,
      };
    },

    async deleteJob(input: { job: string }): Promise<void> {
      await backend.delete(input.job);
    },

    /**
     * Preemption, step 1: the checkpoint signal (a cluster that cannot checkpoint ignores it).
     * Answers the least grace period this cluster needs, when it says (histories from before this
     * answer record none, and the workflow then waits the policy's grace as it did).
     */
    async checkpointJob(input: { job: string }): Promise<{ graceMillis: number | null }> {
      await backend.checkpoint?.(input.job);
      return { graceMillis: backend.checkpointGraceMillis ?? null };
    },

    /** Preemption, step 2 (after the grace period): suspend; answers the GPU-seconds the job has lost to preemptions so far. */
    async suspendJob(input: { job: string; gpus: number }): Promise<{ lostGpuSecondsTotal: number }> {
      await backend.suspend(input.job);
      const status = await backend.status(input.job);
      return { lostGpuSecondsTotal: (status?.lostSeconds ?? 0) * input.gpus };
    },

    /** Preemption, step 3: the ledger record (lost GPU-seconds against the preemptor's team), the task Preempted, the audit row naming the preemptor. */
    async recordPreemption(input: {
      taskId: string;
      round: number;
      by: string;
      reason: string;
      preemptor: string | null;
      lostGpuSecondsTotal: number;
      gpuType: string | null;
      gpus: number;
    }): Promise<{ round: number; lostGpuSeconds: number }> {
      const team = input.preemptor ? await taskTeam(db, input.preemptor) : null;
      const r = await db.tx((c) =>
        closePreemption(c, {
          victimTaskId: input.taskId,
          round: input.round,
          preemptorTaskId: input.preemptor,
          by: input.by,
          reason: input.reason,
          preemptorTenant: team?.tenant ?? null,
          preemptorTeam: team?.team ?? null,
          gpuType: input.gpuType,
          gpus: input.gpus,
          lostGpuSecondsTotal: input.lostGpuSecondsTotal,
        }),
      );
      log.info('preempted', { taskId: input.taskId, by: input.by, preemptor: input.preemptor, round: r.round, lostGpuSeconds: r.lostGpuSeconds });
      // Suspended: its GPUs are free for the preemptor (and whoever else waits for them).
      await wakeQueued(input.taskId);
      return r;
    },
  };
}
