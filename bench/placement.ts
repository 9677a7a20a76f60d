/**
 * Placement on the Alibaba GPU trace, measured the way the FGD paper (USENIX ATC '23) does: pods
 * sampled from the trace (seeded) arrive with no departures until the GPUs they ask for reach the
 * cluster's capacity; then we count the GPUs actually allocated. Pods that do not fit are
 * refused and the arrivals go on. Every policy sees the same pod sequence in a run.
 *
 *   npm run bench:placement -- [--nodes FILE] [--pods FILE] [--seed N] [--runs R] [--spread] [--json]
 *   npm run bench:placement -- --timeline [...]   the timeline replay, bench/timeline.ts
 *
 * Policies: govloop (`place`: smallest domain, best fit, fragmentation-gradient node choice against
 * the pod list's own shape distribution), bestFit and firstFit (per-node baselines). Per policy,
 * averaged over the runs:
 *   allocatedGpuShare  GPUs allocated / GPUs in the cluster (shares count by their fraction)
 *   unallocatedGpus    GPUs in the cluster − GPUs allocated
 *   singleDomainShare  placed multi-GPU pods whose GPUs are in one NVLink domain (1 when none)
 *   decisionsPerSec    place + commit per second, over all arrivals of the run
 *   doubleBooked       GPUs held beyond capacity, recounted from the placements (`audit`), summed
 */
import { basename } from 'node:path';
import { type PlaceResult, type Placement, type PlacementRequest, type PlacementState, audit, bestFit, commit, emptyState, firstFit, place, usage } from '../governance/placement';
import { buildTopologyIndex } from '../governance/topology';
import { DEFAULT_NODES, DEFAULT_PODS, alibabaTopology, alibabaWorkload, loadNodes, loadPods, podRequest, samplePods } from './alibaba';
import { describeMachine, fmt, machine, nowMs, parseFlags, round, table } from './lib';
import { timelineMain } from './timeline';

const usageText = `usage: tsx bench/placement.ts [--nodes FILE] [--pods FILE] [--seed N] [--runs R] [--spread] [--json]
  --nodes   node list CSV (default ${DEFAULT_NODES})
  --pods    pod list CSV (default ${DEFAULT_PODS})
  --seed    first seed; run i uses seed + i (default 1)
  --runs    runs to average (default 5)
  --spread  let multi-GPU pods span nodes (preferred NVLink domain) instead of one node (required)
  --json    print one JSON object {govloop, bestFit, firstFit}
  --timeline  replay the pod list's timeline instead (tenants, quotas, preemption); see bench/timeline.ts --help`;

type PolicyName = 'govloop' | 'bestFit' | 'firstFit';
const POLICIES: Record<PolicyName, (s: PlacementState, r: PlacementRequest) => PlaceResult> = { govloop: place, bestFit, firstFit };

export interface PolicyFigures {
  allocatedGpuShare: number;
  unallocatedGpus: number;
  singleDomainShare: number;
  decisionsPerSec: number;
  doubleBooked: number;
}

interface RunFigures extends PolicyFigures {
  refused: number;
  overcommittedNodes: number;
  stateMismatch: number;
}

if (process.argv.slice(2).includes('--timeline')) timelineMain();
else placementMain();

function placementMain(): void {
  const flags = parseFlags({ nodes: DEFAULT_NODES, pods: DEFAULT_PODS, seed: 1, runs: 5, spread: false, json: false }, usageText);

  const nodes = loadNodes(flags.nodes);
  const pods = loadPods(flags.pods);
  const topology = alibabaTopology(nodes);
  const index = buildTopologyIndex(topology);
  const workload = alibabaWorkload(pods);
  const requests = pods.map((p) => podRequest(p, flags.spread ? 'spread' : 'node'));
  const runs = Math.max(1, Math.floor(flags.runs));

  function runOnce(policy: PolicyName, seq: readonly number[]): RunFigures {
    const decide = POLICIES[policy];
    let state = emptyState(index, { workload });
    const placed: Placement[] = [];
    let refused = 0;
    const t0 = nowMs();
    for (const i of seq) {
      const r = decide(state, requests[i]!);
      if (r.placed) {
        state = commit(state, r);
        placed.push(r);
      } else refused++;
    }
    const seconds = (nowMs() - t0) / 1000;
    const a = audit(index, placed);
    const multi = placed.filter((p) => p.assignments.reduce((s, x) => s + (x.kind === 'whole' ? x.gpus.length : 0), 0) > 1);
    const single = multi.filter((p) => p.domain.level === 'node' || p.domain.level === 'nvlink').length;
    return {
      allocatedGpuShare: a.allocatedGpus / index.totalGpus,
      unallocatedGpus: index.totalGpus - a.allocatedGpus,
      singleDomainShare: multi.length === 0 ? 1 : single / multi.length,
      decisionsPerSec: seq.length / seconds,
      doubleBooked: a.doubleBookedGpus,
      refused,
      overcommittedNodes: a.overcommittedNodes,
      // The state's own accounting must agree with the independent recount.
      stateMismatch: Math.abs(usage(state).allocatedGpus - a.allocatedGpus) > 1e-6 ? 1 : 0,
    };
  }

  const perRun: Record<PolicyName, RunFigures[]> = { govloop: [], bestFit: [], firstFit: [] };
  let arrivals = 0;
  for (let r = 0; r < runs; r++) {
    const seq = samplePods(pods, index.totalGpus, flags.seed + r);
    arrivals += seq.length;
    for (const p of Object.keys(POLICIES) as PolicyName[]) perRun[p].push(runOnce(p, seq));
  }

  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  function summarize(rs: RunFigures[]): PolicyFigures {
    return {
      allocatedGpuShare: round(mean(rs.map((r) => r.allocatedGpuShare)), 4),
      unallocatedGpus: round(mean(rs.map((r) => r.unallocatedGpus)), 1),
      singleDomainShare: round(mean(rs.map((r) => r.singleDomainShare)), 4),
      decisionsPerSec: Math.round(mean(rs.map((r) => r.decisionsPerSec))),
      doubleBooked: rs.reduce((s, r) => s + r.doubleBooked, 0),
    };
  }
  const result = { govloop: summarize(perRun.govloop), bestFit: summarize(perRun.bestFit), firstFit: summarize(perRun.firstFit) };

  const broken = (Object.keys(perRun) as PolicyName[]).filter((p) => perRun[p].some((r) => r.doubleBooked > 0 || r.overcommittedNodes > 0 || r.stateMismatch > 0));
  if (broken.length > 0) console.error(`placement bench: accounting check FAILED for ${broken.join(', ')} (double-booked GPUs, over-committed nodes or state ≠ recount)`);

  if (flags.json) {
    console.log(JSON.stringify(result));
  } else {
    const m = machine();
    console.log(`Placement on the Alibaba GPU trace — ${describeMachine(m)}`);
    console.log(
      `nodes ${basename(flags.nodes)}: ${index.nodes.length} nodes, ${index.totalGpus} GPUs, ${index.domains.rack.length} racks, ${index.domains.block.length} blocks; ` +
        `pods ${basename(flags.pods)}: ${pods.length} (${workload.length} GPU shapes); multi-GPU pods ${flags.spread ? 'may span nodes' : 'on one node'}`,
    );
    console.log(`${runs} run(s), seeds ${flags.seed}…${flags.seed + runs - 1}, ${fmt(arrivals / runs, 0)} arrivals per run on average (until asked GPUs ≥ capacity)\n`);
    const base = result.bestFit.unallocatedGpus;
    console.log(
      table(
        ['policy', 'allocated share', 'unallocated GPUs', 'vs bestFit', 'refused pods', 'single-domain', 'decisions/s', 'double-booked'],
        (Object.keys(result) as PolicyName[]).map((p) => [
          p,
          `${(result[p].allocatedGpuShare * 100).toFixed(2)}%`,
          result[p].unallocatedGpus.toFixed(1),
          p === 'bestFit' ? '—' : `${(((result[p].unallocatedGpus - base) / base) * 100).toFixed(1)}%`,
          fmt(mean(perRun[p].map((r) => r.refused)), 0),
          result[p].singleDomainShare.toFixed(3),
          fmt(result[p].decisionsPerSec, 0),
          result[p].doubleBooked,
        ]),
      ),
    );
  }
  if (broken.length > 0) process.exitCode = 1;
}
