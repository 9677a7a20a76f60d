/**
 * bench/e2e.ts's Kueue-shaped case (issue 13): many small 1-GPU cluster tasks submitted at once,
 * as Kueue's scheduler performance baseline does with 15,000 small workloads, and the figure it
 * reports: workloads admitted per second. Here "admitted" means what Kueue's admission means:
 * quota and budget reserved (the task's row in `reservations`), read back from the ledger with
 * the ledger's own clock, so no history has to be fetched for 15,000 tasks.
 *
 * "No work lost": every submitted task must end in a final state, every one Succeeded, and the
 * GPU-seconds metered must be exactly tasks × simulated seconds.
 *
 *   npm run bench:e2e -- --tasks 0 --cluster-tasks 0 --kueue-tasks 15000 [--kueue-submitters 32] [--kueue-teams 20]
 */
import type { WorkflowHandle } from '@temporalio/client';
import type { IntentInput } from '../governance/intent';
import type { Db } from '../ledger/db';
import { FINAL_STATES } from '../workflows/messages';
import { type Summary, nowMs, round, summarize } from './lib';

export interface KueueOptions {
  db: Db;
  tenant: string;
  tasks: number;
  /** Client lanes starting workflows (a start is one RPC; the task then runs on its own). */
  submitters: number;
  /** Teams the tasks are spread over; each holds defaultGpuQuota GPUs of each type. */
  teams: number;
  simSeconds: number;
  timeoutS: number;
  start: (input: IntentInput, name: string) => Promise<WorkflowHandle>;
  log: (m: string) => void;
}

export interface KueueReport {
  tasks: number;
  submitted: number;
  submitFailures: string[];
  submitSeconds: number;
  submittedPerSecond: number;
  admitted: number;
  /** Admitted tasks / (last admission − first submission), in the ledger's clock. */
  admittedPerSecond: number;
  submitToAdmitMs: Summary;
  /** Final state → tasks. */
  finalStates: Record<string, number>;
  /** Submitted but not in a final state when the phase ended. */
  unfinished: number;
  gpuSecondsMetered: number;
  gpuSecondsExpected: number;
  wallSeconds: number;
  /** The whole case held: every task Succeeded and metered exactly. */
  noWorkLost: boolean;
}

export async function runKueueCase(o: KueueOptions): Promise<KueueReport> {
  const team = (i: number) => `kueue-${i % o.teams}`;
  const intent = (i: number): IntentInput => ({
    kind: 'training',
    name: 'kueue-small',
    attribution: { tenant: o.tenant, team: team(i), project: 'kueue', model: 'llama-3-8b', useCase: 'baseline' },
    caps: { maxUsd: 100, maxGpuHours: Math.ceil(o.simSeconds / 3600) + 1 },
    priority: 'normal',
    riskClass: 'low',
    resources: { gpus: 1, gpuType: Math.floor(i / o.teams) % 2 === 0 ? 'H100' : 'A100', sharing: 'exclusive' },
    simulation: { durationSeconds: o.simSeconds, tokensPerSecond: 0 },
  });

  // Wall-clock submit times (Date.now, the same clock PostgreSQL's now() reads on this machine).
  const submittedAt = new Map<string, number>();
  const submitFailures: string[] = [];
  const t0 = nowMs();
  let next = 0;
  let lastLog = t0;
  await Promise.all(
    Array.from({ length: Math.min(o.submitters, o.tasks) }, async () => {
      while (next < o.tasks) {
        const i = next++;
        const at = Date.now();
        try {
          const h = await o.start(intent(i), 'kueue');
          submittedAt.set(h.workflowId, at);
        } catch (err) {
          if (submitFailures.length < 20) submitFailures.push(err instanceof Error ? err.message : String(err));
        }
        if (nowMs() - lastLog > 10_000) {
          lastLog = nowMs();
          o.log(`kueue:      ${submittedAt.size} of ${o.tasks} submitted`);
        }
      }
    }),
  );
  const submitSeconds = (nowMs() - t0) / 1000;
  o.log(`kueue:      ${submittedAt.size} submitted in ${submitSeconds.toFixed(1)} s; waiting for every task to end`);

  // Wait for every submitted task to reach a final state, reading the ledger (cheap) once a second.
  const ids = [...submittedAt.keys()];
  const deadline = nowMs() + o.timeoutS * 1000;
  let ended = 0;
  for (;;) {
    const r = await o.db.query<{ n: string }>(`SELECT count(*) AS n FROM tasks WHERE task_id = ANY($1) AND state = ANY($2)`, [ids, FINAL_STATES]);
    ended = Number(r.rows[0]!.n);
    if (ended >= ids.length || nowMs() > deadline) break;
    if (nowMs() - lastLog > 10_000) {
      lastLog = nowMs();
      o.log(`kueue:      ${ended} of ${ids.length} ended`);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  const wallSeconds = (nowMs() - t0) / 1000;

  const states = await o.db.query<{ state: string; n: string }>(`SELECT state, count(*) AS n FROM tasks WHERE task_id = ANY($1) GROUP BY state`, [ids]);
  const finalStates: Record<string, number> = {};
  for (const s of states.rows) finalStates[s.state] = Number(s.n);
  const reserved = await o.db.query<{ task_id: string; at: string }>(
    `SELECT task_id, (extract(epoch FROM created_at) * 1000)::float8 AS at FROM reservations WHERE task_id = ANY($1)`,
    [ids],
  );
  const admitMs = reserved.rows.map((r) => Number(r.at) - submittedAt.get(r.task_id)!);
  const firstSubmit = Math.min(...submittedAt.values());
  const lastAdmit = Math.max(...reserved.rows.map((r) => Number(r.at)));
  const metered = await o.db.query<{ q: number | null }>(
    `SELECT sum(quantity)::float8 AS q FROM usage_events WHERE task_id = ANY($1) AND meter = 'gpu_seconds'`,
    [ids],
  );
  const gpuSecondsMetered = round(metered.rows[0]!.q ?? 0, 3);
  const gpuSecondsExpected = ids.length * o.simSeconds;
  const succeeded = finalStates.Succeeded ?? 0;
  return {
    tasks: o.tasks,
    submitted: ids.length,
    submitFailures,
    submitSeconds: round(submitSeconds, 2),
    submittedPerSecond: round(ids.length / submitSeconds, 1),
    admitted: reserved.rows.length,
    admittedPerSecond: reserved.rows.length > 0 ? round(reserved.rows.length / ((lastAdmit - firstSubmit) / 1000), 2) : 0,
    submitToAdmitMs: summarize(admitMs, 0),
    finalStates,
    unfinished: ids.length - ended,
    gpuSecondsMetered,
    gpuSecondsExpected,
    wallSeconds: round(wallSeconds, 1),
    noWorkLost:
      submitFailures.length === 0 && succeeded === o.tasks && Math.abs(gpuSecondsMetered - gpuSecondsExpected) < 1e-6 * Math.max(1, gpuSecondsExpected),
  };
}
