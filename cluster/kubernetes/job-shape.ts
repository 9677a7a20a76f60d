/** What a Job looks like to the backend: its spec patch, whether it waits to be placed again, the pod shape Kubernetes keeps fixed. */
import type { V1Job } from '@kubernetes/client-node';
import { Annotation, jobPhase, nodesOf } from './manifests';

/** The part of a Job's spec `resume` and `suspend` merge-patch (null removes the field). */
export interface JobSpecPatch {
  suspend: boolean;
  activeDeadlineSeconds?: number | null;
}

/** A Job preempted earlier: suspended, its nodes given up, waiting to be placed again. */
export function needsPlacement(job: V1Job): boolean {
  return jobPhase(job).phase === 'Suspended' && !!job.metadata?.annotations?.[Annotation.preemptedAt] && nodesOf(job).length === 0;
}

/** What Kubernetes does not let a Job change: how many pods, and each pod's resources. */
export function podShape(job: V1Job): { pods: number; indexed: boolean; limits: Record<string, string> } {
  return {
    pods: job.spec?.completions ?? 1,
    indexed: job.spec?.completionMode === 'Indexed',
    limits: Object.fromEntries(Object.entries(job.spec?.template.spec?.containers[0]?.resources?.limits ?? {}).map(([k, v]) => [k, String(v)])),
  };
}

/** JSON with sorted keys, to compare objects the API server may have re-ordered. */
export function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
      : x,
  );
}
