import fc from 'fast-check';
import type { WorkloadKind } from '../../governance/intent';

/**
 * Generated intents for the chaos suite: valid ones, built to satisfy governance/intent.ts, and
 * invalid ones, each a valid intent with one thing broken. An invalid case says which field it
 * broke (`want`), so the test can check that the refusal names it.
 */

/** What the generators draw known names from (the config the worker runs with). */
export interface Known {
  tenant: string;
  priorities: string[];
  gpuTypes: string[];
  migProfiles: string[];
  tools: string[];
  /** Each tool's risk class, for plausible intents. */
  toolRisk: Record<string, string>;
  /** The policy's ceilings per kind, for plausible intents. */
  limits: Record<
    string,
    {
      maxContextTokens: number;
      maxSteps: number;
      maxToolCalls: number;
      maxTokens: number;
      maxUsd: number;
      maxGpuHours: number;
      maxGpusPerTask: number;
      maxRiskClass: string;
    }
  >;
}

export type Doc = Record<string, any>;

/** A refusal must name `path` (or a field under it); `mentions` is a key the message must quote. */
export interface Want {
  path: string;
  mentions?: string;
}

export type IntentCase = { valid: true; doc: Doc } | { valid: false; doc: unknown; want: Want; mutation: string };

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
/** Control characters the intent refuses anywhere (tab, newline and carriage return are text). */
const CONTROL_CODES = [...Array.from({ length: 9 }, (_, i) => i), 0x0b, 0x0c, ...Array.from({ length: 18 }, (_, i) => 0x0e + i), 0x7f];
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g;

// ---------------------------------------------------------------------------------------------
// Valid intents

const nameArb = fc.oneof(
  { weight: 6, arbitrary: fc.stringMatching(/^[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?$/) },
  { weight: 1, arbitrary: fc.stringMatching(/^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/) },
  { weight: 1, arbitrary: fc.constantFrom('a', '0', 'a'.repeat(63), `x${'.-_'.repeat(20)}y`) },
);

/** Well-formed text without control characters: ASCII, any grapheme, any code point, exactly `max` long. */
const textArb = (max: number) =>
  fc
    .oneof(
      { weight: 4, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: Math.min(max, 24) }) },
      { weight: 2, arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: Math.min(max, 16) }) },
      { weight: 1, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: Math.floor(max / 2) }) },
      {
        weight: 1,
        arbitrary: fc.constantFrom('m'.repeat(max), '\u{1F600}'.repeat(max / 2), 'tab\tand\nnewline\r', 'quote\'"\\', '$1::jsonb; DROP TABLE tasks'),
      },
    )
    .map((s) => s.replace(CONTROL, ' '))
    .filter((s) => s.length >= 1 && s.length <= max);

/** Numbers across the whole range a field allows, extremes included. */
const posInt = fc.oneof(fc.integer({ min: 1, max: 1_000_000 }), fc.constantFrom(1, 2 ** 31, MAX_SAFE), fc.integer({ min: 1, max: MAX_SAFE }));
const nonNegInt = fc.oneof(fc.constant(0), posInt);
const posReal = fc.oneof(
  fc.double({ min: 0.01, max: 10_000, noNaN: true }),
  fc.constantFrom(Number.MIN_VALUE, 1e-9, 1e15, 1e300, Number.MAX_VALUE),
  fc.double({ min: Number.MIN_VALUE, max: Number.MAX_VALUE, noNaN: true, noDefaultInfinity: true }),
);
const nonNegReal = fc.oneof(fc.constantFrom(0, -0), posReal);

const deadlineArb = fc.oneof(
  fc.date({ min: new Date('2000-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString()),
  fc.date({ min: new Date('0000-01-01T00:00:00Z'), max: new Date('9999-12-31T23:59:59Z'), noInvalidDate: true }).map((d) => d.toISOString()),
  fc.constantFrom('2099-12-01T00:00:00+05:30', '2099-12-01T00:00:00-12:00', '2000-02-29T23:59:59.999Z', '1970-01-01T00:00:00Z'),
  // YAML reads an unquoted timestamp as a Date.
  fc.date({ min: new Date('2000-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }),
);

const capsArb = fc.record(
  {
    maxContextTokens: posInt,
    maxSteps: posInt,
    maxToolCalls: nonNegInt,
    maxTokens: posInt,
    maxUsd: posReal,
    maxGpuHours: nonNegReal,
    deadline: deadlineArb,
  },
  { requiredKeys: [] },
);

const topologyArb = fc.record({ level: fc.constantFrom('node', 'nvlink', 'rack', 'block', 'cluster'), mode: fc.constantFrom('required', 'preferred') });

function resourcesArb(known: Known, gpuHeavy: boolean) {
  const gpuType = fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...known.gpuTypes) }, { weight: 1, arbitrary: textArb(63) });
  const none = fc.record(
    { gpus: fc.constant(0), gpuType, sharing: fc.constantFrom('exclusive', 'timeslice', 'mps', `mig:${known.migProfiles[0]}`) },
    { requiredKeys: ['gpus'] },
  );
  const gang = fc.record(
    { gpus: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.constantFrom(2 ** 31, MAX_SAFE)), gpuType, sharing: fc.constant('exclusive'), topology: topologyArb },
    { requiredKeys: ['gpus', 'gpuType'] },
  );
  const share = fc.record({ gpus: fc.constant(1), gpuType, sharing: fc.constantFrom('mps', 'timeslice'), gpuMilli: fc.integer({ min: 1, max: 999 }) });
  const mig = fc.record({
    gpus: fc.integer({ min: 1, max: 16 }),
    gpuType,
    sharing: fc.oneof(
      fc.constantFrom(...known.migProfiles.map((p) => `mig:${p}`)),
      fc.tuple(fc.nat(99), fc.nat(999)).map(([g, m]) => `mig:${g}g.${m}gb`),
    ),
  });
  return gpuHeavy
    ? fc.oneof({ weight: 1, arbitrary: none }, { weight: 4, arbitrary: gang }, { weight: 2, arbitrary: share }, { weight: 2, arbitrary: mig })
    : fc.oneof({ weight: 6, arbitrary: none }, { weight: 1, arbitrary: gang }, { weight: 1, arbitrary: share }, { weight: 1, arbitrary: mig });
}

const simulationArb = fc.record(
  {
    durationSeconds: fc.oneof(fc.double({ min: 0.001, max: 3600, noNaN: true }), fc.constantFrom(Number.MIN_VALUE, 30 * 24 * 3600)),
    tokensPerSecond: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 1e6, noNaN: true }), fc.constantFrom(1e300)),
    failAfterSeconds: posReal,
  },
  { requiredKeys: ['durationSeconds'] },
);

const labelsArb = fc.dictionary(
  // fast-check's strings lean towards `__proto__` now and then: the one label name the intent refuses.
  fc
    .oneof(fc.stringMatching(/^[a-z][a-z0-9./-]{0,20}$/), textArb(63), fc.constantFrom('constructor', 'toString', 'hasOwnProperty', 'valueOf'))
    .filter((k) => k !== '__proto__'),
  fc.oneof(fc.constant(''), textArb(256)),
  { maxKeys: 8 },
);

const RISKS = ['low', 'medium', 'high', 'critical'];

/**
 * A valid intent the policy could admit: caps under the kind's ceilings, a deadline ahead, known
 * priorities, GPU types and tools of allowed risk. The values are still drawn from the whole of
 * each range (a maxUsd of 5e-324, a model name in any script), so admission, reservation,
 * dispatch and cancel see them too, not only the rejection path.
 */
function plausibleIntent(kind: WorkloadKind, known: Known): fc.Arbitrary<Doc> {
  const l = known.limits[kind]!;
  const risks = RISKS.slice(0, RISKS.indexOf(l.maxRiskClass) + 1);
  const upTo = (max: number) => fc.oneof(fc.integer({ min: 1, max: Math.max(1, Math.min(max, 1000)) }), fc.constant(Math.max(1, max)));
  const caps = fc.record(
    {
      maxContextTokens: upTo(l.maxContextTokens),
      maxSteps: upTo(l.maxSteps),
      ...(l.maxToolCalls > 0 ? { maxToolCalls: fc.integer({ min: 0, max: l.maxToolCalls }) } : {}),
      maxTokens: upTo(l.maxTokens),
      maxUsd: fc.oneof(fc.double({ min: 0.001, max: l.maxUsd, noNaN: true }), fc.constantFrom(Number.MIN_VALUE, l.maxUsd)),
      maxGpuHours: fc.oneof(fc.double({ min: 0, max: l.maxGpuHours, noNaN: true }), fc.constant(l.maxGpuHours)),
      deadline: fc.date({ min: new Date('2090-01-01T00:00:00Z'), max: new Date('9999-12-31T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString()),
    },
    { requiredKeys: [] },
  );
  const gpuType = fc.constantFrom(...known.gpuTypes);
  const resources =
    l.maxGpusPerTask === 0
      ? fc.constant({ gpus: 0 })
      : fc.oneof(
          fc.constant({ gpus: 0 }),
          fc.record({ gpus: fc.integer({ min: 1, max: Math.min(l.maxGpusPerTask, 8) }), gpuType, sharing: fc.constant('exclusive') }),
          fc.record({ gpus: fc.constant(1), gpuType, sharing: fc.constantFrom('mps', 'timeslice'), gpuMilli: fc.integer({ min: 1, max: 999 }) }),
          fc.record({
            gpus: fc.integer({ min: 1, max: Math.min(l.maxGpusPerTask, 4) }),
            gpuType,
            sharing: fc.constantFrom(...known.migProfiles.map((p) => `mig:${p}`)),
          }),
        );
  const tools = known.tools.filter((t) => risks.includes(known.toolRisk[t] ?? 'critical'));
  return fc.record(
    {
      kind: fc.constant(kind),
      name: nameArb,
      attribution: fc.record({ tenant: fc.constant(known.tenant), team: nameArb, project: nameArb, model: textArb(128), useCase: nameArb }),
      caps,
      priority: fc.constantFrom(...known.priorities),
      riskClass: fc.constantFrom(...risks),
      tools: l.maxToolCalls > 0 && tools.length > 0 ? fc.subarray(tools) : fc.constant([]),
      resources,
      // Short simulated jobs, so an admitted one may also run to its end before it is cancelled.
      simulation: fc.record({
        durationSeconds: fc.double({ min: 0.001, max: 600, noNaN: true }),
        tokensPerSecond: fc.double({ min: 0, max: 1000, noNaN: true }),
      }),
      labels: labelsArb,
    },
    { requiredKeys: ['kind', 'name', 'attribution'] },
  );
}

/** Valid intents to really start: mostly ones the policy could admit, the rest any valid intent. */
export function startableIntent(kind: WorkloadKind, known: Known): fc.Arbitrary<Doc> {
  return fc.oneof({ weight: 3, arbitrary: plausibleIntent(kind, known) }, { weight: 2, arbitrary: validIntent(kind, known) });
}

/** A valid intent of `kind`: the required fields, and any of the optional ones. */
export function validIntent(kind: WorkloadKind, known: Known): fc.Arbitrary<Doc> {
  const gpuHeavy = kind === 'training' || kind === 'finetune' || kind === 'batch';
  return fc.record(
    {
      kind: fc.constant(kind),
      name: nameArb,
      attribution: fc.record({
        tenant: fc.oneof(
          { weight: 4, arbitrary: fc.constant(known.tenant) },
          { weight: 1, arbitrary: fc.stringMatching(/^[a-z0-9]{1,20}$/).map((s) => `${known.tenant}-${s}`) },
        ),
        team: nameArb,
        project: nameArb,
        model: textArb(128),
        useCase: nameArb,
      }),
      caps: capsArb,
      priority: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...known.priorities) }, { weight: 1, arbitrary: textArb(63) }),
      riskClass: fc.constantFrom('low', 'medium', 'high', 'critical'),
      tools: fc.array(fc.oneof(fc.constantFrom(...known.tools), textArb(128)), { maxLength: 6 }),
      resources: resourcesArb(known, gpuHeavy),
      simulation: simulationArb,
      labels: labelsArb,
    },
    { requiredKeys: ['kind', 'name', 'attribution'] },
  );
}

// ---------------------------------------------------------------------------------------------
// Invalid intents: one thing broken

/** What a field holds, which decides how it can be broken. */
type FieldType =
  'name' | 'text' | 'enum' | 'posInt' | 'nonNegInt' | 'pos' | 'nonNeg' | 'duration' | 'milli' | 'datetime' | 'sharing' | 'object' | 'record' | 'array';

interface Slot {
  path: (string | number)[];
  type: FieldType;
  /** Longest string the field takes. */
  max?: number;
  /** The empty string is a value (label values). */
  emptyOk?: boolean;
  required: boolean;
}

const pathText = (p: (string | number)[]) => (p.length === 0 ? '(root)' : p.map(String).join('.'));

/** The fields present in a valid intent, with their types. */
function slotsOf(doc: Doc): Slot[] {
  const s: Slot[] = [
    { path: [], type: 'object', required: true },
    { path: ['kind'], type: 'enum', required: true },
    { path: ['name'], type: 'name', required: true },
    { path: ['attribution'], type: 'object', required: true },
    ...['tenant', 'team', 'project', 'useCase'].map((k): Slot => ({ path: ['attribution', k], type: 'name', required: true })),
    { path: ['attribution', 'model'], type: 'text', max: 128, required: true },
  ];
  const opt = (path: (string | number)[], type: FieldType, max?: number, required = false) => {
    let v: any = doc;
    for (const k of path) v = v?.[k];
    if (v !== undefined) s.push({ path, type, required, ...(max !== undefined ? { max } : {}) });
  };
  opt(['caps'], 'object');
  for (const k of ['maxContextTokens', 'maxSteps', 'maxTokens']) opt(['caps', k], 'posInt');
  opt(['caps', 'maxToolCalls'], 'nonNegInt');
  opt(['caps', 'maxUsd'], 'pos');
  opt(['caps', 'maxGpuHours'], 'nonNeg');
  opt(['caps', 'deadline'], 'datetime');
  opt(['priority'], 'text', 63);
  opt(['riskClass'], 'enum');
  opt(['tools'], 'array');
  (doc.tools as string[] | undefined)?.forEach((_, i) => opt(['tools', i], 'text', 128));
  opt(['resources'], 'object');
  opt(['resources', 'gpus'], 'nonNegInt', undefined, true);
  opt(['resources', 'gpuType'], 'text', 63, (doc.resources?.gpus ?? 0) > 0);
  opt(['resources', 'sharing'], 'sharing');
  opt(['resources', 'gpuMilli'], 'milli', undefined, doc.resources?.gpuMilli !== undefined && doc.resources?.gpus > 0);
  opt(['resources', 'topology'], 'object');
  opt(['resources', 'topology', 'level'], 'enum', undefined, true);
  opt(['resources', 'topology', 'mode'], 'enum', undefined, true);
  opt(['simulation'], 'object');
  opt(['simulation', 'durationSeconds'], 'duration', undefined, true);
  opt(['simulation', 'tokensPerSecond'], 'nonNeg');
  opt(['simulation', 'failAfterSeconds'], 'pos');
  opt(['labels'], 'record');
  for (const k of Object.keys(doc.labels ?? {})) s.push({ path: ['labels', k], type: 'text', max: 256, required: false, emptyOk: true });
  return s;
}

/** A structured clone that keeps Dates (the YAML deadline) and own `__proto__` keys. */
function clone<T>(v: T): T {
  return structuredClone(v);
}

function setAt(doc: Doc, path: (string | number)[], value: unknown): unknown {
  if (path.length === 0) return value;
  let o: any = doc;
  for (const k of path.slice(0, -1)) o = o[k];
  // defineProperty: an own key even for "__proto__", as JSON.parse makes it.
  Object.defineProperty(o, path[path.length - 1]!, { value, enumerable: true, writable: true, configurable: true });
  return doc;
}

function deleteAt(doc: Doc, path: (string | number)[]): Doc {
  let o: any = doc;
  for (const k of path.slice(0, -1)) o = o[k];
  delete o[path[path.length - 1]!];
  return doc;
}

/** An object or array nested `depth` deep. */
export function nested(depth: number, array: boolean): unknown {
  let v: unknown = 'bottom';
  for (let i = 0; i < depth; i++) v = array ? [v] : { deeper: v };
  return v;
}

/** Deep enough, now and then, to overflow the stack of any recursive walker (about 10,000 frames). */
const deepArb = fc
  .tuple(fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 100, max: 2_000 }) }, { weight: 1, arbitrary: fc.constant(20_000) }), fc.boolean())
  .map(([d, a]) => nested(d, a));
/** Longer than any bound; now and then past gRPC's 4 MiB message limit. */
const hugeArb = fc
  .oneof({ weight: 9, arbitrary: fc.integer({ min: 1_000, max: 100_000 }) }, { weight: 1, arbitrary: fc.constant(4 * 1024 * 1024 + 1) })
  .map((n) => 'x'.repeat(n));
const controlArb = fc.constantFrom(...CONTROL_CODES).map((c) => String.fromCharCode(c));
const loneSurrogateArb = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));

/** Values of the wrong JSON/JavaScript type for a field of `type`. */
function wrongTypeArb(type: FieldType): fc.Arbitrary<unknown> {
  const any = fc.constantFrom<unknown>(null, true, false, [], [1], {}, { value: 1 }, 0n);
  const num = fc.constantFrom<unknown>(0, 1, -1, 3.5, NaN, Infinity, -Infinity);
  const str = fc.constantFrom<unknown>('', '1', 'NaN', 'Infinity', '1e3', '0x10', ' 5', 'true');
  switch (type) {
    case 'name':
    case 'text':
    case 'enum':
    case 'sharing':
      return fc.oneof(any, num, fc.constant(new Date(0)));
    case 'datetime':
      return fc.oneof(any, num);
    case 'object':
    case 'record':
      return fc.oneof(fc.constantFrom<unknown>(null, true, [], [{}], 'object', new Date(0)), num);
    case 'array':
      return fc.oneof(fc.constantFrom<unknown>(null, true, {}, { 0: 'search.web', length: 1 }, 'search.web'), num);
    default:
      return fc.oneof(any, str, fc.constantFrom<unknown>(NaN, Infinity, -Infinity));
  }
}

/** Values of the right type, out of the field's range. */
function outOfRangeArb(type: FieldType, max = 0, emptyOk = false): fc.Arbitrary<unknown> {
  switch (type) {
    case 'posInt':
      return fc.oneof(
        fc.constantFrom(0, -0, -1, 0.5, 1.000001, MAX_SAFE + 1, 2 ** 64, 1e308),
        fc.integer({ min: -MAX_SAFE, max: 0 }),
        fc.double({ min: 1.1, max: 1e6, noNaN: true }).filter((x) => !Number.isInteger(x)),
      );
    case 'nonNegInt':
      return fc.oneof(fc.constantFrom(-1, 0.5, MAX_SAFE + 1, 2 ** 64, -Number.MIN_VALUE), fc.integer({ min: -MAX_SAFE, max: -1 }));
    case 'pos':
      return fc.oneof(
        fc.constantFrom(0, -0, -1, -Number.MIN_VALUE, -Number.MAX_VALUE),
        fc.double({ max: -Number.MIN_VALUE, noNaN: true, noDefaultInfinity: true }),
      );
    case 'nonNeg':
      return fc.oneof(fc.constantFrom(-1, -Number.MIN_VALUE, -Number.MAX_VALUE), fc.double({ max: -Number.MIN_VALUE, noNaN: true, noDefaultInfinity: true }));
    case 'duration':
      return fc.constantFrom(0, -1, 30 * 24 * 3600 + 1, 1e12, Number.MAX_VALUE);
    case 'milli':
      return fc.constantFrom(0, -1, 1000, 999.5, 10_000);
    case 'datetime':
      return fc.constantFrom(
        '2024-02-30T00:00:00Z',
        '2023-02-29T00:00:00Z',
        'tomorrow',
        '2024-01-01',
        '2024-01-01T00:00:00',
        '2024-13-01T00:00:00Z',
        '2024-01-01T25:00:00Z',
        '+275760-09-13T00:00:00Z',
        '',
        new Date(NaN),
      );
    case 'sharing':
      return fc.constantFrom('', 'MPS', 'shared', 'mig', 'mig:', 'mig:1g', 'mig:1g.10GB', 'mig:1g.10gb ', 'exclusive\n', 'timeslice,mps');
    case 'enum':
      return fc.constantFrom('', 'unknown', 'AGENT', ' agent', 'agent ', 'Low', 'node.', 'required?', 'training,agent', 'ａｇｅｎｔ');
    case 'name':
      return fc.oneof(
        fc.constantFrom('', 'A', 'Acme', '-a', 'a-', '.a', 'a_', 'a b', 'a/b', 'a:b', 'é', 'a\u200bb', 'a'.repeat(64), '../etc', 'a\tb'),
        hugeArb,
      );
    case 'text':
      return fc.oneof(
        ...(emptyOk ? [] : [fc.constant('')]),
        fc.integer({ min: max + 1, max: max + 1000 }).map((n) => 'y'.repeat(n)),
        hugeArb,
      );
    default:
      return fc.constant(undefined);
  }
}

const isString = (t: FieldType) => t === 'name' || t === 'text' || t === 'enum' || t === 'sharing' || t === 'datetime';
const isObject = (t: FieldType) => t === 'object';

/** Keys no strict object of the intent has. */
const unknownKeyArb = fc.oneof(
  fc.constantFrom(
    '__proto__',
    'constructor',
    'prototype',
    'toString',
    'hasOwnProperty',
    '__defineGetter__',
    'gpu',
    'Kind',
    'kind ',
    'maxDollars',
    'cpus',
    '',
    '$where',
    'x'.repeat(10_000),
  ),
  fc.stringMatching(/^[A-Z_$][A-Za-z0-9_$]{0,12}$/),
);
const anyValueArb = fc.oneof(fc.jsonValue({ maxDepth: 3 }), deepArb, fc.constantFrom<unknown>({ polluted: true }, { isAdmin: true }, NaN, null));

type Mutation = { name: string; apply: (doc: Doc) => { doc: unknown; want: Want } };

/** One way to break a valid intent, chosen among its fields. */
function mutationArb(doc: Doc): fc.Arbitrary<Mutation> {
  const slots = slotsOf(doc);
  const strings = slots.filter((s) => isString(s.type) && s.path.length > 0);
  const objects = slots.filter((s) => isObject(s.type));
  const required = slots.filter((s) => s.required && s.path.length > 0);
  const scalars = slots.filter((s) => !['object', 'record', 'array'].includes(s.type));
  const at = (slot: Slot, value: unknown, mutation: string): fc.Arbitrary<Mutation> =>
    fc.constant({ name: mutation, apply: (d: Doc) => ({ doc: setAt(d, slot.path, value), want: { path: pathText(slot.path) } }) });
  const pick = <T>(xs: T[]) => fc.constantFrom(...xs);

  const options: fc.Arbitrary<Mutation>[] = [
    // A value of the wrong type anywhere, the whole document included.
    pick(slots).chain((slot) => wrongTypeArb(slot.type).chain((v) => at(slot, v, `wrong type at ${pathText(slot.path)}`))),
    // A number, string or date out of its range; an unknown enum value; an invalid name.
    pick(scalars).chain((slot) => outOfRangeArb(slot.type, slot.max, slot.emptyOk).chain((v) => at(slot, v, `out of range at ${pathText(slot.path)}`))),
    // A required field left out.
    pick(required).map((slot) => ({
      name: `missing ${pathText(slot.path)}`,
      apply: (d: Doc) => ({ doc: deleteAt(d, slot.path), want: { path: pathText(slot.path) } }),
    })),
    // A control character or a lone UTF-16 surrogate somewhere in a string.
    fc.tuple(pick(strings.filter((s) => s.type === 'text' || s.type === 'name')), fc.oneof(controlArb, loneSurrogateArb), fc.nat()).map(([slot, bad, pos]) => ({
      name: `${bad.charCodeAt(0) >= 0xd800 ? 'lone surrogate' : 'control character'} in ${pathText(slot.path)}`,
      apply: (d: Doc) => {
        let v: any = d;
        for (const k of slot.path) v = v[k];
        const s = String(v);
        const i = pos % (s.length + 1);
        return { doc: setAt(d, slot.path, s.slice(0, i) + bad + s.slice(i)), want: { path: pathText(slot.path) } };
      },
    })),
    // A key no strict object knows: typos, prototype-pollution keys, values nested thousands deep.
    fc.tuple(pick(objects), unknownKeyArb, anyValueArb).map(([slot, key, value]) => ({
      name: `unknown key ${JSON.stringify(key.slice(0, 20))} in ${pathText(slot.path)}`,
      apply: (d: Doc) => {
        let o: any = d;
        for (const k of slot.path) o = o[k];
        setAt(d, [...slot.path, key], value);
        return { doc: d, want: { path: pathText(slot.path), ...(key.length > 0 && key.length < 100 ? { mentions: key } : {}) } };
      },
    })),
    // A structure nested thousands deep where a scalar or a flat object belongs.
    fc.tuple(pick(slots.filter((s) => s.path.length > 0)), deepArb).map(([slot, deep]) => ({
      name: `deep nesting at ${pathText(slot.path)}`,
      apply: (d: Doc) => ({ doc: setAt(d, slot.path, deep), want: { path: pathText(slot.path) } }),
    })),
    // Labels: a prototype-pollution key, a control character in a key, a key or value too long, too many.
    fc
      .oneof(
        fc.constantFrom('__proto__', 'a\u0000b', '\u001b[31m', 'k'.repeat(64), 'a\ud800'),
        fc.constant(null), // a value too long
        fc.constant(undefined), // too many labels
      )
      .map((key) => ({
        name: key === null ? 'label value too long' : key === undefined ? 'too many labels' : `label key ${JSON.stringify(key.slice(0, 10))}`,
        apply: (d: Doc) => {
          const labels = (d.labels ?? {}) as Record<string, unknown>;
          d.labels = labels;
          if (key === null) return { doc: setAt(d, ['labels', 'long'], 'v'.repeat(257)), want: { path: 'labels.long' } };
          if (key === undefined) {
            for (let i = 0; i < 33; i++) labels[`l${i}`] = 'v';
            return { doc: d, want: { path: 'labels' } };
          }
          return { doc: setAt(d, ['labels', key], 'v'), want: { path: `labels.${key}` } };
        },
      })),
    // Too many tools.
    fc.constant({
      name: 'too many tools',
      apply: (d: Doc) => ({
        doc: setAt(
          d,
          ['tools'],
          Array.from({ length: 65 }, (_, i) => `t${i}`),
        ),
        want: { path: 'tools' },
      }),
    }),
    // GPU requests that contradict themselves.
    fc
      .constantFrom<[string, Doc, string]>(
        ['gpus without a type', { gpus: 2 }, 'resources.gpuType'],
        ['a share of two GPUs', { gpus: 2, gpuType: 'H100', sharing: 'mps', gpuMilli: 100 }, 'resources.gpus'],
        ['a share without its size', { gpus: 1, gpuType: 'H100', sharing: 'timeslice' }, 'resources.gpuMilli'],
        ['a size without a share', { gpus: 1, gpuType: 'H100', sharing: 'exclusive', gpuMilli: 500 }, 'resources.gpuMilli'],
        ['a topology without GPUs', { gpus: 0, topology: { level: 'rack', mode: 'required' } }, 'resources.topology'],
      )
      .map(([name, resources, path]) => ({ name, apply: (d: Doc) => ({ doc: setAt(d, ['resources'], resources), want: { path } }) })),
    // Not an intent at all.
    fc
      .constantFrom<unknown>(null, undefined, 0, NaN, 'kind: agent', [], true, Symbol('intent'), () => ({ kind: 'agent' }))
      .map((v) => ({
        name: 'not an object',
        apply: () => ({ doc: v, want: { path: '(root)' } }),
      })),
    // A Map is an object without the fields (its entries are not properties).
    fc.constant({ name: 'a Map of the fields', apply: (d: Doc) => ({ doc: new Map(Object.entries(d)), want: { path: 'kind' } }) }),
  ];
  return fc.oneof(...options);
}

/** Valid intents of `kind`, each broken one way. */
export function invalidIntent(kind: WorkloadKind, known: Known): fc.Arbitrary<Extract<IntentCase, { valid: false }>> {
  return validIntent(kind, known).chain((doc) =>
    mutationArb(doc).map((m) => {
      const { doc: broken, want } = m.apply(clone(doc));
      return { valid: false as const, doc: broken, want, mutation: m.name };
    }),
  );
}

/** Per kind: two valid intents for every three invalid ones. */
export function intentCase(kind: WorkloadKind, known: Known): fc.Arbitrary<IntentCase> {
  return fc.oneof(
    { weight: 2, arbitrary: validIntent(kind, known).map((doc): IntentCase => ({ valid: true, doc })) },
    { weight: 3, arbitrary: invalidIntent(kind, known) },
  );
}
