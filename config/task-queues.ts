/**
 * Task-queue names (constants, house style 15). Pure, so workflow code (workflows/messages.ts
 * re-exports them) and activities can both import them.
 */
export const TASK_QUEUE_CONTROL = 'govloop-control';
export const clusterTaskQueue = (cluster: string) => `govloop-cluster-${cluster}`;
