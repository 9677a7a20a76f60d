import type { ToolEntry } from '../config/schema';

/** A call govloop makes to a tool itself: today only compensations, which undo an agent's step. */
export interface ToolCall {
  tool: string;
  args: unknown;
  taskId: string;
  /** The step being undone. */
  step: number;
  /** The tool whose effect is undone. */
  undoes: string;
}

export class ToolCallError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ToolCallError';
  }
}

/**
 * Calls a tool. With an `endpoint` in the catalog, an HTTP POST of the call as JSON (2xx: done).
 * Without one, the simulated tool system, which behaves like a payments or ticketing API: it undoes
 * a call unless the call's arguments say `irreversible: true` (a payment that has settled), which
 * it refuses every time, as the real one would.
 */
export async function callTool(entry: ToolEntry, call: ToolCall): Promise<{ ok: true; detail: string }> {
  if (entry.endpoint) {
    const res = await fetch(entry.endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': `${call.taskId}:${call.step}:${call.tool}` },
      body: JSON.stringify(call),
      signal: AbortSignal.timeout(30_000),
    });
    if (!res.ok) throw new ToolCallError(`${call.tool} at ${entry.endpoint} answered ${res.status}: ${(await res.text()).slice(0, 200)}`);
    return { ok: true, detail: `${entry.endpoint} ${res.status}` };
  }
  const args = call.args as { irreversible?: unknown } | null;
  if (args && typeof args === 'object' && args.irreversible === true) {
    throw new ToolCallError(`${call.tool}: the effect of ${call.undoes} (step ${call.step}) has settled and cannot be reversed`);
  }
  return { ok: true, detail: `simulated ${call.tool} undid ${call.undoes} step ${call.step}` };
}
