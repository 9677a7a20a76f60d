import { z } from 'zod';

/**
 * Control characters other than tab, newline and carriage return. PostgreSQL refuses NUL in text
 * and jsonb (SQLSTATE 22021, 22P05), and the rest break logs, tables and terminals; so every input
 * edge refuses them before anything is written or started (decision 0020).
 */
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;
/**
 * A UTF-16 surrogate without its partner (with the `u` flag, a proper pair is one code point and
 * does not match). JSON.stringify writes one as `\ud800`, and PostgreSQL refuses that in jsonb
 * (SQLSTATE 22P02, "Unicode low surrogate must follow a high surrogate") and turns it into U+FFFD
 * in text: the task would fail in the ledger, or be stored as something else than was sent.
 */
const LONE_SURROGATE = /\p{Surrogate}/u;

/** A readable position of the first match of `re`: `\u0000 at 3`. */
const where = (s: string, re: RegExp = CONTROL): string => {
  const i = s.search(re);
  return `\\u${s.charCodeAt(i).toString(16).padStart(4, '0')} at ${i}`;
};

/** What is wrong with a string as stored text, or null: a control character, or a lone surrogate. */
function badText(s: string): string | null {
  if (CONTROL.test(s)) return `must not contain control characters (${where(s)})`;
  if (LONE_SURROGATE.test(s)) return `must be well-formed Unicode: a lone surrogate (${where(s, LONE_SURROGATE)})`;
  return null;
}

/**
 * A superRefine that walks a parsed value (strings, array items, object keys and values) and adds
 * one issue per string holding a control character or a lone surrogate, at that string's path.
 */
export function refuseControlCharacters(value: unknown, ctx: z.RefinementCtx): void {
  const walk = (v: unknown, path: (string | number)[]): void => {
    if (typeof v === 'string') {
      const bad = badText(v);
      if (bad !== null) ctx.addIssue({ code: 'custom', path, message: bad });
    } else if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, [...path, i]));
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        const bad = badText(k);
        if (bad !== null) ctx.addIssue({ code: 'custom', path: [...path, k], message: `key ${bad}` });
        walk(x, [...path, k]);
      }
    }
  };
  walk(value, []);
}

/** Text a person typed: no control characters but tab and newline (they break logs and PostgreSQL text), well-formed Unicode. */
const typed = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .refine((s) => !/[\u0000-\u0008\u000b-\u001f\u007f]/.test(s), 'must not contain control characters')
    .refine((s) => !LONE_SURROGATE.test(s), 'must be well-formed Unicode: a lone surrogate');
/** A name, a model, a tool: one line of at most 128 characters. */
export const NameText = typed(128).refine((s) => !/[\t\n]/.test(s), 'must be one line');
/** A reason: up to 1,000 characters, tabs and newlines allowed. */
export const ReasonText = typed(1000);

/** A zod error as one line: each issue's path (or `(root)`) and message, `; `-separated. */
export const issuesText = (e: z.ZodError): string => e.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
