/**
 * Run segments of a Job: resume (with the run limit as `activeDeadlineSeconds`) and the preemption
 * checkpoint signal; the contracts are on KubernetesCluster.resume and .checkpoint.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { V1Pod } from '@kubernetes/client-node';
import type { RunLimit } from '../backend';
import { Annotation, LABEL_JOB_NAME, activeDeadlineFor, jobPhase } from './manifests';
import { type KubeClient, KubernetesErrorType, apiStatusCode, kubernetesFailure, mergePatch, readJob, readModifyWrite } from './api';
import type { JobSpecPatch } from './job-shape';

/** KubernetesCluster.resume: unsuspends a suspended Job, with its run limit as the deadline. */
export async function resumeJob(c: KubeClient, now: () => Date, name: string, limit?: RunLimit): Promise<void> {
  let deadline: number | undefined;
  try {
    deadline = activeDeadlineFor(limit);
  } catch (err) {
    throw ApplicationFailure.create({
      type: KubernetesErrorType.Invalid,
      nonRetryable: true,
      message: `kubernetes: resume job ${name}: ${(err as Error).message}`,
    });
  }
  await readModifyWrite(
    c,
    name,
    'resume',
    (job) => {
      const reading = jobPhase(job);
      if (reading.phase !== 'Suspended' && !reading.notResumed) return null;
      const a = job.metadata?.annotations ?? {};
      if (deadline === 0) {
        const left = String(Math.round(limit!.maxRunSeconds * 1000) / 1000);
        return a[Annotation.runLimitExhausted] === left ? null : { metadata: { annotations: { [Annotation.runLimitExhausted]: left } } };
      }
      const annotations: Record<string, string | null> = { [Annotation.resumedAt]: now().toISOString() };
      if (a[Annotation.runLimitExhausted] !== undefined) annotations[Annotation.runLimitExhausted] = null;
      const spec: JobSpecPatch = { suspend: false };
      if (deadline !== undefined) spec.activeDeadlineSeconds = deadline;
      else if (job.spec?.activeDeadlineSeconds != null) spec.activeDeadlineSeconds = null;
      return { metadata: { annotations }, spec };
    },
    // A deadline counts from status.startTime: clear the one left from an earlier run first.
    async (job) => {
      if (deadline === undefined || deadline === 0 || !job.status?.startTime || !job.spec?.suspend) return false;
      const reading = jobPhase(job);
      if (reading.phase !== 'Suspended' && !reading.notResumed) return false;
      await resetStartTime(c, name);
      return true;
    },
  );
}

/** Clears `status.startTime` of a suspended Job through the status subresource. */
export async function resetStartTime(c: KubeClient, name: string): Promise<void> {
  try {
    await c.jobs.patchNamespacedJobStatus({ name, namespace: c.namespace, body: { status: { startTime: null } }, fieldManager: c.fieldManager }, mergePatch);
  } catch (err) {
    throw kubernetesFailure(`reset status.startTime of job ${name} in namespace ${c.namespace}`, err, 'patch on jobs.batch/status in this namespace');
  }
}

/** KubernetesCluster.checkpoint: stamps the checkpoint request on the running Job and its pods. */
export async function checkpointJob(c: KubeClient, now: () => Date, name: string): Promise<void> {
  const job = await readJob(c, name, 'read job to checkpoint');
  if (!job || jobPhase(job).phase !== 'Running') return;
  const stamp = { metadata: { annotations: { [Annotation.checkpointRequestedAt]: now().toISOString() } } };
  try {
    await c.jobs.patchNamespacedJob({ name, namespace: c.namespace, body: stamp, fieldManager: c.fieldManager }, mergePatch);
  } catch (err) {
    if (apiStatusCode(err) === 404) return;
    throw kubernetesFailure(`checkpoint job ${name} in namespace ${c.namespace}`, err);
  }
  const need = 'list/patch on pods in this namespace';
  let pods: V1Pod[];
  try {
    pods = (await c.core.listNamespacedPod({ namespace: c.namespace, labelSelector: `${LABEL_JOB_NAME}=${name}` })).items;
  } catch (err) {
    throw kubernetesFailure(`list pods of job ${name} in namespace ${c.namespace}`, err, need);
  }
  for (const pod of pods) {
    const phase = pod.status?.phase;
    if (phase === 'Succeeded' || phase === 'Failed' || pod.metadata?.deletionTimestamp || !pod.metadata?.name) continue;
    try {
      await c.core.patchNamespacedPod({ name: pod.metadata.name, namespace: c.namespace, body: stamp, fieldManager: c.fieldManager }, mergePatch);
    } catch (err) {
      if (apiStatusCode(err) === 404) continue; // gone in between
      throw kubernetesFailure(`checkpoint pod ${pod.metadata.name} of job ${name} in namespace ${c.namespace}`, err, need);
    }
  }
}
