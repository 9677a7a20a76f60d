/**
 * One zod schema per message a governed task takes, shared by the workflow's update validators,
 * the SDK and the CLI: a payload that fails here is refused before it reaches history (updates),
 * or ignored without touching the task (signals). Safe to import from workflow code.
 */
import { z } from 'zod';
import { StepUsageSchema } from '../governance/step-gate';
import { NameText, ReasonText, issuesText } from '../governance/text';

export { NameText, ReasonText };

/**
 * Who sends a message: a credential (OIDC access token or govloop API key), or under `auth: none`
 * a typed name. govloop derives the principal from the credential, in the activity that decides.
 */
export const CallerShape = {
  credential: z.string().min(1).max(8192).optional(),
  as: NameText.optional(),
};
export const CallerSchema = z.strictObject(CallerShape);
export type CallerFields = z.infer<typeof CallerSchema>;

/**
 * A step as the agent sends it (the step update): the usage, and who sends it. `finish`: the
 * task's last step; once the gate lets it run (allow or degrade), the task finishes as `finish`
 * would, in the same round trip.
 */
export const StepRequestSchema = StepUsageSchema.extend({ ...CallerShape, finish: z.boolean().optional() });
export const ApprovalDecisionSchema = z.strictObject({ approvalId: NameText, reason: ReasonText, ...CallerShape });
export const ApprovalOutcomeRequestSchema = z.strictObject({ approvalId: NameText });
export const ResolveRequestSchema = z.strictObject({ reason: ReasonText, ...CallerShape });
export const CancelRequestSchema = z.strictObject({ reason: ReasonText, ...CallerShape });
export const FinishRequestSchema = z.strictObject({ ...CallerShape });
export const PreemptRequestSchema = z.strictObject({ reason: ReasonText, ...CallerShape });

/** The signals govloop's own workflows send (workflows cannot send updates); verified against the ledger. */
export const PreemptSignalSchema = z.strictObject({ by: NameText, reason: ReasonText, preemptor: NameText.nullable(), ...CallerShape });
export const CancelSignalSchema = z.strictObject({ by: NameText.optional(), reason: ReasonText, ...CallerShape });
export const FinishSignalSchema = z.strictObject({ by: NameText.optional(), ...CallerShape });
/**
 * A wake for a task queued for GPU quota: the task that released its GPUs (ledger/quota.ts
 * tasksToWake). It carries no authority: the woken task only asks admission again, which decides
 * against the ledger as on any recheck.
 */
export const RequeueSignalSchema = z.strictObject({ releasedBy: NameText });

/**
 * Budget leases, the budget controller's updates (sdk `lease()`): grant, spend report, return.
 * Exactly one of usd or tokens; tokens are leased at `model`'s output price.
 */
export const LeaseRequestSchema = z
  .strictObject({
    /** The caller's id for this request: a retried request gets the same lease. */
    requestId: z.string().regex(/^[A-Za-z0-9._:-]{1,100}$/, '1 to 100 of A-Z a-z 0-9 . _ : -'),
    holder: z.string().min(1).max(128),
    usd: z.number().positive().max(1e9).optional(),
    tokens: z.number().int().positive().optional(),
    model: z.string().min(1).optional(),
    ttlSeconds: z.number().int().min(1).max(86_400),
  })
  .refine((r) => (r.usd === undefined) !== (r.tokens === undefined), { message: 'give exactly one of usd or tokens', path: ['usd'] });
export const LeaseSpendSchema = z.strictObject({
  leaseId: z.string().min(1),
  /** 1, 2, 3 … per lease: a re-sent report is counted once. */
  seq: z.number().int().min(1),
  usd: z.number().min(0).max(1e9),
  model: z.string().min(1).optional(),
  useCase: z.string().min(1).optional(),
});
export const LeaseReturnSchema = z.strictObject({ leaseId: z.string().min(1), by: z.string().min(1).max(128) });

/** "path: message; path: message" — what was wrong and where. */
export { issuesText };

/** The same issues as data, the details of a refusal: the SDK reads them instead of parsing the text. */
export const issuesList = (e: z.ZodError): { path: string; message: string }[] =>
  e.issues.map((i) => ({ path: i.path.join('.') || '(root)', message: i.message }));
