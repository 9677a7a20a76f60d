/** Watching the namespace's govloop Jobs as JobEvents (KubernetesCluster.watchJobs). */
import { Watch, type KubeConfig, type V1Job } from '@kubernetes/client-node';
import type { JobPhase } from '../backend';
import { LABEL_TASK, jobPhase, taskIdOf } from './manifests';

/** A job event from the watch, in govloop's terms: what a dispatch worker would signal to the task's workflow. */
export interface JobEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  taskId: string;
  job: string;
  phase: JobPhase;
  message: string | null;
}

/** KubernetesCluster.watchJobs: the watch on `namespace`, reconnecting after `reconnectMillis`. */
export function watchNamespaceJobs(
  kubeConfig: KubeConfig,
  namespace: string,
  onEvent: (e: JobEvent) => void,
  onError: (err: unknown) => void,
  reconnectMillis: number,
): { stop: () => void } {
  const watch = new Watch(kubeConfig);
  let stopped = false;
  let controller: AbortController | null = null;
  let resourceVersion: string | undefined;
  let timer: NodeJS.Timeout | null = null;
  const start = () => {
    if (stopped) return;
    const path = `/apis/batch/v1/namespaces/${encodeURIComponent(namespace)}/jobs`;
    watch
      .watch(
        path,
        { labelSelector: LABEL_TASK, allowWatchBookmarks: true, ...(resourceVersion ? { resourceVersion } : {}) },
        (type: string, obj: V1Job & { code?: number }) => {
          if (type === 'ERROR') {
            if (obj.code === 410) resourceVersion = undefined;
            return;
          }
          if (obj?.metadata?.resourceVersion) resourceVersion = obj.metadata.resourceVersion;
          if (type !== 'ADDED' && type !== 'MODIFIED' && type !== 'DELETED') return;
          const taskId = taskIdOf(obj);
          if (!taskId || !obj.metadata?.name) return;
          const r = type === 'DELETED' ? { phase: 'Deleted' as const, message: 'job deleted' } : jobPhase(obj);
          onEvent({ type, taskId, job: obj.metadata.name, phase: r.phase, message: r.message });
        },
        (err: unknown) => {
          controller = null;
          if (stopped) return;
          if (err && (err as { name?: string }).name !== 'AbortError') onError(err);
          timer = setTimeout(start, reconnectMillis);
        },
      )
      .then((c) => {
        controller = c;
        if (stopped) c.abort();
      })
      .catch((err: unknown) => {
        if (stopped) return;
        onError(err);
        timer = setTimeout(start, reconnectMillis);
      });
  };
  start();
  return {
    stop: () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      controller?.abort();
    },
  };
}
