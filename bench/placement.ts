/**
 * Placement on the Alibaba GPU trace, measured the way the FGD paper (USENIX ATC '23) does: pods
 * sampled from the trace (seeded) arrive with no departures until the GPUs they ask for reach the
 * cluster's capacity; then we count the GPUs actually allocated. Pods that do not fit are
 * refused and the arrivals go on. Every policy sees the same pod sequence in a run.
 *
 *   npm run bench:placement -- [--nodes FILE] [--pods FILE] [--seed N] [--runs R] [--spread] [--baselines paper] [--json]
 *   npm run bench:placement -- --timeline [...]   the timeline replay, bench/timeline.ts
 *
 * Policies: govloop (`place`: smallest domain, best fit, fragmentation-gradient node choice against
 * the pod list's own shape distribution), bestFit and firstFit (per-node baselines). With
 * `--baselines paper`, also the FGD paper's schedulers (bench/baselines.ts): random, dotProd,
 * gpuClustering, gpuPacking, paperBestFit and the paper's own fgd, each with a random stream of its
 * own per run (seeded from the run's seed). Per policy, averaged over the runs:
 *   allocatedGpuShare  GPUs allocated / GPUs in the cluster (shares count by their fraction)
 *   unallocatedGpus    GPUs in the cluster − GPUs allocated
 *   singleDomainShare  placed multi-GPU pods whose GPUs are in one NVLink domain (1 when none)
 *   decisionsPerSec    place + commit per second, over all arrivals of the run
 *   doubleBooked       GPUs held beyond capacity, recounted from the placements (`audit`), summed
 */
import { basename } from 'node:path';
import {
  type PlaceResult,
  type Placement,
  type PlacementRequest,
  type PlacementState,
  audit,
  bestFit,
  commit,
  emptyState,
  firstFit,
  place,
  usage,
} from '../governance/placement';
import { buildTopologyIndex } from '../governance/topology';
import { DEFAULT_NODES, DEFAULT_PODS, alibabaTopology, alibabaWorkload, loadNodes, loadPods, podRequest, samplePods } from './alibaba';
import { type Decider, PAPER_POLICIES, type PaperPolicyName, paperPolicy } from './baselines';
import { describeMachine, fail, fmt, machine, nowMs, parseFlags, round, table } from './lib';
import { timelineMain } from './timeline';

const usageText = `usage: tsx bench/placement.ts [--nodes FILE] [--pods FILE] [--seed N] [--runs R] [--spread] [--baselines paper] [--json]
  --nodes   node list CSV (default ${DEFAULT_NODES})
  --pods    pod list CSV (default ${DEFAULT_PODS})
  --seed    first seed; run i uses seed + i (default 1)
  --runs    runs to average (default 5)
  --spread  let multi-GPU pods span nodes (preferred NVLink domain) instead of one node (required)
  --baselines paper  also run the FGD paper's schedulers (bench/baselines.ts): random, dotProd,
            gpuClustering, gpuPacking, paperBestFit and the paper's own fgd; pods stay on one node
  --json    print one JSON object {govloop, bestFit, firstFit} (plus the paper's, with --baselines paper)
  --timeline  replay the pod list's timeline instead (tenants, quotas, preemption); see bench/timeline.ts --help`;

type OwnPolicy = 'govloop' | 'bestFit' | 'firstFit';
type PolicyName = OwnPolicy | PaperPolicyName;
const POLICIES: Record<OwnPolicy, (s: PlacementState, r: PlacementRequest) => PlaceResult> = { govloop: place, bestFit, firstFit };

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
  const flags = parseFlags({ nodes: DEFAULT_NODES, pods: DEFAULT_PODS, seed: 1, runs: 5, spread: false, baselines: '', json: false }, usageText);
  if (flags.baselines !== '' && flags.baselines !== 'paper') fail(`--baselines takes "paper", got "${flags.baselines}"\n${usageText}`);
  if (flags.baselines === 'paper' && flags.spread) fail(`--baselines paper places every pod on one node, as Kubernetes does; leave out --spread\n${usageText}`);
  const policies: PolicyName[] = ['govloop', 'bestFit', 'firstFit', ...(flags.baselines === 'paper' ? PAPER_POLICIES : [])];

  const nodes = loadNodes(flags.nodes);
  const pods = loadPods(flags.pods);
  const topology = alibabaTopology(nodes);
  const index = buildTopologyIndex(topology);
  const workload = alibabaWorkload(pods);
  const requests = pods.map((p) => podRequest(p, flags.spread ? 'spread' : 'node'));
  const runs = Math.max(1, Math.floor(flags.runs));

  function decider(policy: PolicyName, seed: number): Decider {
    if (policy === 'govloop' || policy === 'bestFit' || policy === 'firstFit') return { decide: POLICIES[policy], committed: () => {} };
    // The paper's schedulers draw their random choices from a stream of their own, one per run.
    return paperPolicy(policy, { seed: seed * 1_000_003 + PAPER_POLICIES.indexOf(policy) + 1, requests });
  }

  function runOnce(policy: PolicyName, seq: readonly number[], seed: number): RunFigures {
    const d = decider(policy, seed);
    let state = emptyState(index, { workload });
    const placed: Placement[] = [];
    let refused = 0;
    const t0 = nowMs();
    for (const i of seq) {
      const req = requests[i]!;
      const r = d.decide(state, req);
      if (r.placed) {
        state = commit(state, r);
        d.committed(r, req);
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

  const perRun = Object.fromEntries(policies.map((p) => [p, [] as RunFigures[]])) as Record<PolicyName, RunFigures[]>;
  let arrivals = 0;
  for (let r = 0; r < runs; r++) {
    const seq = samplePods(pods, index.totalGpus, flags.seed + r);
    arrivals += seq.length;
    for (const p of policies) perRun[p].push(runOnce(p, seq, flags.seed + r));
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
  const result = Object.fromEntries(policies.map((p) => [p, summarize(perRun[p])])) as Partial<Record<PolicyName, PolicyFigures>> &
    Record<OwnPolicy, PolicyFigures>;

  const broken = policies.filter((p) => perRun[p].some((r) => r.doubleBooked > 0 || r.overcommittedNodes > 0 || r.stateMismatch > 0));
  if (broken.length > 0)
    console.error(`placement bench: accounting check FAILED for ${broken.join(', ')} (double-booked GPUs, over-committed nodes or state ≠ recount)`);

  if (flags.json) {
    console.log(JSON.stringify(result));
  } else {
    const m = machine();
    console.log(`Placement on the Alibaba GPU trace — ${describeMachine(m)}`);
    console.log(
      `nodes ${basename(flags.nodes)}: ${index.nodes.length} nodes, ${index.totalGpus} GPUs, ${index.domains.rack.length} racks, ${index.domains.block.length} blocks; ` +
        `pods ${basename(flags.pods)}: ${pods.length} (${workload.length} GPU shapes); multi-GPU pods ${flags.spread ? 'may span nodes' : 'on one node'}`,
    );
    console.log(
      `${runs} run(s), seeds ${flags.seed}…${flags.seed + runs - 1}, ${fmt(arrivals / runs, 0)} arrivals per run on average (until asked GPUs ≥ capacity)\n`,
    );
    const base = result.bestFit.unallocatedGpus;
    const gov = result.govloop.unallocatedGpus;
    console.log(
      table(
        [
          'policy',
          'allocated share',
          'unallocated GPUs',
          'vs bestFit',
          'govloop fewer unallocated',
          'refused pods',
          'single-domain',
          'decisions/s',
          'double-booked',
        ],
        policies.map((p) => {
          const f = result[p]!;
          return [
            p,
            `${(f.allocatedGpuShare * 100).toFixed(2)}%`,
            f.unallocatedGpus.toFixed(1),
            p === 'bestFit' ? '—' : `${(((f.unallocatedGpus - base) / base) * 100).toFixed(1)}%`,
            p === 'govloop' ? '—' : `${(((f.unallocatedGpus - gov) / f.unallocatedGpus) * 100).toFixed(1)}%`,
            fmt(mean(perRun[p].map((r) => r.refused)), 0),
            f.singleDomainShare.toFixed(3),
            fmt(f.decisionsPerSec, 0),
            f.doubleBooked,
          ];
        }),
      ),
    );
  }
  if (broken.length > 0) process.exitCode = 1;
}
