import type { Client, Connection } from '@temporalio/client';
import { type GovConfig, loadConfig } from '../config/load';
import { type Ledger, connectTemporal, openLedger } from '../runtime/environment';

/**
 * Lazily opened connections of one command: a command that only reads the ledger never
 * connects to Temporal, and the other way round. Everything is closed when the command ends.
 */
export class CommandContext {
  private ledger?: Promise<Ledger>;
  private temporal?: Promise<{ connection: Connection; client: Client; namespace: string }>;
  private cfg?: GovConfig;

  constructor(readonly dataDir?: string) {}

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

  async close(): Promise<void> {
    await Promise.allSettled([this.ledger?.then((l) => l.close()), this.temporal?.then((t) => t.connection.close())]);
  }
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
