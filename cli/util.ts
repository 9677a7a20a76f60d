import Table from 'cli-table3';
import type { z } from 'zod';
import { fieldErrors } from '../governance/intent';

/** Exit codes of every govloop command. */
export const Exit = { Ok: 0, Failure: 1, BadInput: 2, Rejected: 3, AuditBroken: 4 } as const;

/** Thrown to end a command with a message and an exit code; main prints it and exits. */
export class CliExit extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly json?: unknown,
  ) {
    super(message);
  }
}

/** Validates parsed command-line options with zod; every bad option is named (`--usd: ...`). */
export function parseOptions<T>(schema: z.ZodType<T>, opts: unknown): T {
  const r = schema.safeParse(opts);
  if (r.success) return r.data;
  const lines = fieldErrors(r.error).map(
    (e) => `  ${e.path === '(root)' ? '(options)' : `--${e.path.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`}: ${e.message}`,
  );
  throw new CliExit(Exit.BadInput, `invalid options:\n${lines.join('\n')}`, { errors: fieldErrors(r.error) });
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function table(head: string[], rows: (string | number)[][]): string {
  const t = new Table({ head, style: { head: [], border: [] } });
  for (const r of rows) t.push(r.map((c) => (typeof c === 'number' ? formatNumber(c) : c)));
  return t.toString();
}

export function formatNumber(n: number): string {
  if (Number.isInteger(n)) return n.toLocaleString('en-US');
  return n.toLocaleString('en-US', { maximumFractionDigits: 4 });
}

export const usd = (n: number) => `$${n.toFixed(2)}`;
