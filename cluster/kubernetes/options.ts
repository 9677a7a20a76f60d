/** What a KubernetesCluster is configured with, and the placement hook's answer (cluster/kubernetes/backend.ts). */
import type { JobSpec } from '../backend';
import type { Reason } from '../../governance/reasons';
import type { ManifestOptions, Placement } from './manifests';
import type { PlacementLeaseOptions } from './lease';
import type { NodeLabelOptions } from './placement';

/** What a placement hook answers: where the job goes (with why, for the dispatch audit), or why it cannot go now (the task queues). */
export type PlaceResult = (Placement & { explanation?: string }) | { kind: 'none'; reason: Reason };

export interface KubernetesClusterOptions extends Omit<ManifestOptions, 'namespace' | 'cluster'> {
  /** govloop's name for the cluster; the dispatch task queue is `govloop-cluster-<cluster>`. */
  cluster: string;
  namespace: string;
  /**
   * A placement hook for a job (nodes or a topology domain); when given it decides, whatever
   * `placement` says.
   */
  place?: (spec: JobSpec) => PlaceResult | Promise<PlaceResult>;
  /**
   * Without a hook: `govloop` places with governance/placement.ts over the Nodes' topology labels
   * and pins the Job to the chosen nodes (`./placement.ts`; it falls back to the kube-scheduler,
   * saying why through `onPlacementNote`, when the Nodes carry no GPU-type label); `scheduler`
   * (default) leaves the nodes to the kube-scheduler (and Kueue, if installed).
   */
  placement?: 'govloop' | 'scheduler';
  /** Topology labels of the Nodes (defaults in ./placement.ts `NodeLabel`). */
  nodeLabels?: Omit<NodeLabelOptions, 'gpuTypeLabel' | 'sharedGpuResource'>;
  /**
   * Count GPUs held by pods that are not govloop's (any namespace) in capacity and placement.
   * Default true; needs `list pods` cluster-wide. False: only govloop's own pods in the namespace.
   */
  countOtherPods?: boolean;
  /** Why govloop placement fell back to the kube-scheduler, or held GPUs it could not count (each said at most every 10 minutes). */
  onPlacementNote?: (note: string) => void;
  clock?: () => Date;
  /** `fieldManager` on every write. Default `govloop`. */
  fieldManager?: string;
  /** Attempts of a read-modify-write that keeps meeting 409 Conflict. Default 5. */
  conflictRetries?: number;
  /**
   * The least preemption grace period (ms) between the checkpoint signal and suspend: the kubelet
   * refreshes the downward-API file the pods read the signal from within about a minute, and the
   * trainer then has to save. Default 90 s; the workflow waits the longer of this and
   * policies.preemption.graceMillis.
   */
  checkpointGraceMillis?: number;
  /**
   * How late after its run limit a Job may still be metered (`ClusterBackend.stopMarginSeconds`);
   * the run limit is this much shorter than what the caps leave. Default
   * `DEFAULT_STOP_MARGIN_SECONDS` (20; where it comes from is said there). Raise it for a
   * controller-manager that is slow to sync Jobs or fails over slowly.
   */
  stopMarginSeconds?: number;
  /**
   * govloop placement holds the Lease `govloop-placement-<cluster>` in the namespace while it
   * places and creates a Job, so several worker processes on one cluster never book a GPU twice
   * (./lease.ts). Options, or false to rely on one worker per cluster.
   */
  placementLease?: PlacementLeaseOptions | false;
}

/**
 * How late the Job controller's DeadlineExceeded condition may come after the run limit, as govloop
 * meters it. `resume()` stamps govloop.io/resumed-at (R, govloop's clock) and sets
 * `activeDeadlineSeconds` = L (the run limit rounded down); the metered segment ends at the
 * `FailureTarget`/`Failed` condition's time D (`runSeconds`). The Job controller
 * (pkg/controller/job/job_controller.go, Kubernetes 1.34) sets `status.startTime` S when it syncs
 * the resumed Job (a spec change is synced at once from its watch) and re-queues the Job for
 * S + L, so D − R = L + (S − R) + (D − S − L), plus any skew between govloop's clock and the
 * controller-manager's:
 * - S − R and D − S − L: a watch event and a work-queue pass each, well under a second normally;
 *   a failed sync is retried after 1 s, doubling;
 * - a controller-manager failover in between: nothing syncs until the new leader has the lease
 *   (kube-controller-manager --leader-elect-lease-duration, 15 s by default) and syncs every Job;
 * - clock skew (NTP): under a second.
 * 15 s (one failover) + 2 × 2 s (the two syncs) + 1 s (skew) = 20 s. Times are stored in whole
 * seconds, rounded down, which only shortens the metered segment. The pods' termination grace
 * after the condition is not metered (as after suspend or delete), so it is not in the margin.
 * Without a Job controller (a bare API server) nothing stops the Job at all: the workflow's cap
 * check at each poll is then the only line.
 */
export const DEFAULT_STOP_MARGIN_SECONDS = 20;
