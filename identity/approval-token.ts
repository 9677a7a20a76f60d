import { createHash, type KeyObject } from 'node:crypto';
import { canonicalJson } from '../governance/canonical-json';
import { type SigningKey, signJson, verifyJson } from './signing';

/**
 * Approval tokens (decision 0018): once a human approved a high-risk tool call, the step gate
 * answers with a token signed by govloop's key, bound to the run, the step, the tool and the
 * digest of the exact arguments. The tool executor runs the call only with a token that verifies
 * against govloop's public key for that tool and those arguments, before it expires.
 */
export interface ApprovalClaims {
  v: 1;
  approvalId: string;
  taskId: string;
  runId: string;
  seq: number;
  tool: string;
  argsDigest: string;
  approvedBy: string;
  expiresAt: string;
  keyId: string;
}

/** The digest approvals bind to: SHA-256 of the arguments as canonical JSON. */
export const argsDigest = (args: unknown): string =>
  `sha256:${createHash('sha256')
    .update(canonicalJson(args ?? null))
    .digest('hex')}`;

export function signApprovalToken(key: SigningKey, claims: Omit<ApprovalClaims, 'v' | 'keyId'>): string {
  const full: ApprovalClaims = { v: 1, ...claims, keyId: key.keyId };
  return `${Buffer.from(canonicalJson(full)).toString('base64url')}.${signJson(key, full)}`;
}

export type ApprovalCheck =
  | { ok: true; claims: ApprovalClaims }
  | {
      ok: false;
      code: 'APPROVAL_TOKEN_MISSING' | 'APPROVAL_TOKEN_INVALID' | 'APPROVAL_TOKEN_EXPIRED' | 'APPROVAL_TOOL_MISMATCH' | 'APPROVAL_ARGS_MISMATCH';
      message: string;
    };

/** Checks a token for the call about to run: signature, tool, exact arguments, expiry. */
export function verifyApprovalToken(publicKey: KeyObject, token: string | null | undefined, call: { tool: string; args: unknown; now?: Date }): ApprovalCheck {
  if (!token) return { ok: false, code: 'APPROVAL_TOKEN_MISSING', message: `${call.tool} needs a human approval: no approval token was given` };
  const [body, sig, ...rest] = token.split('.');
  let claims: ApprovalClaims;
  try {
    if (!body || !sig || rest.length) throw new Error('not two parts');
    claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as ApprovalClaims;
  } catch {
    return { ok: false, code: 'APPROVAL_TOKEN_INVALID', message: 'the approval token is malformed' };
  }
  if (claims?.v !== 1 || !verifyJson(publicKey, claims, sig))
    return { ok: false, code: 'APPROVAL_TOKEN_INVALID', message: 'the approval token does not verify against govloop’s public key' };
  if (claims.tool !== call.tool) return { ok: false, code: 'APPROVAL_TOOL_MISMATCH', message: `the approval is for ${claims.tool}, not ${call.tool}` };
  if (claims.argsDigest !== argsDigest(call.args)) {
    return {
      ok: false,
      code: 'APPROVAL_ARGS_MISMATCH',
      message: `approval ${claims.approvalId} was given for other arguments (${claims.argsDigest}); these are ${argsDigest(call.args)}`,
    };
  }
  if (Date.parse(claims.expiresAt) <= (call.now ?? new Date()).getTime())
    return { ok: false, code: 'APPROVAL_TOKEN_EXPIRED', message: `approval token of ${claims.approvalId} expired at ${claims.expiresAt}` };
  return { ok: true, claims };
}
