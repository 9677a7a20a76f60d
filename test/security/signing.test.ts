import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { keyIdOf, loadOrCreateSigningKey, loadPublicKey, publicKeyPem, signJson, verifyJson } from '../../identity/signing';

const dir = mkdtempSync(join(tmpdir(), 'govloop-signing-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the Ed25519 signing key', () => {
  it('is created with its parent directories, mode 0600, and loaded again as the same key', () => {
    const path = join(dir, 'a', 'b', 'key.pem');
    const key = loadOrCreateSigningKey(path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(key.privateKey.asymmetricKeyType).toBe('ed25519');
    const spki = key.publicKey.export({ type: 'spki', format: 'der' });
    expect(key.keyId).toBe(createHash('sha256').update(spki).digest('hex').slice(0, 16));
    expect(key.keyId).toBe(keyIdOf(key.publicKey));
    const again = loadOrCreateSigningKey(path);
    expect(again.keyId).toBe(key.keyId);
    // The public key from the private key file, or from a public key file.
    expect(keyIdOf(loadPublicKey(path))).toBe(key.keyId);
    writeFileSync(join(dir, 'pub.pem'), publicKeyPem(key.publicKey));
    expect(keyIdOf(loadPublicKey(join(dir, 'pub.pem')))).toBe(key.keyId);
  });

  it('refuses a key that is not Ed25519', async () => {
    const { generateKeyPairSync } = await import('node:crypto');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const path = join(dir, 'ec.pem');
    writeFileSync(path, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    expect(() => loadOrCreateSigningKey(path)).toThrow(/not an Ed25519 key/);
    expect(() => loadPublicKey(path)).toThrow(/not an Ed25519 key/);
  });

  it('signs canonical JSON: key order does not matter, any change or another key does', () => {
    const key = loadOrCreateSigningKey(join(dir, 'sign.pem'));
    const other = loadOrCreateSigningKey(join(dir, 'other.pem'));
    const value = { b: [1, { y: 'z', x: null }], a: 'approval', n: 3 };
    const sig = signJson(key, value);
    expect(sig).toMatch(/^[A-Za-z0-9_-]{86}$/);
    expect(verifyJson(key.publicKey, { n: 3, a: 'approval', b: [1, { x: null, y: 'z' }] }, sig)).toBe(true);
    expect(verifyJson(key.publicKey, { ...value, n: 4 }, sig)).toBe(false);
    expect(verifyJson(other.publicKey, value, sig)).toBe(false);
    expect(verifyJson(key.publicKey, value, 'not a signature!')).toBe(false);
    expect(verifyJson(key.publicKey, value, '')).toBe(false);
    expect(verifyJson(key.publicKey, value, sig.slice(0, 40))).toBe(false);
  });
});
