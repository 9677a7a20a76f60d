/**
 * One zod schema per message a governed task takes, shared by the workflow's update validators,
 * the SDK and the CLI: a payload that fails here is refused before it reaches history (updates),
 * or ignored without touching the task (signals). Safe to import from workflow code.
 */
import { z } from 'zod';
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

/** "path: message; path: message" — what was wrong and where. */
export { issuesText };

/** The same issues as data, the details of a refusal: the SDK reads them instead of parsing the text. */
export const issuesList = (e: z.ZodError): { path: string; message: string }[] =>
  e.issues.map((i) => ({ path: i.path.join('.') || '(root)', message: i.message }));
