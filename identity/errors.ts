/**
 * Errors of govloop's identity layer (who is calling): every rejection of a credential carries one
 * of these codes, so a server can map it to a status (401 for the token ones, 403 for FORBIDDEN)
 * and a client can tell "log in again" from "you may not".
 */
export const IdentityCodes = [
  /** No credential was presented. */
  'UNAUTHENTICATED',
  /** The token is malformed, its signature does not verify, its key is unknown, or a required claim is missing. */
  'TOKEN_INVALID',
  /** The token's `exp` has passed (beyond the allowed clock skew). */
  'TOKEN_EXPIRED',
  /** The token was issued by another issuer than the one configured. */
  'TOKEN_ISSUER',
  /** The token was not issued for this service (its `aud` does not name it). */
  'TOKEN_AUDIENCE',
  /** An API key is unknown, revoked or malformed. */
  'KEY_INVALID',
  /** The caller is known but may not do this. */
  'FORBIDDEN',
  /** This endpoint needs a credential and the server is configured to demand one. */
  'AUTH_REQUIRED',
  /** The call names someone (`as`) other than the owner of its credential. */
  'IDENTITY_MISMATCH',
] as const;

export type IdentityCode = (typeof IdentityCodes)[number];

export class IdentityError extends Error {
  constructor(
    readonly code: IdentityCode,
    message: string,
  ) {
    super(message);
    this.name = 'IdentityError';
  }
}

export function isIdentityError(e: unknown): e is IdentityError {
  return e instanceof IdentityError;
}
