/**
 * Every message a governed task understands, and the types they carry. Safe to import from
 * workflow code and from clients (no Node builtins, no Temporal client/worker imports).
 */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { Intent } from '../governance/intent';
import type { Plan } from '../governance/plan';
import type { Reason } from '../governance/reasons';
import type { StepUsage } from '../governance/step-gate';

export const TASK_QUEUE_CONTROL = 'govloop-control';
export const clusterTaskQueue = (cluster: string) => `govloop-cluster-${cluster}`;

/** GovState values, as shown in Temporal UI. */
export const GovState = {
  Admitting: 'Admitting',
  Queued: 'Queued',
  Rejected: 'Rejected',
  Reserved: 'Reserved',
  Dispatched: 'Dispatched',
  Running: 'Running',
  Settling: 'Settling',
  Succeeded: 'Succeeded',
  CapExceeded: 'CapExceeded',
  Cancelled: 'Cancelled',
  Failed: 'Failed',
} as const;
export type GovState = (typeof GovState)[keyof typeof GovState];
export const FINAL_STATES: GovState[] = ['Rejected', 'Succeeded', 'CapExceeded', 'Cancelled', 'Failed'];

export type Decision = 'pending' | 'admitted' | 'queued' | 'rejected';

export interface TaskInput {
  taskId: string;
  intent: Intent;
  requester: string;
}

export interface UsageSummary {
  gpuSeconds: number;
  gpuHours: number;
  tokensIn: number;
  tokensOut: number;
  tokensProcessed: number;
  steps: number;
  toolCalls: number;
}

export interface TaskStatus {
  taskId: string;
  name: string;
  kind: Intent['kind'];
  attribution: Intent['attribution'];
  decision: Decision;
  state: GovState;
  reasons: Reason[];
  plan: Plan | null;
  nodes: string[];
  usage: UsageSummary;
  costUsd: number;
  progress: number | null;
}

export type StepAnswer = { answer: 'allow' | 'deny'; reason: Reason | null; step: number; costUsd: number };

export interface AdmissionAnswer {
  taskId: string;
  decision: Decision;
  reasons: Reason[];
  state: GovState;
}

export const statusQuery = defineQuery<TaskStatus>('status');
/** Resolves as soon as admission has decided (admitted, queued or rejected). */
export const admissionUpdate = defineUpdate<AdmissionAnswer>('admission');
/** The per-step gate: an agent reports the step it is about to commit and gets allow | deny. */
export const stepUpdate = defineUpdate<StepAnswer, [StepUsage]>('step');
/** An agent or hosted-inference task says it is done. */
export const finishSignal = defineSignal<[{ by: string }]>('finish');
export const cancelSignal = defineSignal<[{ by: string; reason: string }]>('cancel');
