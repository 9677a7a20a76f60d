/**
 * identity/oidc.ts against a real OIDC provider: ory hydra (test/support/hydra.ts), three instances
 * started once, each its own issuer with its own signing keys. Tokens are real client_credentials
 * access tokens (JWTs, `sub` = client id). Skipped, with the reason printed, where the hydra binary
 * is absent (build it with test/security/build-hydra.sh).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { SignJWT, decodeJwt, decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityError, type IdentityCode } from '../../identity/errors';
import { OidcProviderError, createOidcVerifier, looksLikeJwt } from '../../identity/oidc';
import { type Hydra, hydraSkipReason, startHydra } from '../support/hydra';

const skipReason = hydraSkipReason();
if (skipReason) console.warn(`[oidc.test] skipped: ${skipReason}`);

const AUDIENCE = 'govloop';

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection, but it resolved');
}

async function expectIdentityError(p: Promise<unknown>, code: IdentityCode, message?: string | RegExp): Promise<IdentityError> {
  const e = await rejection(p);
  expect(e).toBeInstanceOf(IdentityError);
  const ie = e as IdentityError;
  expect(ie.code, ie.message).toBe(code);
  expect(ie.name).toBe('IdentityError');
  if (message) expect(ie.message).toMatch(message);
  return ie;
}

const b64url = (b: Buffer) => b.toString('base64url');

describe('looksLikeJwt', () => {
  it('accepts three base64url segments and nothing else', () => {
    expect(looksLikeJwt('eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_')).toBe(true);
    for (const s of ['', 'abc', 'a.b', 'a.b.c.d', 'a..c', 'a.b.', 'a.b.c=', 'a b.c.d', 'ory_at_abc.def']) expect(looksLikeJwt(s), s).toBe(false);
  });
});

describe.skipIf(!!skipReason)('OIDC access tokens from a real ory hydra', () => {
  /** The issuer govloop trusts. */
  let h1: Hydra;
  /** Another issuer (configured with a trailing slash in its URL). */
  let h2: Hydra;
  /** Access tokens live 1 s. */
  let hShort: Hydra;
  let client: { clientId: string; clientSecret: string };
  let validToken: string;

  beforeAll(async () => {
    const started = await Promise.allSettled([
      startHydra(),
      startHydra({ issuerTrailingSlash: true }),
      startHydra({ accessTokenTtl: '1s', issuerTrailingSlash: true }),
    ]);
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) {
      await Promise.all(started.map((s) => (s.status === 'fulfilled' ? s.value.stop() : undefined)));
      throw (failed as PromiseRejectedResult).reason;
    }
    [h1, h2, hShort] = started.map((s) => (s as PromiseFulfilledResult<Hydra>).value) as [Hydra, Hydra, Hydra];
    client = await h1.createClient('govloop-api-client', { audience: [AUDIENCE] });
    validToken = await h1.token(client.clientId, client.clientSecret, [AUDIENCE]);
  });

  afterAll(async () => {
    await Promise.all([h1, h2, hShort].map((h) => h?.stop()));
  });

  it('verifies a client_credentials token: subject is the client id (issuer discovered, with or without trailing slash)', async () => {
    expect(client.clientId).toBe('govloop-api-client');
    expect(looksLikeJwt(validToken)).toBe(true);
    const v = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE });
    const t = await v.verify(validToken);
    expect(t.subject).toBe('govloop-api-client');
    expect(t.issuer).toBe(h1.issuer);
    expect(t.audience).toEqual([AUDIENCE]);
    expect(t.expiresAt.getTime()).toBeGreaterThan(Date.now());
    expect(t.claims.client_id).toBe('govloop-api-client');
    // Discovery is cached: a second verify fetches nothing new and agrees.
    expect((await v.verify(validToken)).subject).toBe('govloop-api-client');

    // The issuer configured with a trailing slash (hydra's iss has none here), and an explicit JWKS URI.
    const slash = createOidcVerifier({ issuer: `${h1.issuer}/`, audience: AUDIENCE, jwksUri: h1.jwksUri });
    expect((await slash.verify(validToken)).subject).toBe('govloop-api-client');

    // h2's iss has the slash; a verifier configured without it accepts its tokens.
    const c2 = await h2.createClient('h2-client', { audience: [AUDIENCE] });
    expect(h2.issuer.endsWith('/')).toBe(true);
    const t2 = await h2.token(c2.clientId, c2.clientSecret, [AUDIENCE]);
    expect(decodeJwt(t2).iss).toBe(h2.issuer);
    expect((await createOidcVerifier({ issuer: h2.publicUrl, audience: AUDIENCE }).verify(t2)).subject).toBe('h2-client');
  });

  it('a missing or empty subject claim is TOKEN_INVALID', async () => {
    const v = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE, subjectClaim: 'email' });
    await expectIdentityError(v.verify(validToken), 'TOKEN_INVALID', /no "email" claim/);
  });

  it('a token for another audience, or for none, is TOKEN_AUDIENCE', async () => {
    const billing = await h1.createClient('billing-client', { audience: ['billing'] });
    const v = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE });
    const other = await h1.token(billing.clientId, billing.clientSecret, ['billing']);
    expect(decodeJwt(other).aud).toEqual(['billing']);
    await expectIdentityError(v.verify(other), 'TOKEN_AUDIENCE', /token is for audience "billing", expected "govloop"/);
    const none = await h1.token(client.clientId, client.clientSecret, []);
    await expectIdentityError(v.verify(none), 'TOKEN_AUDIENCE', /no audience/);
  });

  it('a token from another hydra (another issuer) is TOKEN_ISSUER, whichever key set the verifier reads', async () => {
    const c2 = await h2.createClient('intruder', { audience: [AUDIENCE] });
    const foreign = await h2.token(c2.clientId, c2.clientSecret, [AUDIENCE]);
    // Verifier for h1: h2's signing key is not in h1's key set; the token names h2 as issuer.
    const v1 = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE });
    await expectIdentityError(v1.verify(foreign), 'TOKEN_ISSUER', `token issued by ${h2.issuer}, expected ${h1.issuer}`);
    // Verifier that trusts h1 as issuer but (misconfigured) reads h2's keys: the signature verifies, the issuer does not match.
    const mixed = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE, jwksUri: h2.jwksUri });
    await expectIdentityError(mixed.verify(foreign), 'TOKEN_ISSUER', `token issued by ${h2.issuer}, expected ${h1.issuer}`);
  });

  it('an expired token is TOKEN_EXPIRED (no clock tolerance); within the tolerance it still verifies', async () => {
    const c = await hShort.createClient('short-lived', { audience: [AUDIENCE] });
    const token = await hShort.token(c.clientId, c.clientSecret, [AUDIENCE]);
    const { exp, iat } = decodeJwt(token);
    expect(typeof exp).toBe('number');
    expect(exp! - iat!).toBeLessThanOrEqual(2);
    // Wait, by the clock, until exp has passed (jose: expired when exp <= now, in whole seconds).
    while (Math.floor(Date.now() / 1000) <= exp!) await new Promise((r) => setTimeout(r, 50));
    const strict = createOidcVerifier({ issuer: hShort.issuer, audience: AUDIENCE, clockToleranceSeconds: 0 });
    const e = await expectIdentityError(strict.verify(token), 'TOKEN_EXPIRED', /token expired at/);
    expect(e.message).toContain(new Date(exp! * 1000).toISOString());
    const lenient = createOidcVerifier({ issuer: hShort.issuer, audience: AUDIENCE, clockToleranceSeconds: 30 });
    expect((await lenient.verify(token)).subject).toBe('short-lived');
  });

  it('a tampered token (one payload byte changed) is TOKEN_INVALID', async () => {
    const v = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE });
    const [header, payload, sig] = validToken.split('.') as [string, string, string];
    // One byte of the decoded claims: the last letter of `sub` (still valid JSON, still our issuer and audience).
    const bytes = Buffer.from(payload, 'base64url');
    const at = bytes.indexOf('"sub":"govloop-api-client"') + '"sub":"govloop-api-client'.length - 1;
    expect(at).toBeGreaterThan(0);
    bytes[at] = 'u'.charCodeAt(0);
    const forged = `${header}.${b64url(bytes)}.${sig}`;
    expect(decodeJwt(forged).sub).toBe('govloop-api-clienu');
    await expectIdentityError(v.verify(forged), 'TOKEN_INVALID', /signature does not verify/);
    // One character of the encoded payload.
    const i = Math.floor(payload.length / 2);
    const flipped = `${header}.${payload.slice(0, i)}${payload[i] === 'A' ? 'B' : 'A'}${payload.slice(i + 1)}.${sig}`;
    await expectIdentityError(v.verify(flipped), 'TOKEN_INVALID');
  });

  it('an HS256 token signed with a random secret is TOKEN_INVALID, even with our issuer, audience and key id', async () => {
    const v = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE });
    const { kid } = decodeProtectedHeader(validToken);
    const forged = await new SignJWT({ client_id: 'govloop-api-client' })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT', ...(kid ? { kid } : {}) })
      .setSubject('govloop-api-client')
      .setIssuer(h1.issuer)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(randomBytes(32));
    await expectIdentityError(v.verify(forged), 'TOKEN_INVALID', /HS256.*not accepted/);
  });

  it('an RS256 token from a key hydra never published is TOKEN_INVALID; a non-JWT is TOKEN_INVALID', async () => {
    const v = createOidcVerifier({ issuer: h1.issuer, audience: AUDIENCE });
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const forged = await new SignJWT({})
      .setProtectedHeader({ alg: 'RS256', kid: 'not-a-hydra-key' })
      .setSubject('govloop-api-client')
      .setIssuer(h1.issuer)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);
    await expectIdentityError(v.verify(forged), 'TOKEN_INVALID', /no key .* matches the token \(kid "not-a-hydra-key"\)/);
    await expectIdentityError(v.verify('ory_at_opaque.token'), 'TOKEN_INVALID', /not a JWT/);
  });

  it('an unreachable issuer is an OidcProviderError (a server problem), not a token rejection', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const { port: p } = s.address() as AddressInfo;
        s.close(() => resolve(p));
      });
    });
    const v = createOidcVerifier({ issuer: `http://127.0.0.1:${port}`, audience: AUDIENCE, fetchTimeoutMs: 2000 });
    const e = await rejection(v.verify(validToken));
    expect(e).toBeInstanceOf(OidcProviderError);
    expect(e).not.toBeInstanceOf(IdentityError);
    expect((e as Error).message).toMatch(/OIDC discovery failed at http:\/\/127\.0\.0\.1:\d+\/\.well-known\/openid-configuration/);
  });
});
