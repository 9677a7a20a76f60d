import { describe, expect, it } from 'vitest';
import { fieldErrors } from '../../governance/intent';
import { LeaseOptions } from '../../sdk/budget-lease';
import { LeasedGateOptions } from '../../sdk/leased-steps';
import { StepLeaseRequestSchema } from '../../workflows/leased-steps';
import { ExtendSchema } from '../../workflows/migration-program';
import { LeaseRequestSchema, LeaseReturnSchema, LeaseSpendSchema, StepRequestSchema, issuesList } from '../../workflows/schemas';

/** The paths a schema names for a payload, as the workflow's refusal carries them (issuesList). */
const paths = (schema: { safeParse: (v: unknown) => { success: boolean; error?: unknown } }, v: unknown): string[] => {
  const r = schema.safeParse(v);
  return r.success ? [] : issuesList(r.error as never).map((i) => i.path);
};

describe('one schema per workflow message', () => {
  it('a lease request: every bad field named, exactly one of usd or tokens', () => {
    const ok = { requestId: 'svc-1a2b-1', holder: 'svc', usd: 5, ttlSeconds: 300 };
    expect(paths(LeaseRequestSchema, ok)).toEqual([]);
    expect(paths(LeaseRequestSchema, { ...ok, requestId: 'has space', holder: '', ttlSeconds: 0 })).toEqual(['requestId', 'holder', 'ttlSeconds']);
    expect(paths(LeaseRequestSchema, { ...ok, tokens: 10 })).toEqual(['usd']);
    expect(paths(LeaseRequestSchema, { ...ok, extra: 1 })).toEqual(['(root)']);
  });

  it('the SDK lease options take their lease fields from the lease request: the same fields refused the same way', () => {
    const sdk = LeaseOptions.safeParse({ scope: { tenant: 't' }, usd: -1, holder: 'x'.repeat(129), ttlSeconds: 90_000 });
    expect(sdk.success).toBe(false);
    const wf = LeaseRequestSchema.safeParse({ requestId: 'r', usd: -1, holder: 'x'.repeat(129), ttlSeconds: 90_000 });
    expect(wf.success).toBe(false);
    const byPath = (e: { path: string; message: string }[]) => Object.fromEntries(e.map((x) => [x.path, x.message]));
    const fromSdk = byPath(fieldErrors(sdk.error!));
    const fromWorkflow = byPath(issuesList(wf.error!));
    for (const f of ['usd', 'holder', 'ttlSeconds']) expect(fromSdk[f]).toBe(fromWorkflow[f]);
  });

  it('a spend report and a return: bad fields named', () => {
    expect(paths(LeaseSpendSchema, { leaseId: 't/*/*:r', seq: 0, usd: -1 })).toEqual(['seq', 'usd']);
    expect(paths(LeaseSpendSchema, { leaseId: 't/*/*:r', seq: 1, usd: 0 })).toEqual([]);
    expect(paths(LeaseReturnSchema, { leaseId: 't/*/*:r' })).toEqual(['by']);
  });

  it('the leased gate options are the grant update’s fields', () => {
    const bad = { steps: 0, ttlSeconds: 4000, as: 'x'.repeat(129) };
    expect(paths(LeasedGateOptions, bad)).toEqual(paths(StepLeaseRequestSchema, { leaseId: 'l', ...bad }));
  });

  it('a step: usage and caller in one schema', () => {
    expect(paths(StepRequestSchema, { tokensIn: 1, tokensOut: -1, contextTokens: 'x', as: '' })).toEqual(['tokensOut', 'contextTokens', 'as']);
  });

  it('a program request: control characters refused in the reason (CLI and workflow share the schema)', () => {
    expect(paths(ExtendSchema, { phase: 'p', days: 0, reason: 'a\u0000b' })).toEqual(['days', 'reason']);
  });
});
