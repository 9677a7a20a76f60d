import { readFileSync } from 'node:fs';
import type { Client, Connection } from '@temporalio/client';
import { type GovConfig, loadConfig } from '../config/load';
import { type Action, type Principal, actorName } from '../governance/authz';
import { type Authenticator, createAuthenticator } from '../identity/authenticate';
import { IdentityError } from '../identity/errors';
import { auditRefusal, checkAccess } from '../ledger/authz';
import { type Ledger, connectTemporal, openLedger } from '../runtime/environment';
import { GovloopClient } from '../sdk';
import { CliExit, Exit } from './util';
import { settings } from '../config/settings';

/**
 * The credential of this CLI invocation: `--token-file`, else $GOVLOOP_TOKEN (an OIDC access
 * token), else $GOVLOOP_API_KEY. Never a command-line argument: it would show in `ps` and history.
 */
export function cliCredential(tokenFile?: string): string | undefined {
  if (tokenFile) return readFileSync(tokenFile, 'utf8').trim() || undefined;
  const env = settings();
  return env.GOVLOOP_TOKEN ?? env.GOVLOOP_API_KEY;
}

/**
 * Lazily opened connections of one command: a command that only reads the ledger never
 * connects to Temporal, and the other way round. Everything is closed when the command ends.
 */
export class CommandContext {
  private ledger?: Promise<Ledger>;
  private temporal?: Promise<{ connection: Connection; client: Client; namespace: string }>;
  private cfg?: GovConfig;
  private authn?: Authenticator;

  constructor(
    readonly dataDir?: string,
    readonly credential: string | undefined = cliCredential(),
  ) {}

  config(): GovConfig {
    this.cfg ??= loadConfig();
    return this.cfg;
  }

  async db() {
    this.ledger ??= openLedger(this.dataDir);
    return (await this.ledger).db;
  }

  async client(): Promise<Client> {
    this.temporal ??= connectTemporal(this.dataDir);
    return (await this.temporal).client;
  }

  /** The SDK client of this invocation, carrying its credential. */
  async gov(): Promise<GovloopClient> {
    return new GovloopClient(await this.client(), undefined, this.credential ? { credential: this.credential } : {});
  }

  /**
   * Who runs this command: derived from the credential; `as` is taken (marked unverified) only
   * under `auth: none`. A call without an identity is audited and exits 3 with the code.
   */
  async principal(as?: string, action = 'cli'): Promise<Principal> {
    this.authn ??= createAuthenticator(this.config().auth);
    const db = await this.db();
    try {
      return await this.authn.authenticate(db, { ...(this.credential ? { credential: this.credential } : {}), ...(as !== undefined ? { as } : {}) });
    } catch (err) {
      if (!(err instanceof IdentityError)) throw err;
      await auditRefusal(db, null, action, err, { claimed: as ?? null });
      throw new CliExit(Exit.Rejected, `refused (${err.code}): ${err.message}`, { code: err.code });
    }
  }

  /**
   * For reads (outside a transaction): checks `p` may do `action` in `tenant`; exits 3, audited,
   * when not. Writes check inside their own transaction with `checkAccess` and throw `refused()`
   * after it committed the refusal's audit row.
   */
  async allow(p: Principal, action: Action, tenant: string, detail: Record<string, unknown> = {}): Promise<string> {
    const d = await checkAccess(await this.db(), p, action, tenant, { detail });
    if (!d.allowed) throw refused(d, p);
    return d.via;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.ledger?.then((l) => l.close()), this.temporal?.then((t) => t.connection.close())]);
  }
}

/** The exit of a refused call: code 3, the refusal's code and message. */
export function refused(d: { code: string; message: string }, p?: Principal): CliExit {
  return new CliExit(Exit.Rejected, `refused (${d.code}): ${d.message}`, { code: d.code, ...(p ? { actor: actorName(p) } : {}) });
}

/** Runs a command body with a context and closes it afterwards, whatever happens. */
export async function withContext<T>(dataDir: string | undefined, fn: (ctx: CommandContext) => Promise<T>): Promise<T> {
  const ctx = new CommandContext(dataDir);
  try {
    return await fn(ctx);
  } finally {
    await ctx.close();
  }
}
