/** What capacity() and govloop placement read from the API server, and the capacity answer built from it (KubernetesCluster.capacity). */
import type { V1Job, V1Node, V1Pod } from '@kubernetes/client-node';
import type { ClusterCapacity } from '../backend';
import { Annotation, LABEL_JOB_NAME, LABEL_MANAGED_BY, LABEL_TASK, MANAGED_BY, jobAccounting, jobPhase, nodesOf, sinceResumed, taskIdOf } from './manifests';
import { type GpuAsk, type HeldGpus, type TopologyReading, decidePlacement, heldByJobs, heldByPods, holdsNodes, readTopology, usedGpus } from './placement';
import { type KubeClient, kubernetesFailure } from './api';
import type { KubernetesClusterOptions } from './options';

/** Pods that may hold GPUs: not finished. */
const ACTIVE_PODS = 'status.phase!=Succeeded,status.phase!=Failed';

/** Nodes, govloop Jobs and active pods, read together, as the placement sees them. */
export interface ClusterView {
  reading: TopologyReading;
  held: HeldGpus[];
  jobs: V1Job[];
  pods: V1Pod[];
}

/** Reads the view (KubernetesCluster.view): Nodes with the GPU-type label, the namespace's govloop Jobs, and active pods. */
export async function readClusterView(c: KubeClient, cluster: string, opts: KubernetesClusterOptions, gpuTypeLabel: string | null): Promise<ClusterView> {
  const typeLabel = gpuTypeLabel;
  const { namespace } = c;
  const others = opts.countOtherPods ?? true;
  // All three at once; a failure is reported in this order, whichever came back first.
  const [n, j, p] = await Promise.allSettled([
    c.core.listNode(typeLabel ? { labelSelector: typeLabel } : {}),
    c.jobs.listNamespacedJob({ namespace, labelSelector: LABEL_TASK }),
    others
      ? c.core.listPodForAllNamespaces({ fieldSelector: ACTIVE_PODS })
      : c.core.listNamespacedPod({ namespace, labelSelector: `${LABEL_MANAGED_BY}=${MANAGED_BY}`, fieldSelector: ACTIVE_PODS }),
  ]);
  if (n.status === 'rejected') throw kubernetesFailure(`list nodes${typeLabel ? ` labelled ${typeLabel}` : ''}`, n.reason, 'get/list on nodes (a ClusterRole)');
  if (j.status === 'rejected') throw kubernetesFailure(`list jobs in namespace ${namespace}`, j.reason, 'list on jobs.batch in this namespace');
  if (p.status === 'rejected') {
    throw kubernetesFailure(
      others ? 'list pods in all namespaces' : `list pods in namespace ${namespace}`,
      p.reason,
      others ? 'list on pods in all namespaces (a ClusterRole), or countOtherPods: false' : 'list on pods in this namespace',
    );
  }
  const nodes: V1Node[] = n.value.items;
  const jobs = j.value.items;
  const pods = p.value.items;
  const reading = readTopology(nodes, cluster, { ...opts.nodeLabels, gpuTypeLabel: typeLabel });
  const counted = new Set(jobs.filter(holdsNodes).map((j) => `${j.metadata?.namespace ?? namespace}/${j.metadata?.name ?? ''}`));
  const held = [
    ...heldByJobs(jobs),
    ...heldByPods(pods, counted, reading.nodes, { ...(opts.sharedGpuResource ? { sharedGpuResource: opts.sharedGpuResource } : {}) }),
  ];
  return { reading, held, jobs, pods };
}

/** The GPU type of a govloop Job: its annotation, or (Jobs from before it) its node affinity. */
export function gpuTypeOf(job: V1Job, gpuTypeLabel: string | null): string | null {
  const a = job.metadata?.annotations?.[Annotation.gpuType];
  if (a) return a;
  const key = gpuTypeLabel;
  const terms = job.spec?.template.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms ?? [];
  for (const t of terms) for (const e of t.matchExpressions ?? []) if (e.key === key && e.values?.length) return e.values[0]!;
  return null;
}

/** KubernetesCluster.capacity over a view read at `now`. */
export function capacityOf(
  view: ClusterView,
  gpuType: string,
  request: GpuAsk | undefined,
  on: { namespace: string; cluster: string; opts: KubernetesClusterOptions; gpuTypeLabel: string | null; now: Date },
): ClusterCapacity {
  const { namespace, cluster, opts, gpuTypeLabel, now } = on;
  const used = usedGpus(view.reading, view.held);
  const anyType = gpuTypeLabel === null;
  const nodes = view.reading.nodes.filter((n) => anyType || n.gpuType === gpuType).map((n) => ({ name: n.name, gpus: n.gpus, used: used.get(n.name) ?? 0 }));
  const podNode = new Map<string, string>();
  for (const p of view.pods) {
    const job = p.metadata?.labels?.[LABEL_JOB_NAME];
    if (job && p.spec?.nodeName && p.metadata?.namespace === namespace && !podNode.has(job)) podNode.set(job, p.spec.nodeName);
  }
  const jobs = view.jobs
    .filter((j) => (anyType || gpuTypeOf(j, gpuTypeLabel) === gpuType) && jobPhase(j).phase === 'Running' && taskIdOf(j) !== null)
    .map((j) => {
      const acc = jobAccounting(j, now);
      return {
        taskId: taskIdOf(j)!,
        node: nodesOf(j)[0] ?? podNode.get(j.metadata?.name ?? '') ?? null,
        gpus: Number(j.metadata?.annotations?.[Annotation.gpus] ?? 0) || 0,
        lostSecondsIfSuspended: Math.max(0, acc.progressSeconds - (acc.checkpointSeconds ?? 0)),
        ...sinceResumed(j, now),
      };
    });
  const cap: ClusterCapacity = { nodes, jobs };
  if (request && !opts.place && opts.placement === 'govloop' && view.reading.index !== null) {
    const { reading, held } = view;
    cap.fits = (freed) => {
      const gone = new Set(freed);
      return (
        decidePlacement(
          reading,
          held.filter((h) => h.taskId === null || !gone.has(h.taskId)),
          request,
          cluster,
        ).decision.kind !== 'none'
      );
    };
  }
  return cap;
}
