/**
 * A bad deployment of the control workflow: `governedTask` under its real name, whose code throws
 * before it does anything (as a bad import or a bug at the top of the workflow would). The worker
 * fails each of its workflow tasks (WORKFLOW_WORKER_UNHANDLED_FAILURE); the server retries them.
 */
export async function governedTask(): Promise<never> {
  throw new Error('boom: a bad deploy');
}
