import { ApplicationFailure } from '@temporalio/activity';
import type { ActivityInboundCallsInterceptor, ActivityInterceptors } from '@temporalio/worker';
import { ZodError } from 'zod';
import { UsageLimitError } from '../governance/limits';
import { issuesText } from '../governance/text';

/** The failure type a workflow sees for input no retry can fix (decision 0020). */
export const DATA_ERROR = 'DataError';

/**
 * SQLSTATE classes 22 (data exception: a NUL byte in text, a number out of range) and 23
 * (integrity constraint: NOT NULL, CHECK, foreign key) say the input is wrong, not that the
 * server is unwell: the same statement fails the same way on every retry. Two codes of class 23
 * are races instead, and a retry takes the other branch: a unique violation (two first inserts
 * at once; the loser's retry finds the row) and an exclusion violation.
 */
const RACE_CODES = new Set(['23505', '23P01']);

export function isDataError(err: unknown): boolean {
  // Usage over a cap, or a sum past the ledger's ceiling (governance/limits.ts), is refused the same way on every try.
  if (err instanceof ZodError || err instanceof UsageLimitError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^2[23]/.test(code) && !RACE_CODES.has(code);
}

/** What a data error says, for the task's reason: the SQLSTATE and PostgreSQL's own words, zod's paths, or the limit passed. */
export function dataErrorMessage(err: unknown): string {
  if (err instanceof ZodError) return issuesText(err);
  if (err instanceof UsageLimitError) return err.message;
  const e = err as { code?: string; message?: string; column?: string; table?: string };
  const where = [e.table, e.column].filter(Boolean).join('.');
  return `SQLSTATE ${e.code}: ${e.message ?? String(err)}${where ? ` (${where})` : ''}`;
}

/** Turns a data error thrown by any activity into a non-retryable failure; everything else retries as configured. */
class DataErrorsAreFinal implements ActivityInboundCallsInterceptor {
  async execute(
    input: Parameters<NonNullable<ActivityInboundCallsInterceptor['execute']>>[0],
    next: Parameters<NonNullable<ActivityInboundCallsInterceptor['execute']>>[1],
  ): Promise<unknown> {
    try {
      return await next(input);
    } catch (err) {
      if (isDataError(err))
        throw ApplicationFailure.create({
          message: dataErrorMessage(err),
          type: DATA_ERROR,
          nonRetryable: true,
          cause: err instanceof Error ? err : undefined,
        });
      throw err;
    }
  }
}

const interceptor = new DataErrorsAreFinal();
export const dataErrorInterceptors = (): ActivityInterceptors => ({ inbound: interceptor });
