/** The headless Service a multi-pod gang rendezvouses through (KubernetesCluster.create). */
import { ApplicationFailure } from '@temporalio/common';
import type { V1Job, V1Service } from '@kubernetes/client-node';
import { Annotation, LABEL_MANAGED_BY, MANAGED_BY, gangServiceManifest, isGang, taskIdOf } from './manifests';
import { type KubeClient, KubernetesErrorType, apiStatusCode, kubernetesFailure, mergePatch } from './api';

/**
 * The headless Service of a multi-pod gang (torchrun rendezvous), owned by the Job. Idempotent:
 * an existing one is kept, and adopted by this Job if an earlier Job of the same name owned it.
 */
export async function ensureGangService(c: KubeClient, job: V1Job, rendezvousPort: number | undefined): Promise<void> {
  if (!isGang(job)) return;
  const name = job.metadata!.name!;
  const body = gangServiceManifest(job, {
    namespace: c.namespace,
    ...(rendezvousPort !== undefined ? { rendezvousPort: rendezvousPort } : {}),
  });
  const what = `create service ${name} in namespace ${c.namespace}`;
  const need = 'create/get/patch/delete on services in this namespace';
  try {
    await c.core.createNamespacedService({ namespace: c.namespace, body, fieldManager: c.fieldManager });
    return;
  } catch (err) {
    if (apiStatusCode(err) !== 409) throw kubernetesFailure(what, err, need);
  }
  let existing: V1Service;
  try {
    existing = await c.core.readNamespacedService({ name, namespace: c.namespace });
  } catch (err) {
    throw kubernetesFailure(`read existing service ${name} in namespace ${c.namespace}`, err, need);
  }
  const owner = existing.metadata?.annotations?.[Annotation.taskId];
  if (existing.metadata?.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY || owner !== taskIdOf(job)) {
    throw ApplicationFailure.create({
      type: KubernetesErrorType.NameTaken,
      nonRetryable: true,
      message: `kubernetes: service ${name} in namespace ${c.namespace} is not the rendezvous Service of task ${taskIdOf(job)} (${owner ? `task ${owner}` : "not govloop's"}); delete it or rename`,
    });
  }
  if (existing.metadata?.ownerReferences?.some((r) => r.uid === job.metadata?.uid)) return;
  try {
    await c.core.patchNamespacedService(
      {
        name,
        namespace: c.namespace,
        body: { metadata: { ownerReferences: body.metadata!.ownerReferences, resourceVersion: existing.metadata?.resourceVersion } },
        fieldManager: c.fieldManager,
      },
      mergePatch,
    );
  } catch (err) {
    throw kubernetesFailure(`adopt service ${name} in namespace ${c.namespace}`, err, need);
  }
}
