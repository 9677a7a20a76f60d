import { ApplicationFailure } from '@temporalio/common';
import type { ClusterConfig } from '../../config/schema';
import type { Db } from '../../ledger/db';
import { ReasonCode, reason } from '../../governance/reasons';
import type { Queryable } from '../../ledger/db';
import {
  type Assignment,
  type Placement,
  type PlacementRequest,
  type PlacementState,
  PlacementStateError,
  commit,
  emptyState,
  enclosingDomain,
  heldPlacement,
  place,
  release,
} from '../../governance/placement';
import { TOPOLOGY_LEVELS, type TopologyIndex } from '../../governance/topology';
import {
  type ClusterBackend,
  type ClusterCapacity,
  ClusterErrorType,
  type CreateResult,
  type GpuRequest,
  type JobPhase,
  type JobSpec,
  type JobStatus,
  type RunLimit,
} from '../backend';
import { clusterIndex } from '../../governance/cluster-topology';

interface JobRow {
  name: string;
  node: string | null;
  assignments: Assignment[] | null;
  gpus: number;
  phase: JobPhase;
  duration_s: number;
  fail_after_s: number | null;
  tokens_per_second: number;
  progress_s: number;
  checkpoint_s: number;
  ran_s: number;
  lost_s: number;
  resumed_at: Date | null;
  running_since: Date | null;
  stop_at_ran_s: number | null;
  stop_reason: string | null;
}

/**
 * A GPU cluster that does not need GPUs: nodes from config/cluster.yaml, jobs in the ledger.
 * A running job advances on the (injected) clock at `speedup` simulated seconds per real second,
 * so its progress survives worker restarts exactly as a real job's would.
 *
 * Preemption: `checkpoint` saves the progress; `suspend` frees the job's node and sets its progress
 * back to the last checkpoint (what ran after it is lost, but was metered: it ran). `create` on a
 * job suspended that way places it again, and `resume` continues from the checkpoint.
 */
export class SimulatedCluster implements ClusterBackend {
  readonly cluster: string;
  /** The simulated cluster stops a job exactly at its run limit, in simulated time, whatever the speed-up. */
  readonly stopMarginSeconds = 0;
  /**
   * The least preemption grace this cluster needs (ClusterBackend.checkpointGraceMillis); absent,
   * the policy's. Set it to play a cluster slow to deliver the checkpoint signal, as Kubernetes is.
   */
  checkpointGraceMillis?: number;

  constructor(
    private readonly db: Db,
    private readonly config: ClusterConfig,
    private readonly speedup: number,
    private readonly clock: () => Date = () => new Date(),
  ) {
    this.cluster = config.name;
  }

  /** Writes the configured nodes into the ledger (idempotent; a node's shape follows the config). */
  async sync(): Promise<void> {
    const n = this.config.nodes;
    await this.db.query(
      `INSERT INTO sim_nodes (cluster, name, gpu_type, gpus, rack, block)
       SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::text[], $6::text[])
       ON CONFLICT (cluster, name) DO UPDATE SET gpu_type = EXCLUDED.gpu_type, gpus = EXCLUDED.gpus, rack = EXCLUDED.rack, block = EXCLUDED.block`,
      [this.cluster, n.map((x) => x.name), n.map((x) => x.gpuType), n.map((x) => x.gpus), n.map((x) => x.rack), n.map((x) => x.block)],
    );
  }

  async create(spec: JobSpec): Promise<CreateResult> {
    return this.db.tx(async (c) => {
      const existing = await c.query<{ task_id: string; node: string | null; phase: JobPhase; assignments: Assignment[] | null }>(
        'SELECT task_id, node, phase, assignments FROM sim_jobs WHERE cluster = $1 AND name = $2',
        [this.cluster, spec.name],
      );
      const prior = existing.rows[0];
      if (prior && prior.task_id !== spec.taskId) {
        // Another task's job: never adopt its placement, progress or meters (a retried dispatch of the same task is the only re-create).
        throw ApplicationFailure.create({
          type: ClusterErrorType.JobNameTaken,
          nonRetryable: true,
          message: `simulated cluster ${this.cluster}: job ${spec.name} belongs to task ${prior.task_id}, not ${spec.taskId}`,
        });
      }
      if (prior && (prior.node !== null || prior.phase !== 'Suspended')) return { ok: true, nodes: nodesOf(prior) };
      const placed = await this.placeIn(c, spec);
      if (!placed.ok) return placed;
      const assignments = JSON.stringify(placed.assignments);
      if (prior) {
        // A preempted job placed again: it keeps its progress (from its checkpoint) and its meters.
        await c.query('UPDATE sim_jobs SET node = $3, assignments = $4 WHERE cluster = $1 AND name = $2', [
          this.cluster,
          spec.name,
          placed.nodes[0],
          assignments,
        ]);
        return { ok: true, nodes: placed.nodes, explanation: placed.explanation };
      }
      await c.query(
        `INSERT INTO sim_jobs (cluster, name, task_id, node, assignments, gpus, gpu_type, sharing, phase, duration_s, fail_after_s, tokens_per_second, labels)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'Suspended', $9, $10, $11, $12)`,
        [
          this.cluster,
          spec.name,
          spec.taskId,
          placed.nodes[0],
          assignments,
          spec.gpus,
          spec.gpuType,
          spec.sharing,
          spec.simulation.durationSeconds,
          spec.simulation.failAfterSeconds,
          spec.simulation.tokensPerSecond,
          spec.labels,
        ],
      );
      return { ok: true, nodes: placed.nodes, explanation: placed.explanation };
    });
  }

  /**
   * Where a job goes: governance/placement.ts `place()` over the cluster's topology and what its
   * jobs hold now (whole GPUs, MIG slices, MPS / time-slice shares): a gang in the smallest domain
   * that holds it, fractional work packed, best fit by the fragmentation gradient so large free
   * domains stay whole. The cluster's nodes are locked so no GPU is booked twice. The placement's
   * explanation comes back with the result (the dispatch audit row keeps it).
   */
  private async placeIn(
    c: Queryable,
    spec: JobSpec,
  ): Promise<{ ok: true; nodes: string[]; assignments: Assignment[]; explanation: string } | { ok: false; reason: ReturnType<typeof reason> }> {
    await c.query('SELECT name FROM sim_nodes WHERE cluster = $1 ORDER BY name FOR UPDATE', [this.cluster]);
    const { state } = await this.held(c);
    const p = placeRequest(state, spec);
    if (!p.placed)
      return {
        ok: false,
        reason: reason(
          ReasonCode.GpuCapacityBusy,
          `cluster ${this.cluster} cannot place it now: ${p.message}`,
          null,
          describe(spec),
          `cluster/${this.cluster}`,
        ),
      };
    return { ok: true, nodes: [...new Set(p.assignments.map((a) => a.node))], assignments: p.assignments, explanation: p.summary };
  }

  /** The placement state of what the cluster's jobs hold now, and each holding task's assignments. */
  private async held(q: Queryable): Promise<{ index: TopologyIndex; state: PlacementState; byTask: Map<string, Placement> }> {
    const { rows } = await q.query<{ task_id: string; node: string; gpus: number; assignments: Assignment[] | null }>(
      `SELECT task_id, node, gpus, assignments FROM sim_jobs WHERE cluster = $1 AND phase IN ('Running', 'Suspended') AND node IS NOT NULL ORDER BY created_at, name`,
      [this.cluster],
    );
    const index = clusterIndex(this.config);
    let state = emptyState(index);
    const byTask = new Map<string, Placement>();
    for (const r of rows) {
      if (!index.nodeIndex.has(r.node)) continue; // a node no longer in the config
      const p = heldPlacement(r.assignments ?? [wholeOn(r.node, Math.min(r.gpus, index.nodes[index.nodeIndex.get(r.node)!]!.gpus))]);
      try {
        state = commit(state, p);
      } catch (err) {
        if (!(err instanceof PlacementStateError)) throw err;
        continue; // held on GPUs the config no longer has: nothing to count
      }
      byTask.set(r.task_id, p);
    }
    return { index, state, byTask };
  }

  /**
   * Unsuspends the job. With a run limit, the job stops itself (Failed, `DeadlineExceeded`) once it
   * has run `limit.maxRunSeconds` simulated seconds from here: exactly, in simulated time, whatever
   * the speed-up or how seldom anyone looks (settleProgress folds it in). Each resume sets it anew.
   */
  async resume(name: string, limit?: RunLimit): Promise<void> {
    const runFor = limit === undefined ? null : Math.max(0, limit.maxRunSeconds);
    await this.db.query(
      `UPDATE sim_jobs SET phase = 'Running', resumed_at = $3, running_since = $3, stop_at_ran_s = CASE WHEN $4::float8 IS NULL THEN NULL ELSE ran_s + $4::float8 END
       WHERE cluster = $1 AND name = $2 AND phase = 'Suspended'`,
      [this.cluster, name, this.clock(), runFor],
    );
  }

  async suspend(name: string): Promise<void> {
    await this.settleProgress(name, 'Suspended');
  }

  async checkpoint(name: string): Promise<void> {
    await this.settleProgress(name);
    await this.db.query(`UPDATE sim_jobs SET checkpoint_s = progress_s WHERE cluster = $1 AND name = $2 AND phase = 'Running'`, [this.cluster, name]);
  }

  /**
   * Nodes of the type with the GPUs booked on them (a GPU cut into MIG slices or shared counts as
   * booked), the running jobs with what suspending them would lose, and, given a request, `fits`:
   * whether `place()` finds room for it once some tasks' jobs are gone.
   */
  async capacity(gpuType: string, request?: GpuRequest): Promise<ClusterCapacity> {
    const { index, state, byTask } = await this.held(this.db);
    const booked = new Map<string, Set<number>>();
    for (const p of byTask.values()) for (const a of p.assignments) for (const g of a.gpus) booked.set(a.node, (booked.get(a.node) ?? new Set()).add(g));
    const nodes = index.nodes
      .filter((n) => index.gpuTypes[n.type]?.name === gpuType)
      .map((n) => ({ name: n.name, gpus: n.gpus, used: booked.get(n.name)?.size ?? 0 }));
    const now = this.clock().getTime();
    const jobs = await this.db.query<JobRow & { task_id: string }>(`SELECT * FROM sim_jobs WHERE cluster = $1 AND gpu_type = $2 AND phase = 'Running'`, [
      this.cluster,
      gpuType,
    ]);
    const out: ClusterCapacity = {
      nodes,
      jobs: jobs.rows.map((j) => {
        const progress = Math.min(j.duration_s, j.progress_s + (j.resumed_at ? ((now - j.resumed_at.getTime()) / 1000) * this.speedup : 0));
        return {
          taskId: j.task_id,
          node: j.node,
          gpus: j.gpus,
          lostSecondsIfSuspended: Math.max(0, progress - j.checkpoint_s),
          ...(j.running_since ? { runSeconds: Math.max(0, ((now - j.running_since.getTime()) / 1000) * this.speedup) } : {}),
        };
      }),
    };
    if (request && request.gpus > 0) {
      out.fits = (freed) => {
        let st = state;
        for (const id of freed) {
          const p = byTask.get(id);
          if (p) st = release(st, p);
        }
        return placeRequest(st, request).placed;
      };
    }
    return out;
  }

  async delete(name: string): Promise<void> {
    await this.settleProgress(name, 'Deleted');
  }

  async status(name: string): Promise<JobStatus | null> {
    await this.settleProgress(name);
    const { rows } = await this.db.query<JobRow>('SELECT * FROM sim_jobs WHERE cluster = $1 AND name = $2', [this.cluster, name]);
    const row = rows[0];
    if (!row) return null;
    return {
      name,
      phase: row.phase,
      nodes: nodesOf(row),
      progressSeconds: row.progress_s,
      checkpointSeconds: row.checkpoint_s,
      lostSeconds: row.lost_s,
      gpuSeconds: row.ran_s * row.gpus,
      tokens: Math.floor(row.ran_s * row.tokens_per_second),
      message:
        row.phase !== 'Failed'
          ? null
          : row.stop_reason === DEADLINE_EXCEEDED
            ? `${DEADLINE_EXCEEDED}: stopped by the cluster at its run limit after ${round3(row.ran_s)} s run`
            : `simulated failure after ${row.fail_after_s}s`,
      ...(row.phase === 'Failed' && row.stop_reason === DEADLINE_EXCEEDED ? { deadlineExceeded: true } : {}),
    };
  }

  /**
   * Folds the time run since the last resume into progress, ends the job if it is done or failed,
   * and optionally moves it to `to`. Suspended, finished and deleted jobs hold still.
   */
  private async settleProgress(name: string, to?: 'Suspended' | 'Deleted'): Promise<void> {
    await this.db.tx(async (c) => {
      const { rows } = await c.query<JobRow>('SELECT * FROM sim_jobs WHERE cluster = $1 AND name = $2 FOR UPDATE', [this.cluster, name]);
      const row = rows[0];
      if (!row) return;
      let phase = row.phase;
      let progress = row.progress_s;
      let ran = row.ran_s;
      let lost = row.lost_s;
      let node = row.node;
      let stopReason = row.stop_reason;
      const now = this.clock();
      if (phase === 'Running' && row.resumed_at) {
        const end = Math.min(row.duration_s, row.fail_after_s ?? Infinity);
        const elapsed = Math.max(0, ((now.getTime() - row.resumed_at.getTime()) / 1000) * this.speedup);
        // The run limit: the job runs no further than stop_at_ran_s, whatever time has passed.
        const runLeft = row.stop_at_ran_s === null ? Infinity : Math.max(0, row.stop_at_ran_s - ran);
        const step = Math.min(elapsed, Math.max(0, end - progress), runLeft);
        ran += step;
        progress += step;
        if (progress >= end) phase = row.fail_after_s !== null && row.fail_after_s < row.duration_s ? 'Failed' : 'Succeeded';
        else if (step >= runLeft) {
          phase = 'Failed';
          stopReason = DEADLINE_EXCEEDED;
        }
      }
      if (to === 'Suspended' && phase === 'Running') {
        // Preempted: back to the last checkpoint, and off its node until placed again.
        lost += Math.max(0, progress - row.checkpoint_s);
        progress = Math.min(progress, row.checkpoint_s);
        node = null;
      }
      if (to === 'Deleted' || (to === 'Suspended' && phase === 'Running')) phase = to;
      await c.query(
        `UPDATE sim_jobs SET progress_s = $3, phase = $4, resumed_at = CASE WHEN $4 = 'Running' THEN $5::timestamptz ELSE NULL END,
           running_since = CASE WHEN $4 = 'Running' THEN running_since ELSE NULL END,
           ran_s = $6, lost_s = $7, node = $8, assignments = CASE WHEN $8::text IS NULL THEN NULL ELSE assignments END, stop_reason = $9
         WHERE cluster = $1 AND name = $2`,
        [this.cluster, name, progress, phase, now, ran, lost, node, stopReason],
      );
    });
  }
}

/** Kubernetes' reason for a Job stopped by activeDeadlineSeconds; the simulated cluster says the same. */
const DEADLINE_EXCEEDED = 'DeadlineExceeded';
const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** Whole GPUs 0..n-1 of a node: what a job row written before assignments were kept holds. */
function wholeOn(node: string, gpus: number): Assignment {
  return { kind: 'whole', node, gpus: Array.from({ length: gpus }, (_, i) => i), cpuMilli: 0, memoryMib: 0 };
}

function nodesOf(row: { node: string | null; assignments: Assignment[] | null }): string[] {
  if (row.assignments && row.assignments.length > 0) return [...new Set(row.assignments.map((a) => a.node))];
  return row.node ? [row.node] : [];
}

function describe(r: GpuRequest): string {
  if (r.sharing === 'exclusive') return `${r.gpus} x ${r.gpuType}`;
  if (r.sharing.startsWith('mig:')) return `${r.gpus} x ${r.gpuType} ${r.sharing}`;
  return `${r.gpuMilli ?? 1000}/1000 of a ${r.gpuType} (${r.sharing})`;
}

/**
 * A job's GPU request as placements: whole GPUs are one gang (all or nothing, as close together as
 * its topology allows); `mig:<profile>` is one placement per instance, all or nothing, and a
 * `required` level holds for all of them together; an mps / timeslice share is one placement.
 */
export function placeRequest(
  state: PlacementState,
  r: GpuRequest,
): { placed: true; assignments: Assignment[]; summary: string } | { placed: false; message: string } {
  const topology = r.topology;
  if (r.sharing === 'exclusive') {
    const p = place(state, { gpus: r.gpus, gpuType: r.gpuType, ...(topology ? { topology } : {}) });
    return p.placed ? { placed: true, assignments: p.assignments, summary: p.explanation.summary } : { placed: false, message: p.reason.message };
  }
  if (r.sharing === 'mps' || r.sharing === 'timeslice') {
    const p = place(state, { gpuMilli: r.gpuMilli ?? 999, sharing: r.sharing, gpuType: r.gpuType });
    return p.placed ? { placed: true, assignments: p.assignments, summary: p.explanation.summary } : { placed: false, message: p.reason.message };
  }
  const migProfile = r.sharing.slice('mig:'.length);
  let st = state;
  const assignments: Assignment[] = [];
  for (let i = 0; i < r.gpus; i++) {
    const req: PlacementRequest = { migProfile, gpuType: r.gpuType };
    const p = place(st, req);
    if (!p.placed) return { placed: false, message: `MIG instance ${i + 1} of ${r.gpus}: ${p.reason.message}` };
    st = commit(st, p);
    assignments.push(...p.assignments);
  }
  const domain = enclosingDomain(st.index, assignments);
  if (topology?.mode === 'required' && TOPOLOGY_LEVELS.indexOf(domain.level) > TOPOLOGY_LEVELS.indexOf(topology.level)) {
    return { placed: false, message: `${r.gpus} ${migProfile} instances do not fit in one ${topology.level} now (they would spread over a ${domain.level})` };
  }
  return { placed: true, assignments, summary: `${r.gpus} x MIG ${migProfile} packed in ${domain.level} ${domain.id}` };
}
