import { type KeyObject, createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { canonicalJson } from '../governance/canonical-json';

/**
 * govloop's signing key: Ed25519, kept as a PKCS#8 PEM file readable by its owner only. It signs
 * what must be checkable outside the database (audit checkpoints, decision 0019) and approval
 * tokens. A signature covers `canonicalJson(value)`, so key order never matters.
 */
export interface SigningKey {
  /** First 16 hex digits of SHA-256 over the public key's SPKI DER: names the key in what it signs. */
  keyId: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/** The key id of a public key: first 16 hex digits of SHA-256 over its SPKI DER. */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

function fromPrivate(privateKey: KeyObject, path: string): SigningKey {
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new Error(`${path}: not an Ed25519 key (${privateKey.asymmetricKeyType})`);
  const publicKey = createPublicKey(privateKey);
  return { keyId: keyIdOf(publicKey), privateKey, publicKey };
}

/**
 * The Ed25519 key at `path` (PKCS#8 PEM); created there, with mode 0600 and any missing parent
 * directories (0700), when there is none. Two processes creating it at once end up with the same key:
 * the file is created exclusively, and the one that loses the race reads the winner's.
 */
export function loadOrCreateSigningKey(path: string): SigningKey {
  try {
    return fromPrivate(createPrivateKey(readFileSync(path, 'utf8')), path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  try {
    writeFileSync(path, pem, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return fromPrivate(createPrivateKey(readFileSync(path, 'utf8')), path);
  }
  return fromPrivate(privateKey, path);
}

/**
 * The public key in the PEM file at `path`: a public key (SPKI), or the private key file itself
 * (its public half). Auditors get the public key alone: `openssl pkey -in KEY.pem -pubout`.
 */
export function loadPublicKey(path: string): KeyObject {
  const pem = readFileSync(path, 'utf8');
  const key = /PRIVATE KEY/.test(pem) ? createPublicKey(createPrivateKey(pem)) : createPublicKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${path}: not an Ed25519 key (${key.asymmetricKeyType})`);
  return key;
}

/** The SPKI PEM of a public key, to hand to whoever verifies. */
export function publicKeyPem(publicKey: KeyObject): string {
  return publicKey.export({ type: 'spki', format: 'pem' }) as string;
}

/** Base64url Ed25519 signature over `canonicalJson(value)`. */
export function signJson(key: SigningKey, value: unknown): string {
  return sign(null, Buffer.from(canonicalJson(value), 'utf8'), key.privateKey).toString('base64url');
}

/** Whether `sig` is `signJson`'s signature of `value` by the private half of `publicKey`. Never throws. */
export function verifyJson(publicKey: KeyObject, value: unknown, sig: string): boolean {
  if (typeof sig !== 'string' || !/^[A-Za-z0-9_-]+$/.test(sig)) return false;
  try {
    return verify(null, Buffer.from(canonicalJson(value), 'utf8'), publicKey, Buffer.from(sig, 'base64url'));
  } catch {
    return false;
  }
}
