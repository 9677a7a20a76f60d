import { mkdtempSync, rmSync } from 'node:fs';
import { type Server, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevServer } from '../../runtime/dev-server';

/**
 * Starting the real `temporal` dev server when it cannot start: the error says why, from the
 * server's own log, instead of pointing at a log file that a test's teardown may already have
 * removed (a chaos run once failed with only "exited with 1; see …/temporal.log").
 */
let taken: Server;
let port: number;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'govloop-devserver-'));
  // The caller's connection attempts reach this listener too: each is closed at once, so none is
  // left open for close() below to wait on.
  taken = createServer((socket) => socket.destroy());
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
  port = (taken.address() as { port: number }).port;
});

afterAll(async () => {
  await new Promise((r) => taken?.close(r));
  rmSync(dir, { recursive: true, force: true });
});

describe('the dev server on a port that is taken', () => {
  it("fails with the server's own reason when the caller chose the port", async () => {
    await expect(startDevServer({ dataDir: dir, port, headless: true })).rejects.toThrow(/exited with \d+; its log .* ends:\n[\s\S]*address already in use/);
  });
});
