import type { AuthConfig } from '../config/schema';
import { type Principal, actorName } from '../governance/authz';
import type { Queryable } from '../ledger/db';
import { KEY_PREFIX, principalOfKey } from '../ledger/keys';
import { IdentityError } from './errors';
import { createOidcVerifier, looksLikeJwt } from './oidc';

/**
 * What a call says about its caller: a credential (an OIDC access token or a govloop API key) and,
 * under `auth: none` only, a typed name. Every CLI command, SDK call and Temporal message carries one.
 */
export interface Caller {
  credential?: string;
  as?: string;
}

/** Under `auth: none`, a call with no name at all is the local operator of the dev instance. */
export const LOCAL_OPERATOR = 'local-operator';

export interface Authenticator {
  readonly mode: AuthConfig['mode'];
  /** The principal of a call, derived from its credential, never from a typed name where auth is required. */
  authenticate(q: Queryable, caller: Caller): Promise<Principal>;
}

/**
 * Builds the authenticator of a process from config/auth.yaml. OIDC tokens are verified against
 * the issuer's JWKS (fetched once, refreshed on an unknown key id); API keys are looked up by
 * their SHA-256 in the ledger.
 */
export function createAuthenticator(auth: AuthConfig): Authenticator {
  const oidc = auth.oidc ? createOidcVerifier(auth.oidc) : null;
  const admins = new Set(auth.platformAdmins);
  return {
    mode: auth.mode,
    async authenticate(q, caller) {
      const credential = caller.credential?.trim();
      if (credential) {
        const p = await verifyCredential(q, credential);
        if (caller.as !== undefined && caller.as !== p.subject) {
          throw new IdentityError('IDENTITY_MISMATCH', `the call names ${caller.as} but its credential is ${actorName(p)}'s; the credential decides who acts`);
        }
        return p;
      }
      if (auth.mode === 'required') {
        throw caller.as !== undefined
          ? new IdentityError(
              'AUTH_REQUIRED',
              `auth is required: a typed name (${caller.as}) is not an identity; pass a credential (GOVLOOP_TOKEN or GOVLOOP_API_KEY)`,
            )
          : new IdentityError('UNAUTHENTICATED', 'auth is required: pass a credential (GOVLOOP_TOKEN or GOVLOOP_API_KEY)');
      }
      // auth: none — a typed name, marked unverified wherever it is shown. Not a security boundary:
      // tenant roles are not checked (everyone is platform-admin), tool approvals and four eyes still are.
      return { subject: caller.as ?? LOCAL_OPERATOR, verified: false, method: 'none', tenantScope: null, platformAdmin: true };
    },
  };

  async function verifyCredential(q: Queryable, credential: string): Promise<Principal> {
    if (credential.startsWith(KEY_PREFIX)) {
      const k = await principalOfKey(q, credential);
      if (!k) throw new IdentityError('KEY_INVALID', 'unknown, malformed or revoked API key');
      return { subject: k.subject, verified: true, method: 'apikey', tenantScope: k.tenant, platformAdmin: admins.has(k.subject) };
    }
    if (!looksLikeJwt(credential)) throw new IdentityError('TOKEN_INVALID', 'the credential is neither a govloop API key (glk_…) nor a JWT access token');
    if (!oidc) throw new IdentityError('TOKEN_INVALID', 'a JWT was presented but no OIDC issuer is configured (config/auth.yaml oidc, GOVLOOP_OIDC_ISSUER)');
    const t = await oidc.verify(credential);
    return { subject: t.subject, verified: true, method: 'oidc', tenantScope: null, platformAdmin: admins.has(t.subject) };
  }
}
