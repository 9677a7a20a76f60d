/**
 * Rollback of an agent task that did not succeed: its completed side-effecting steps undone,
 * newest first, with the catalog's compensations. Safe to import from workflow code.
 */
import { condition, proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../../activities';
import { type CompensationView, GovState } from '../messages';
import type { Ledger } from './calls';
import type { TaskState } from './state';

/**
 * Undoes the completed side-effecting steps, newest first, with the catalog's compensations.
 * One that cannot succeed after its retries hands the task to an operator (NeedsOperator), who
 * deals with it by hand and resolves; then rollback goes on with the older steps.
 */
export async function rollBack(t: TaskState, ledger: Ledger): Promise<void> {
  const { taskId, sideEffects, compensations } = t;
  const policy = t.timing.compensation ?? { maxAttempts: 5, initialIntervalMs: 500 };
  const compensator = proxyActivities<Activities>({
    startToCloseTimeout: '60 seconds',
    retry: {
      initialInterval: policy.initialIntervalMs,
      backoffCoefficient: 2,
      maximumInterval: '30 seconds',
      maximumAttempts: policy.maxAttempts,
      nonRetryableErrorTypes: ['NoCompensation'],
    },
  });
  for (const s of [...sideEffects].reverse()) {
    const c: CompensationView = { step: s.seq, tool: s.tool, state: 'pending', error: null };
    compensations.push(c);
  }
  for (const c of compensations) {
    const s = sideEffects.find((x) => x.seq === c.step)!;
    try {
      await compensator.compensateStep({ taskId, seq: s.seq, tool: s.tool, args: s.args });
      c.state = 'done';
    } catch (err) {
      c.state = 'failed';
      const e = err instanceof Error ? err : new Error(String(err));
      c.error = e.cause instanceof Error ? e.cause.message : e.message;
      t.reasons = [
        ...t.reasons,
        {
          code: 'COMPENSATION_FAILED',
          message: `undoing ${s.tool} (step ${s.seq}) failed: ${c.error}`,
          limit: null,
          requested: s.tool,
          policy: `tools#${s.tool}.compensation`,
        },
      ];
      await ledger.compensationFailed({ taskId, seq: s.seq, tool: s.tool, error: c.error ?? 'unknown' });
      t.setState(GovState.NeedsOperator);
      await condition(() => t.resolution !== null);
      const r: { by: string; reason: string } = t.resolution!;
      t.resolution = null;
      await ledger.resolveTask({ taskId, by: r.by, reason: r.reason, state: GovState.Settling });
      t.state = GovState.Settling;
    }
  }
}
