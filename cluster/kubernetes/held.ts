/** What is held: the GPUs govloop Jobs and other pods hold per node, and the placement state they make (cluster/kubernetes/placement.ts). */
import type { V1Job, V1Pod } from '@kubernetes/client-node';
import { type Assignment, type PlacementState, commit, emptyState, heldPlacement } from '../../governance/placement';
import { migGpuFraction } from '../../governance/plan';
import type { TopologyIndex } from '../../governance/topology';
import { Annotation, LABEL_JOB_NAME, LABEL_MANAGED_BY, MANAGED_BY, jobPhase, nodesOf, taskIdOf } from './manifests';
import type { GpuNode, NodeLabelOptions, TopologyReading } from './gpu-nodes';
import { parseQuantity } from './quantity';

// ---------------------------------------------------------------------------------------------
// What is held

/** GPUs something holds on one node: whole GPUs, a share of one GPU, or MIG instances (recorded, not counted as `nvidia.com/gpu`). */
export type HeldGpus = { owner: string; taskId: string | null; node: string } & (
  | { kind: 'whole'; gpus: number }
  | { kind: 'share'; milli: number; sharing: 'mps' | 'timeslice' }
  /** `count` MIG instances of `profile` (not counted as `nvidia.com/gpu`: a partitioned GPU is not in it). */
  | { kind: 'mig'; profile: string; count: number; units: number }
);

export const MIG_RESOURCE = 'nvidia.com/mig-';
const migUnits = (profile: string, count: number): number => count * migGpuFraction(profile);

/** Does a govloop Job hold its nodes now: pinned, and Running or Suspended-but-placed (not preempted, finished or being deleted)? */
export function holdsNodes(job: V1Job): boolean {
  const phase = jobPhase(job).phase;
  return (phase === 'Running' || phase === 'Suspended') && nodesOf(job).length > 0;
}

/** The GPUs of the govloop Jobs that hold their nodes (`holdsNodes`), per node. */
export function heldByJobs(jobs: readonly V1Job[]): HeldGpus[] {
  const out: HeldGpus[] = [];
  for (const job of jobs) {
    if (!holdsNodes(job)) continue;
    const a = job.metadata?.annotations ?? {};
    const nodes = nodesOf(job);
    const gpus = Number(a[Annotation.gpus] ?? 0) || 0;
    if (gpus <= 0) continue;
    const sharing = a[Annotation.sharing] ?? 'exclusive';
    const base = { owner: `Job ${job.metadata?.namespace ?? ''}/${job.metadata?.name ?? ''}`, taskId: taskIdOf(job) };
    const milli = Number(a[Annotation.gpuMilli]);
    if (sharing.startsWith('mig:'))
      out.push({ ...base, node: nodes[0]!, kind: 'mig', profile: sharing.slice(4), count: gpus, units: migUnits(sharing.slice(4), gpus) });
    else if ((sharing === 'mps' || sharing === 'timeslice') && Number.isInteger(milli) && milli > 0 && milli < 1000)
      out.push({ ...base, node: nodes[0]!, kind: 'share', milli, sharing });
    else for (const node of nodes) out.push({ ...base, node, kind: 'whole', gpus: Math.ceil(gpus / nodes.length) });
  }
  return out;
}

/**
 * GPUs that pods bound to a node hold, except the pods of Jobs `heldByJobs` already counts
 * (`counted`: `ns/job-name`). `nvidia.com/gpu` (or the renamed shared resource) on a node with
 * replicas is a share of 1/replicas; `nvidia.com/mig-<p>` counts by its slices. Finished pods hold nothing.
 */
export function heldByPods(
  pods: readonly V1Pod[],
  counted: ReadonlySet<string>,
  nodes: readonly GpuNode[],
  opts: Pick<NodeLabelOptions, 'sharedGpuResource'> = {},
): HeldGpus[] {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const out: HeldGpus[] = [];
  for (const pod of pods) {
    const nodeName = pod.spec?.nodeName;
    const phase = pod.status?.phase;
    if (!nodeName || phase === 'Succeeded' || phase === 'Failed') continue;
    const ns = pod.metadata?.namespace ?? '';
    const jobName = pod.metadata?.labels?.[LABEL_JOB_NAME];
    if (jobName && counted.has(`${ns}/${jobName}`)) continue;
    const node = byName.get(nodeName);
    const govloop = pod.metadata?.labels?.[LABEL_MANAGED_BY] === MANAGED_BY;
    const base = {
      owner: `Pod ${ns}/${pod.metadata?.name ?? ''}`,
      taskId: govloop ? (pod.metadata?.annotations?.[Annotation.taskId] ?? null) : null,
      node: nodeName,
    };
    for (const c of pod.spec?.containers ?? []) {
      const res = { ...(c.resources?.requests ?? {}), ...(c.resources?.limits ?? {}) };
      for (const [name, q] of Object.entries(res)) {
        const n = Math.floor(parseQuantity(q) ?? 0);
        if (n <= 0) continue;
        const replicas = node?.replicas ?? 1;
        const shared = name === opts.sharedGpuResource && name !== 'nvidia.com/gpu';
        if (name === 'nvidia.com/gpu' || shared) {
          const mode = node?.sharing.mps ? 'mps' : node?.sharing.timeslice ? 'timeslice' : null;
          if (replicas > 1 && mode) for (let i = 0; i < n; i++) out.push({ ...base, kind: 'share', milli: Math.floor(1000 / replicas), sharing: mode });
          else out.push({ ...base, kind: 'whole', gpus: n });
        } else if (name.startsWith(MIG_RESOURCE)) {
          const profile = name.slice(MIG_RESOURCE.length);
          out.push({ ...base, kind: 'mig', profile, count: n, units: migUnits(profile, n) });
        }
      }
    }
  }
  return out;
}

/**
 * GPUs in use on each node, as the simulated cluster counts them: a GPU is used when anything holds
 * it, whole or a share of it (a shared GPU is no longer free for whole-GPU work). With a topology,
 * from the placement state (the shares packed as `placementState` packs them); without one, whole
 * GPUs plus the shares rounded up to GPUs. MIG instances are not counted: a MIG-partitioned GPU is
 * not in a node's allocatable `nvidia.com/gpu`.
 */
export function usedGpus(reading: TopologyReading, held: readonly HeldGpus[]): Map<string, number> {
  const used = new Map<string, number>();
  if (reading.index !== null) {
    const { state } = placementState(reading.index, held);
    for (const n of reading.index.nodes) used.set(n.name, n.gpus - state.freeWhole[n.index]!);
    return used;
  }
  const milli = new Map<string, number>();
  for (const h of held) {
    if (h.kind === 'whole') used.set(h.node, (used.get(h.node) ?? 0) + h.gpus);
    if (h.kind === 'share') milli.set(h.node, (milli.get(h.node) ?? 0) + h.milli);
  }
  for (const [node, m] of milli) used.set(node, (used.get(node) ?? 0) + Math.ceil(m / 1000));
  return used;
}

/**
 * The placement state with the held GPUs taken. Kubernetes does not say which GPU of a node a pod
 * got, so whole GPUs are taken lowest index first and shares go onto a GPU already shared the same
 * way while it has room. Held GPUs the topology cannot hold (more than a node has, a node left out,
 * a share on a node that does not share) are left out and named in `notes`.
 */
export function placementState(index: TopologyIndex, held: readonly HeldGpus[]): { state: PlacementState; notes: string[] } {
  const notes: string[] = [];
  type Slot = { mode: 'free' | 'whole' | 'mps' | 'timeslice'; milli: number };
  const slots = new Map<string, Slot[]>();
  const assignments: Assignment[] = [];
  for (const h of held) {
    if (h.kind === 'mig') continue;
    const n = index.nodeIndex.get(h.node);
    if (n === undefined) continue; // not a node govloop places on (another GPU type's, cordoned): nothing to take
    const node = index.nodes[n]!;
    const s = slots.get(h.node) ?? Array.from({ length: node.gpus }, (): Slot => ({ mode: 'free', milli: 0 }));
    slots.set(h.node, s);
    if (h.kind === 'whole') {
      const free = s.map((x, i) => (x.mode === 'free' ? i : -1)).filter((i) => i >= 0);
      const take = free.slice(0, h.gpus);
      if (take.length < h.gpus) notes.push(`${h.owner} holds ${h.gpus} GPUs on ${h.node}, which has ${take.length} free: counted ${take.length}`);
      if (take.length === 0) continue;
      for (const i of take) s[i] = { mode: 'whole', milli: 1000 };
      assignments.push({ kind: 'whole', node: h.node, gpus: take, cpuMilli: 0, memoryMib: 0 });
    } else {
      if (!(h.sharing === 'mps' ? node.mps : node.timeslice)) {
        notes.push(`${h.owner} holds a ${h.sharing} share on ${h.node}, which is not labelled for ${h.sharing}: not counted`);
        continue;
      }
      let i = s.findIndex((x) => x.mode === h.sharing && x.milli + h.milli <= 1000);
      if (i < 0) i = s.findIndex((x) => x.mode === 'free');
      if (i < 0) {
        notes.push(`${h.owner} holds a ${h.milli}/1000 share on ${h.node}, which has no GPU left for it: not counted`);
        continue;
      }
      s[i] = { mode: h.sharing, milli: s[i]!.milli + h.milli };
      assignments.push({ kind: 'milli', node: h.node, gpus: [i], milli: h.milli, sharing: h.sharing, cpuMilli: 0, memoryMib: 0 });
    }
  }
  const state = emptyState(index);
  try {
    return { state: assignments.length ? commit(state, heldPlacement(assignments)) : state, notes };
  } catch (err) {
    // Cannot happen with the slots above; if it does, take what commits one by one.
    let st = state;
    for (const a of assignments) {
      try {
        st = commit(st, heldPlacement([a]));
      } catch (e) {
        notes.push(`held ${a.kind} on ${a.node} not counted: ${(e as Error).message}`);
      }
    }
    notes.push(`held GPUs committed one by one: ${(err as Error).message}`);
    return { state: st, notes };
  }
}
