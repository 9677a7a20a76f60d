/**
 * Bounded retries, then a person (decision 0020): the task's own ledger and cluster calls retry
 * within a bound; past it the task asks an operator and waits (NeedsOperator), then tries again
 * once resolved. Safe to import from workflow code.
 */
import { condition, upsertMemo } from '@temporalio/workflow';
import type { Reason } from '../../governance/reasons';
import { GovState } from '../messages';
import { type Ledger, boundedLedger, boundedLocalLedger } from './calls';
import { causeText, retriesExhausted } from './errors';
import type { TaskState } from './state';

export interface Escalation {
  /** The ledger with the config's bound and no operator behind it (authorization: a refusal is an answer). */
  rawLedger: () => Ledger;
  /** Wraps calls so that one that ran out of retries asks an operator, then runs again. */
  escalating: <T extends object>(raw: () => T) => T;
  /** The ledger, escalating. */
  ledger: Ledger;
}

/** `local`: the task's ledger calls run as local activities (decision 0032; runs started before it call through the queue). */
export function installEscalation(t: TaskState, local: boolean): Escalation {
  const rawLedger = () => (local ? boundedLocalLedger : boundedLedger)(t.timing.retries?.ledgerMaxAttempts);
  const escalating = <T extends object>(raw: () => T): T =>
    new Proxy({} as T, {
      get:
        (_target, name) =>
        async (...args: unknown[]) => {
          for (;;) {
            try {
              return await (raw() as Record<string | symbol, (...a: unknown[]) => Promise<unknown>>)[name]!(...args);
            } catch (err) {
              if (!retriesExhausted(err)) throw err;
              await askOperator(String(name), err);
            }
          }
        },
    });
  const ledger = escalating(rawLedger);

  /**
   * A call ran out of its bounded retries: the task says so (NeedsOperator, a RETRIES_EXHAUSTED
   * reason, the memo, an audit row and a notification where the ledger answers) and waits for an
   * operator's `resolve`, then goes back to where it was and tries the call again.
   */
  async function askOperator(activity: string, err: Error): Promise<void> {
    const before = t.state;
    const error = causeText(err);
    const why: Reason = {
      code: 'RETRIES_EXHAUSTED',
      message: `${activity} kept failing: ${error}; fix the cause, then resolve the task`,
      limit: null,
      requested: activity,
      policy: 'policies#retries',
    };
    t.reasons = [...t.reasons.filter((r) => r.code !== 'RETRIES_EXHAUSTED'), why];
    t.setState(GovState.NeedsOperator);
    upsertMemo({ escalation: { activity, error } });
    // Best effort: the ledger may be the part that is down. The state and its search attribute are the page.
    await boundedLedger(3)
      .operatorNeeded({ taskId: t.taskId, activity, error, round: ++t.escalations })
      .catch(() => undefined);
    await condition(() => t.resolution !== null);
    const r: { by: string; reason: string } = t.resolution!;
    t.resolution = null;
    t.reasons = t.reasons.filter((x) => x !== why);
    upsertMemo({ escalation: null });
    await ledger.resolveTask({ taskId: t.taskId, by: r.by, reason: r.reason, state: before, round: t.escalations });
    t.setState(before);
  }

  return { rawLedger, escalating, ledger };
}
