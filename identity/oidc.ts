/**
 * Verifies OIDC/OAuth2 access tokens that are JWTs (RFC 9068 style, e.g. ory hydra with
 * `strategies.access_token: jwt`): signature against the issuer's JSON Web Key Set, then issuer,
 * audience, expiry. Every rejection is an IdentityError with a code saying what was wrong:
 *
 *   TOKEN_EXPIRED   `exp` has passed (beyond clockToleranceSeconds)
 *   TOKEN_ISSUER    `iss` is not the configured issuer (also for a token signed by a key that is not
 *                   in the issuer's key set when the token names another issuer: a foreign token)
 *   TOKEN_AUDIENCE  `aud` does not name the configured audience (or is absent)
 *   TOKEN_INVALID   anything else: malformed, bad signature, unknown key, algorithm not accepted,
 *                   `nbf` in the future, no `exp`, no subject
 *
 * When the key set or discovery document cannot be fetched, verify() throws an
 * OidcProviderError (not an IdentityError): that is the server's problem, not the caller's token,
 * and should answer 503, not 401.
 *
 * The issuer may be configured with or without a trailing slash; tokens whose `iss` is either form
 * are accepted (hydra keeps whichever form `urls.self.issuer` has).
 */
import {
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type JWTHeaderParameters,
  type FlattenedJWSInput,
  type JWTVerifyGetKey,
  type JWTPayload,
} from 'jose';
import { IdentityError } from './errors';

export interface OidcConfig {
  /** The issuer URL, as in the tokens' `iss` (a trailing slash is optional). */
  issuer: string;
  /** This service's audience: tokens must name it in `aud`. */
  audience: string;
  /** The JWKS URL; when absent it is read once from `${issuer}/.well-known/openid-configuration`. */
  jwksUri?: string;
  /** The claim that names the caller; default `sub`. */
  subjectClaim?: string;
  /** Allowed clock skew for `exp`/`nbf`; default 5 seconds. */
  clockToleranceSeconds?: number;
  /** Accepted JWS algorithms; default the asymmetric ones (never HS*: a shared secret is not an issuer's key). */
  algorithms?: string[];
  /** Timeout for fetching the discovery document and the key set; default 5000 ms. */
  fetchTimeoutMs?: number;
}

export interface VerifiedToken {
  subject: string;
  issuer: string;
  audience: string[];
  expiresAt: Date;
  claims: Record<string, unknown>;
}

export interface OidcVerifier {
  verify(token: string): Promise<VerifiedToken>;
}

/** The key set or discovery document could not be fetched or read: a server-side failure. */
export class OidcProviderError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'OidcProviderError';
  }
}

export const DEFAULT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'];

const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/** Three non-empty base64url segments separated by dots (a JWS compact serialization). */
export function looksLikeJwt(s: string): boolean {
  return typeof s === 'string' && JWT_SHAPE.test(s);
}

const stripSlash = (u: string) => u.replace(/\/+$/, '');

function describeAud(aud: unknown): string {
  if (aud === undefined) return 'no audience';
  const list = Array.isArray(aud) ? aud : [aud];
  return list.length === 0 ? 'no audience' : `audience ${list.map((a) => JSON.stringify(a)).join(', ')}`;
}

function unverifiedClaims(token: string): JWTPayload | undefined {
  try {
    return decodeJwt(token);
  } catch {
    return undefined;
  }
}

export function createOidcVerifier(cfg: OidcConfig): OidcVerifier {
  if (!cfg.issuer) throw new TypeError('OidcConfig.issuer is required');
  if (!cfg.audience) throw new TypeError('OidcConfig.audience is required');
  const issuer = stripSlash(cfg.issuer);
  const issuers = [issuer, `${issuer}/`];
  const audience = cfg.audience;
  const subjectClaim = cfg.subjectClaim ?? 'sub';
  const tolerance = cfg.clockToleranceSeconds ?? 5;
  const algorithms = cfg.algorithms ?? DEFAULT_ALGORITHMS;
  const timeoutMs = cfg.fetchTimeoutMs ?? 5000;

  let jwks: Promise<JWTVerifyGetKey> | undefined;
  const keySet = (): Promise<JWTVerifyGetKey> => {
    if (!jwks) {
      const p = (async () => {
        const uri = cfg.jwksUri ?? (await discoverJwksUri(issuer, timeoutMs));
        let url: URL;
        try {
          url = new URL(uri);
        } catch (cause) {
          throw new OidcProviderError(`JWKS URI ${JSON.stringify(uri)} is not a URL`, { cause });
        }
        return createRemoteJWKSet(url, { timeoutDuration: timeoutMs });
      })();
      jwks = p;
      // A failed discovery is retried on the next verify(), not cached.
      p.catch(() => {
        if (jwks === p) jwks = undefined;
      });
    }
    return jwks;
  };

  // Resolves the key for a token; failures to reach the key set become OidcProviderError, while
  // "no such key" (JWKSNoMatchingKey) stays a token problem.
  const getKey = async (header: JWTHeaderParameters, token: FlattenedJWSInput) => {
    const remote = await keySet();
    try {
      return await remote(header, token);
    } catch (e) {
      if (e instanceof errors.JWKSNoMatchingKey || e instanceof errors.JWKSMultipleMatchingKeys) throw e;
      throw new OidcProviderError(`cannot fetch the key set of ${issuer}: ${(e as Error).message}`, { cause: e });
    }
  };

  const reject = (token: string, e: unknown): never => {
    if (e instanceof IdentityError || e instanceof OidcProviderError) throw e;
    if (e instanceof errors.JWTExpired) {
      const exp = typeof e.payload.exp === 'number' ? new Date(e.payload.exp * 1000).toISOString() : '?';
      throw new IdentityError('TOKEN_EXPIRED', `token expired at ${exp} (now ${new Date().toISOString()}, tolerance ${tolerance}s)`);
    }
    if (e instanceof errors.JWTClaimValidationFailed) {
      const p = e.payload;
      switch (e.claim) {
        case 'iss':
          throw new IdentityError(
            'TOKEN_ISSUER',
            p.iss === undefined ? `token names no issuer, expected ${issuer}` : `token issued by ${String(p.iss)}, expected ${issuer}`,
          );
        case 'aud':
          throw new IdentityError('TOKEN_AUDIENCE', `token is for ${describeAud(p.aud)}, expected ${JSON.stringify(audience)}`);
        case 'nbf':
          throw new IdentityError(
            'TOKEN_INVALID',
            `token not valid before ${typeof p.nbf === 'number' ? new Date(p.nbf * 1000).toISOString() : String(p.nbf)}`,
          );
        default:
          throw new IdentityError(
            'TOKEN_INVALID',
            e.reason === 'missing' ? `token has no "${e.claim}" claim` : `token's "${e.claim}" claim is invalid: ${e.message}`,
          );
      }
    }
    if (e instanceof errors.JWKSNoMatchingKey) {
      // No key of ours matches: if the token names another issuer, say so (a rejection based on
      // unverified claims only ever rejects, so reading them is safe here).
      const iss = unverifiedClaims(token)?.iss;
      if (iss !== undefined && !issuers.includes(iss)) throw new IdentityError('TOKEN_ISSUER', `token issued by ${iss}, expected ${issuer}`);
      let kid = '';
      try {
        kid = decodeProtectedHeader(token).kid ?? '';
      } catch {
        /* only for the message */
      }
      throw new IdentityError('TOKEN_INVALID', `no key in ${issuer}'s key set matches the token${kid ? ` (kid ${JSON.stringify(kid)})` : ''}`);
    }
    if (e instanceof errors.JOSEAlgNotAllowed) {
      let alg = '?';
      try {
        alg = decodeProtectedHeader(token).alg ?? '?';
      } catch {
        /* only for the message */
      }
      throw new IdentityError('TOKEN_INVALID', `token signed with ${alg}, which is not accepted (accepted: ${algorithms.join(', ')})`);
    }
    if (e instanceof errors.JWSSignatureVerificationFailed) throw new IdentityError('TOKEN_INVALID', 'token signature does not verify');
    if (e instanceof errors.JWSInvalid || e instanceof errors.JWTInvalid) throw new IdentityError('TOKEN_INVALID', `malformed token: ${e.message}`);
    throw new IdentityError('TOKEN_INVALID', `token rejected: ${e instanceof Error ? e.message : String(e)}`);
  };

  return {
    async verify(token: string): Promise<VerifiedToken> {
      if (!looksLikeJwt(token)) throw new IdentityError('TOKEN_INVALID', 'not a JWT (expected three base64url segments separated by dots)');
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, getKey, {
          issuer: issuers,
          audience,
          algorithms,
          clockTolerance: tolerance,
          requiredClaims: ['exp'],
        }));
      } catch (e) {
        return reject(token, e);
      }
      const subject = payload[subjectClaim];
      if (typeof subject !== 'string' || subject === '') {
        throw new IdentityError(
          'TOKEN_INVALID',
          subject === undefined ? `token has no "${subjectClaim}" claim` : `token's "${subjectClaim}" claim is not a non-empty string`,
        );
      }
      const aud = payload.aud === undefined ? [] : Array.isArray(payload.aud) ? payload.aud : [payload.aud];
      return {
        subject,
        issuer: String(payload.iss),
        audience: aud,
        expiresAt: new Date((payload.exp as number) * 1000),
        claims: { ...payload },
      };
    },
  };
}

/** Reads `jwks_uri` from the issuer's discovery document, checking that it names the same issuer. */
async function discoverJwksUri(issuer: string, timeoutMs: number): Promise<string> {
  const url = `${issuer}/.well-known/openid-configuration`;
  let doc: unknown;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } });
    if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
    doc = await res.json();
  } catch (cause) {
    throw new OidcProviderError(`OIDC discovery failed at ${url}: ${(cause as Error).message}`, { cause });
  }
  const d = (doc ?? {}) as { issuer?: unknown; jwks_uri?: unknown };
  if (typeof d.issuer === 'string' && stripSlash(d.issuer) !== issuer) {
    throw new OidcProviderError(`OIDC discovery at ${url} names issuer ${d.issuer}, expected ${issuer}`);
  }
  if (typeof d.jwks_uri !== 'string' || !d.jwks_uri) throw new OidcProviderError(`OIDC discovery at ${url} has no jwks_uri`);
  return d.jwks_uri;
}
