import { z } from 'zod';
import { type FieldError, fieldErrors } from '../governance/intent';
import type { LeaseAnswer } from '../workflows/messages';

/** Bad input: nothing was started or changed. `errors` name each field and what is wrong with it. */
export class GovloopInputError extends Error {
  constructor(readonly errors: FieldError[]) {
    super(`invalid input:\n${errors.map((e) => `  ${e.path}: ${e.message}`).join('\n')}`);
    this.name = 'GovloopInputError';
  }
}

/** The task (or approval request) does not exist, or has closed and takes no more messages. */
export class GovloopNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GovloopNotFoundError';
  }
}

/** The call was refused for who made it: no or a bad credential, or a role it lacks (`code`: UNAUTHENTICATED, FORBIDDEN, …). */
export class GovloopAccessError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'GovloopAccessError';
  }
}

/** The task refused the message in its present state (e.g. a step after it ended). */
export class GovloopStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GovloopStateError';
  }
}

/**
 * The task exists, but no worker can run it now: its workflow task keeps failing, either because
 * its code fails in the worker (the message says how; a fixed deployment resumes it) or because
 * no worker has completed it for minutes. Nothing was lost: the task resumes where it stopped once
 * a worker completes its workflow task; `status(taskId)` shows where it stands.
 */
export class GovloopWorkerError extends Error {
  constructor(
    readonly taskId: string,
    why: string,
    options?: ErrorOptions,
  ) {
    super(`task ${taskId}: ${why}. The task is kept: it resumes once a worker completes its workflow task (status shows where it stands)`, options);
    this.name = 'GovloopWorkerError';
  }
}

/** The lease was refused: the budget is at its queue step, has too little left, or does not exist. */
export class GovloopLeaseError extends Error {
  constructor(readonly reason: Extract<LeaseAnswer, { granted: false }>['reason']) {
    super(`lease refused: ${reason.code}: ${reason.message}`);
    this.name = 'GovloopLeaseError';
  }
}

/** Parses `value` or throws GovloopInputError naming each field (under `prefix`). */
export function check<T>(schema: z.ZodType<T>, value: unknown, prefix?: string): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new GovloopInputError(fieldErrors(r.error).map((e) => ({ ...e, path: prefix ? (e.path === '(root)' ? prefix : `${prefix}.${e.path}`) : e.path })));
}
