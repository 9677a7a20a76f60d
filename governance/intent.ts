import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { refuseControlCharacters } from './text';

/** The intent: what a team wants run. This shape is the public contract. */
export const WorkloadKind = z.enum(['agent', 'inference', 'training', 'finetune', 'batch']);
export type WorkloadKind = z.infer<typeof WorkloadKind>;

export const RiskClass = z.enum(['low', 'medium', 'high', 'critical']);
export type RiskClass = z.infer<typeof RiskClass>;

const name = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/, 'lowercase letters, digits, ".", "_" and "-", starting and ending alphanumeric');

export const Attribution = z.strictObject({
  tenant: name,
  team: name,
  project: name,
  model: z.string().min(1).max(128),
  useCase: name,
});
export type Attribution = z.infer<typeof Attribution>;

const positiveInt = z.number().int().positive();
export const Caps = z.strictObject({
  maxContextTokens: positiveInt.optional(),
  maxSteps: positiveInt.optional(),
  maxToolCalls: z.number().int().nonnegative().optional(),
  maxTokens: positiveInt.optional(),
  maxUsd: z.number().positive().optional(),
  maxGpuHours: z.number().nonnegative().optional(),
  /** YAML turns an unquoted timestamp into a Date; JSON gives a string. Both are accepted. */
  deadline: z
    .union([z.date(), z.iso.datetime({ offset: true })])
    .transform((d) => (d instanceof Date ? d.toISOString() : new Date(d).toISOString()))
    .optional(),
});
export type Caps = z.infer<typeof Caps>;

export const Sharing = z.union([
  z.literal('exclusive'),
  z.literal('mps'),
  z.literal('timeslice'),
  z.string().regex(/^mig:\d+g\.\d+gb$/, 'exclusive | mps | timeslice | mig:<profile> such as mig:1g.10gb'),
]);
export type Sharing = z.infer<typeof Sharing>;

/** How far a gang may spread: `required` never wider than the level, `preferred` may (and says so). */
export const GpuTopology = z.strictObject({
  // governance/topology.ts TOPOLOGY_LEVELS (not imported: topology.ts imports this module).
  level: z.enum(['node', 'nvlink', 'rack', 'block', 'cluster']),
  mode: z.enum(['required', 'preferred']),
});
export type GpuTopology = z.infer<typeof GpuTopology>;

/**
 * What GPUs a task asks for. `sharing` says how: `exclusive` is `gpus` whole GPUs (a gang, placed
 * all or nothing, as close together as `topology` allows); `mig:<profile>` is `gpus` MIG instances
 * of that profile; `mps` / `timeslice` is a share of one GPU, `gpuMilli` thousandths of it
 * (docs/decisions/0017-gpu-requests.md).
 */
export const Resources = z
  .strictObject({
    gpus: z.number().int().nonnegative(),
    gpuType: z.string().min(1).max(63).optional(),
    sharing: Sharing.default('exclusive'),
    gpuMilli: z.number().int().min(1).max(999).optional(),
    topology: GpuTopology.optional(),
  })
  .superRefine((r, ctx) => {
    if (r.gpus > 0 && r.gpuType === undefined) ctx.addIssue({ code: 'custom', message: 'gpuType is required when gpus > 0', path: ['gpuType'] });
    const shared = r.sharing === 'mps' || r.sharing === 'timeslice';
    if (shared && r.gpus > 0) {
      if (r.gpus !== 1)
        ctx.addIssue({
          code: 'custom',
          message: `sharing ${r.sharing} is a share of one GPU: gpus must be 1 (ask for gpuMilli thousandths of it)`,
          path: ['gpus'],
        });
      if (r.gpuMilli === undefined)
        ctx.addIssue({ code: 'custom', message: `required with sharing ${r.sharing}: the share of the GPU in thousandths, 1–999`, path: ['gpuMilli'] });
    }
    if (!shared && r.gpuMilli !== undefined)
      ctx.addIssue({ code: 'custom', message: `gpuMilli is a share of one GPU through mps or timeslice, not with sharing ${r.sharing}`, path: ['gpuMilli'] });
    if (r.gpus === 0 && r.topology !== undefined) ctx.addIssue({ code: 'custom', message: 'topology applies to GPU work only (gpus > 0)', path: ['topology'] });
  });
export type Resources = z.infer<typeof Resources>;

export const Simulation = z.strictObject({
  durationSeconds: z
    .number()
    .positive()
    .max(30 * 24 * 3600),
  tokensPerSecond: z.number().nonnegative().default(0),
  /** Make the simulated job fail after this many simulated seconds (fault drills). */
  failAfterSeconds: z.number().positive().optional(),
});
export type Simulation = z.infer<typeof Simulation>;

/**
 * A check of the raw input before `schema` parses it, keeping the schema's input type for callers.
 * For what a parse cannot see afterwards: what it drops or takes as something else.
 */
function before<T extends z.ZodType>(check: (v: unknown, ctx: z.RefinementCtx) => void, schema: T) {
  return z.preprocess<z.input<T>, T, z.input<T>>((v, ctx) => (check(v, ctx), v), schema);
}

/**
 * Only a plain object (what JSON and YAML give) where an object of fields is expected: zod takes
 * any object, and a Date or a Map has no own fields, so `caps: new Map([['maxUsd', 5]])` passed as
 * no caps at all and the cap was lost without a word.
 */
const plain = <T extends z.ZodType>(schema: T) =>
  before((v, ctx) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return;
    const proto: unknown = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) {
      ctx.addIssue({ code: 'custom', input: v, message: `expected an object of fields, received ${(v as object).constructor?.name ?? 'an object'}` });
    }
  }, schema);

/**
 * Free-form labels. A record drops an own `__proto__` key without a word (assigning it to a plain
 * object would set the prototype instead), so it is refused before the record sees it.
 */
const Labels = before(
  (v, ctx) => {
    if (v !== null && typeof v === 'object' && Object.hasOwn(v, '__proto__'))
      ctx.addIssue({ code: 'custom', path: ['__proto__'], input: v, message: 'not a label name: a JavaScript object cannot hold it' });
  },
  z.record(z.string().max(63), z.string().max(256)).refine((r) => Object.keys(r).length <= 32, 'at most 32 labels'),
);

/**
 * Every string and list has a bound: the intent travels in the workflow's input and in the
 * activity calls that carry it (on each cluster poll), and `priority` becomes a search attribute,
 * so an unbounded field would fail at Temporal's payload and search-attribute limits after
 * `submit` had accepted it (chaos suite, test/chaos/intents.test.ts).
 */
export const Intent = z
  .strictObject({
    kind: WorkloadKind,
    name,
    attribution: plain(Attribution),
    caps: plain(Caps).default({}),
    priority: z.string().min(1).max(63).default('normal'),
    riskClass: RiskClass.default('low'),
    tools: z.array(z.string().min(1).max(128)).max(64).default([]),
    resources: plain(Resources).default({ gpus: 0, sharing: 'exclusive' }),
    simulation: plain(Simulation).optional(),
    labels: Labels.default({}),
  })
  .superRefine(refuseControlCharacters);
export type Intent = z.infer<typeof Intent>;
/** What a caller writes: defaults not applied yet. */
export type IntentInput = z.input<typeof Intent>;

export interface FieldError {
  path: string;
  message: string;
}

export type ParseResult<T> = { ok: true; value: T } | { ok: false; errors: FieldError[] };

/** Turns zod issues into `path: message` pairs a person can act on. */
export function fieldErrors(error: z.ZodError): FieldError[] {
  return error.issues.map((issue) => ({
    path: issue.path.length === 0 ? '(root)' : issue.path.map(String).join('.'),
    message: issue.message,
  }));
}

export function validate<T>(schema: z.ZodType<T>, input: unknown): ParseResult<T> {
  const result = schema.safeParse(input);
  return result.success ? { ok: true, value: result.data } : { ok: false, errors: fieldErrors(result.error) };
}

/** Parses an intent document, YAML or JSON (JSON is YAML). */
export function parseIntentText(text: string): ParseResult<Intent> {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    return { ok: false, errors: [{ path: '(document)', message: `not valid YAML or JSON: ${(err as Error).message}` }] };
  }
  return validate(Intent, doc);
}

// A missing field reads "required" rather than zod's "expected string, received undefined".
z.config({
  customError: (issue) => (issue.code === 'invalid_type' && issue.input === undefined ? 'required' : undefined),
});
