/**
 * A deterministic stand-in for a hosted model: no weights, no network. Given a task's seed and a
 * step number it answers with the token counts a real call would report and, on some steps, a
 * tool call — the same script every run, so tests can compare exact totals.
 */
export interface ModelCall {
  tokensIn: number;
  tokensOut: number;
  contextTokens: number;
  tool?: string;
  toolArgs?: Record<string, unknown>;
}

/** A small, fast PRNG (mulberry32): the same seed gives the same agent. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface AgentScript {
  seed: number;
  steps: number;
  /** Tools the agent reaches for, in the order it tries them. */
  tools: string[];
}

/** The agent's calls: context grows with each step, as a conversation does; every third step uses a tool. */
export function scriptedCalls(script: AgentScript): ModelCall[] {
  const rand = prng(script.seed);
  const calls: ModelCall[] = [];
  let context = 400 + Math.floor(rand() * 400);
  for (let i = 0; i < script.steps; i++) {
    const tokensIn = 200 + Math.floor(rand() * 1800);
    const tokensOut = 50 + Math.floor(rand() * 450);
    context += tokensIn + tokensOut;
    const call: ModelCall = { tokensIn, tokensOut, contextTokens: context };
    if (i % 3 === 2 && script.tools.length > 0) {
      call.tool = script.tools[Math.floor(i / 3) % script.tools.length]!;
      call.toolArgs = { step: i, ref: `r-${script.seed}-${i}` };
    }
    calls.push(call);
  }
  return calls;
}
