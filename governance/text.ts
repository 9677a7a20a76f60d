import { z } from 'zod';

/**
 * Control characters other than tab, newline and carriage return. PostgreSQL refuses NUL in text
 * and jsonb (SQLSTATE 22021, 22P05), and the rest break logs, tables and terminals; so every input
 * edge refuses them before anything is written or started (decision 0020).
 */
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

/** A readable position of the first control character: `\u0000 at 3`. */
const where = (s: string): string => {
  const i = s.search(CONTROL);
  return `\\u${s.charCodeAt(i).toString(16).padStart(4, '0')} at ${i}`;
};

/**
 * A superRefine that walks a parsed value (strings, array items, object keys and values) and adds
 * one issue per string holding a control character, at that string's path.
 */
export function refuseControlCharacters(value: unknown, ctx: z.RefinementCtx): void {
  const walk = (v: unknown, path: (string | number)[]): void => {
    if (typeof v === 'string') {
      if (CONTROL.test(v)) ctx.addIssue({ code: 'custom', path, message: `must not contain control characters (${where(v)})` });
    } else if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, [...path, i]));
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (CONTROL.test(k)) ctx.addIssue({ code: 'custom', path: [...path, k], message: `key must not contain control characters (${where(k)})` });
        walk(x, [...path, k]);
      }
    }
  };
  walk(value, []);
}


/** Text a person typed: no control characters but tab and newline (they break logs and PostgreSQL text). */
const typed = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .refine((s) => !/[\u0000-\u0008\u000b-\u001f\u007f]/.test(s), 'must not contain control characters');
/** A name, a model, a tool: one line of at most 128 characters. */
export const NameText = typed(128).refine((s) => !/[\t\n]/.test(s), 'must be one line');
/** A reason: up to 1,000 characters, tabs and newlines allowed. */
export const ReasonText = typed(1000);
