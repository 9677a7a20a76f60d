import { log } from '@temporalio/activity';
import type { GovConfig } from '../config/load';
import { usdToMicros } from '../governance/pricing';
import { type TaskOverage, overageCrossed } from '../ledger/usage';

/** Best effort: POSTs an event to the configured webhook. The audit log, not this, is the record. */
export async function notify(config: GovConfig, event: Record<string, unknown>): Promise<void> {
  log.warn('notification', event);
  if (!config.policies.notifyUrl) return;
  try {
    await fetch(config.policies.notifyUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(event),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (err) {
    log.warn('notification webhook failed', { url: config.policies.notifyUrl, error: String(err) });
  }
}

/**
 * Usage past a task's reservation was recorded as overage (decision 0023): the operator is told
 * once per task, by the observation whose overage carried the task's total past the tolerance.
 * Called after the usage committed; each usage event is charged once, so the crossing happens once.
 */
export async function notifyOverage(config: GovConfig, overages: TaskOverage[]): Promise<void> {
  const tolerance = usdToMicros(config.policies.overage.toleranceUsd);
  for (const o of overages) {
    if (!overageCrossed(o, tolerance)) continue;
    await notify(config, {
      event: 'task.overage',
      taskId: o.taskId,
      overageUsd: o.taskOverageMicros / 1e6,
      toleranceUsd: config.policies.overage.toleranceUsd,
      runbook: 'runbooks/overage.md',
    });
  }
}
