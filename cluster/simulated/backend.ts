import type { ClusterConfig } from '../../config/schema';
import type { Db } from '../../ledger/db';
import { ReasonCode, reason } from '../../governance/reasons';
import type { Queryable } from '../../ledger/db';
import { type Placement, commit, emptyState, place } from '../../governance/placement';
import type { ClusterBackend, ClusterCapacity, CreateResult, JobPhase, JobSpec, JobStatus } from '../backend';
import { clusterIndex } from './topology';

interface JobRow {
  name: string;
  node: string | null;
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
      const existing = await c.query<{ node: string | null; phase: JobPhase }>('SELECT node, phase FROM sim_jobs WHERE cluster = $1 AND name = $2', [this.cluster, spec.name]);
      const prior = existing.rows[0];
      if (prior && (prior.node !== null || prior.phase !== 'Suspended')) return { ok: true, nodes: prior.node ? [prior.node] : [] };
      const placed = await this.placeIn(c, spec.gpuType, spec.gpus);
      if (!placed.ok) return placed;
      const node = { name: placed.nodes[0]! };
      if (prior) {
        // A preempted job placed again: it keeps its progress (from its checkpoint) and its meters.
        await c.query('UPDATE sim_jobs SET node = $3 WHERE cluster = $1 AND name = $2', [this.cluster, spec.name, node.name]);
        return placed;
      }
      await c.query(
        `INSERT INTO sim_jobs (cluster, name, task_id, node, gpus, gpu_type, sharing, phase, duration_s, fail_after_s, tokens_per_second, labels)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'Suspended', $8, $9, $10, $11)`,
        [this.cluster, spec.name, spec.taskId, node.name, spec.gpus, spec.gpuType, spec.sharing, spec.simulation.durationSeconds, spec.simulation.failAfterSeconds, spec.simulation.tokensPerSecond, spec.labels],
      );
      return placed;
    });
  }

  /**
   * Where a job goes: governance/placement.ts `place()` over the cluster's topology and the GPUs
   * its jobs hold now, on one node (the simulated cluster runs a job on one node): best fit by the
   * fragmentation gradient, so large free domains stay whole. Nodes are locked so no GPU is booked
   * twice. The placement's explanation comes back with the result (the dispatch audit row keeps it).
   */
  private async placeIn(c: Queryable, gpuType: string, gpus: number): Promise<CreateResult> {
    const nodes = await c.query<{ name: string; gpus: number }>('SELECT name, gpus FROM sim_nodes WHERE cluster = $1 AND gpu_type = $2 ORDER BY name FOR UPDATE', [this.cluster, gpuType]);
    const used = await c.query<{ node: string; used: number }>(
      `SELECT node, SUM(gpus)::int AS used FROM sim_jobs WHERE cluster = $1 AND phase IN ('Running', 'Suspended') AND node IS NOT NULL GROUP BY node`,
      [this.cluster],
    );
    const usedBy = new Map(used.rows.map((r) => [r.node, r.used]));
    const index = clusterIndex(this.config);
    let state = emptyState(index);
    for (const [node, n] of usedBy) {
      const ix = index.nodes.findIndex((x) => x.name === node);
      if (ix < 0 || n <= 0) continue;
      const held = Math.min(n, index.nodes[ix]!.gpus);
      state = commit(state, heldPlacement(node, held));
    }
    const p = gpus > 0 ? place(state, { gpus, gpuType, topology: { level: 'node', mode: 'required' } }) : null;
    if (p === null || !p.placed) {
      const free = nodes.rows.reduce((m, n) => Math.max(m, n.gpus - (usedBy.get(n.name) ?? 0)), 0);
      return { ok: false, reason: reason(ReasonCode.GpuCapacityBusy, `no ${gpuType} node has ${gpus} free GPUs now (most free on one node: ${free})`, free, gpus, `cluster/${this.cluster}`) };
    }
    return { ok: true, nodes: [p.assignments[0]!.node], explanation: p.explanation.summary };
  }

  async resume(name: string): Promise<void> {
    await this.db.query(`UPDATE sim_jobs SET phase = 'Running', resumed_at = $3 WHERE cluster = $1 AND name = $2 AND phase = 'Suspended'`, [this.cluster, name, this.clock()]);
  }

  async suspend(name: string): Promise<void> {
    await this.settleProgress(name, 'Suspended');
  }

  async checkpoint(name: string): Promise<void> {
    await this.settleProgress(name);
    await this.db.query(`UPDATE sim_jobs SET checkpoint_s = progress_s WHERE cluster = $1 AND name = $2 AND phase = 'Running'`, [this.cluster, name]);
  }

  async capacity(gpuType: string): Promise<ClusterCapacity> {
    const nodes = await this.db.query<{ name: string; gpus: number; used: number }>(
      `SELECT n.name, n.gpus, COALESCE(SUM(j.gpus) FILTER (WHERE j.phase IN ('Running', 'Suspended')), 0)::int AS used
       FROM sim_nodes n LEFT JOIN sim_jobs j ON j.cluster = n.cluster AND j.node = n.name
       WHERE n.cluster = $1 AND n.gpu_type = $2 GROUP BY n.name, n.gpus ORDER BY n.name`,
      [this.cluster, gpuType],
    );
    const now = this.clock().getTime();
    const jobs = await this.db.query<JobRow & { task_id: string }>(`SELECT * FROM sim_jobs WHERE cluster = $1 AND gpu_type = $2 AND phase = 'Running'`, [this.cluster, gpuType]);
    return {
      nodes: nodes.rows,
      jobs: jobs.rows.map((j) => {
        const progress = Math.min(j.duration_s, j.progress_s + (j.resumed_at ? ((now - j.resumed_at.getTime()) / 1000) * this.speedup : 0));
        return { taskId: j.task_id, node: j.node, gpus: j.gpus, lostSecondsIfSuspended: Math.max(0, progress - j.checkpoint_s) };
      }),
    };
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
      nodes: row.node ? [row.node] : [],
      progressSeconds: row.progress_s,
      checkpointSeconds: row.checkpoint_s,
      lostSeconds: row.lost_s,
      gpuSeconds: row.ran_s * row.gpus,
      tokens: Math.floor(row.ran_s * row.tokens_per_second),
      message: row.phase === 'Failed' ? `simulated failure after ${row.fail_after_s}s` : null,
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
      const now = this.clock();
      if (phase === 'Running' && row.resumed_at) {
        const end = Math.min(row.duration_s, row.fail_after_s ?? Infinity);
        const next = Math.min(end, progress + ((now.getTime() - row.resumed_at.getTime()) / 1000) * this.speedup);
        ran += Math.max(0, next - progress);
        progress = next;
        if (progress >= end) phase = row.fail_after_s !== null && row.fail_after_s < row.duration_s ? 'Failed' : 'Succeeded';
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
           ran_s = $6, lost_s = $7, node = $8
         WHERE cluster = $1 AND name = $2`,
        [this.cluster, name, progress, phase, now, ran, lost, node],
      );
    });
  }
}

/** What a node's running jobs hold, as a placement to commit: its first `gpus` GPUs, whole. */
function heldPlacement(node: string, gpus: number): Placement {
  return {
    placed: true,
    policy: 'govloop',
    requestId: null,
    assignments: [{ kind: 'whole', node, gpus: Array.from({ length: gpus }, (_, i) => i), cpuMilli: 0, memoryMib: 0 }],
    domain: { level: 'node', id: node },
    explanation: { chosenLevel: 'node', whyNotSmaller: [], fragmentationAfter: 0, constraint: { level: 'node', mode: 'required', satisfied: true }, summary: 'held' },
  };
}
