import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type FieldError, Intent, parseIntentText, validate } from '../../governance/intent';
import { stringify } from 'yaml';
import { defaultConfigDir } from '../../config/load';
import { anIntent } from '../support/builders';

const example = (file: string) => readFileSync(join(defaultConfigDir, 'examples', file), 'utf8');

function errorsOf(text: string): FieldError[] {
  const r = parseIntentText(text);
  if (r.ok) throw new Error(`expected ${JSON.stringify(text)} to be refused, got ${JSON.stringify(r.value)}`);
  return r.errors;
}

/** A valid intent as a plain object, to break one field of. */
const valid = () =>
  anIntent().toInput() as Record<string, unknown> & { attribution: Record<string, unknown>; resources: Record<string, unknown>; caps: Record<string, unknown> };

describe('parseIntentText', () => {
  it('reads a YAML intent, with an unquoted timestamp deadline normalised to ISO UTC', () => {
    const r = parseIntentText(example('llama-ft-nightly.yaml'));
    expect(r).toEqual({
      ok: true,
      value: {
        kind: 'training',
        name: 'llama-ft-nightly',
        attribution: { tenant: 'acme', team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' },
        caps: {
          maxContextTokens: 32000,
          maxSteps: 1,
          maxToolCalls: 0,
          maxTokens: 2_000_000,
          maxUsd: 250,
          maxGpuHours: 64,
          deadline: '2099-12-01T00:00:00.000Z',
        },
        priority: 'normal',
        riskClass: 'low',
        tools: [],
        resources: { gpus: 8, gpuType: 'H100', sharing: 'exclusive' },
        simulation: { durationSeconds: 5400, tokensPerSecond: 2000 },
        labels: {},
      },
    });
  });

  it.each(readdirSync(join(defaultConfigDir, 'examples')).filter((f) => f.endsWith('.yaml') && f !== 'bad-intent.yaml'))(
    'the shipped example %s is a valid intent',
    (file) => {
      const r = parseIntentText(example(file));
      expect(r.ok ? 'ok' : r.errors).toBe('ok');
    },
  );

  it('reads a gang with a topology and a share with its size', () => {
    const gang = parseIntentText(example('pretrain-gang.yaml'));
    expect(gang.ok && gang.value.resources).toEqual({ gpus: 32, gpuType: 'H100', sharing: 'exclusive', topology: { level: 'rack', mode: 'required' } });
    const share = parseIntentText(example('embeddings-share.yaml'));
    expect(share.ok && share.value.resources).toEqual({ gpus: 1, gpuType: 'A100', sharing: 'mps', gpuMilli: 250 });
  });

  it('reads the same intent written as JSON to the same value', () => {
    const yaml = parseIntentText(example('llama-ft-nightly.yaml'));
    const asJson = JSON.stringify({
      ...valid(),
      name: 'llama-ft-nightly',
      caps: { maxContextTokens: 32000, maxSteps: 1, maxToolCalls: 0, maxTokens: 2_000_000, maxUsd: 250, maxGpuHours: 64, deadline: '2099-12-01T00:00:00Z' },
      resources: { gpus: 8, gpuType: 'H100', sharing: 'exclusive' },
      simulation: { durationSeconds: 5400, tokensPerSecond: 2000 },
    });
    expect(parseIntentText(asJson)).toEqual(yaml);
  });

  it('fills in the defaults of a minimal intent', () => {
    const r = parseIntentText('kind: agent\nname: a\nattribution: { tenant: t, team: x, project: p, model: m, useCase: u }\n');
    expect(r).toEqual({
      ok: true,
      value: {
        kind: 'agent',
        name: 'a',
        attribution: { tenant: 't', team: 'x', project: 'p', model: 'm', useCase: 'u' },
        caps: {},
        priority: 'normal',
        riskClass: 'low',
        tools: [],
        resources: { gpus: 0, sharing: 'exclusive' },
        labels: {},
      },
    });
  });

  it('parses every shipped example except the one that is malformed on purpose', () => {
    for (const f of [
      'chat-inference.yaml',
      'globex-finetune.yaml',
      'llama-ft-nightly.yaml',
      'ranker-eval-batch.yaml',
      'support-agent.yaml',
      'too-big-pretrain.yaml',
    ]) {
      expect(parseIntentText(example(f)).ok, f).toBe(true);
    }
  });

  it.each(['tenant', 'team', 'project', 'model', 'useCase'])('a missing attribution.%s is reported as required', (field) => {
    const doc = valid();
    delete doc.attribution[field];
    expect(errorsOf(stringify(doc))).toEqual([{ path: `attribution.${field}`, message: 'required' }]);
  });

  it('a missing attribution is reported as required', () => {
    const doc = valid();
    delete (doc as Record<string, unknown>).attribution;
    expect(errorsOf(stringify(doc))).toEqual([{ path: 'attribution', message: 'required' }]);
  });

  it.each<{ name: string; change: (d: ReturnType<typeof valid>) => void; want: FieldError[] }>([
    {
      name: 'GPUs without a GPU type',
      change: (d) => void (d.resources = { gpus: 2 }),
      want: [{ path: 'resources.gpuType', message: 'gpuType is required when gpus > 0' }],
    },
    {
      name: 'an MPS share without its size',
      change: (d) => void (d.resources = { gpus: 1, gpuType: 'A100', sharing: 'mps' }),
      want: [{ path: 'resources.gpuMilli', message: 'required with sharing mps: the share of the GPU in thousandths, 1–999' }],
    },
    {
      name: 'a time-slice share of two GPUs',
      change: (d) => void (d.resources = { gpus: 2, gpuType: 'A100', sharing: 'timeslice', gpuMilli: 300 }),
      want: [{ path: 'resources.gpus', message: 'sharing timeslice is a share of one GPU: gpus must be 1 (ask for gpuMilli thousandths of it)' }],
    },
    {
      name: 'a share of a whole GPU',
      change: (d) => void (d.resources = { gpus: 1, gpuType: 'A100', sharing: 'exclusive', gpuMilli: 300 }),
      want: [{ path: 'resources.gpuMilli', message: 'gpuMilli is a share of one GPU through mps or timeslice, not with sharing exclusive' }],
    },
    {
      name: 'a share of 1000 thousandths',
      change: (d) => void (d.resources = { gpus: 1, gpuType: 'A100', sharing: 'mps', gpuMilli: 1000 }),
      want: [{ path: 'resources.gpuMilli', message: 'Too big: expected number to be <=999' }],
    },
    {
      name: 'a topology level that does not exist',
      change: (d) => void (d.resources = { gpus: 16, gpuType: 'H100', topology: { level: 'zone', mode: 'required' } }),
      want: [{ path: 'resources.topology.level', message: 'Invalid option: expected one of "node"|"nvlink"|"rack"|"block"|"cluster"' }],
    },
    {
      name: 'a topology for hosted work',
      change: (d) => void (d.resources = { gpus: 0, topology: { level: 'rack', mode: 'preferred' } }),
      want: [{ path: 'resources.topology', message: 'topology applies to GPU work only (gpus > 0)' }],
    },
    {
      name: 'a sharing mode that does not exist',
      change: (d) => void (d.resources.sharing = 'shared'),
      want: [{ path: 'resources.sharing', message: 'exclusive | mps | timeslice | mig:<profile> such as mig:1g.10gb' }],
    },
    {
      name: 'a MIG sharing mode without a well-formed profile',
      change: (d) => void (d.resources.sharing = 'mig:big'),
      want: [{ path: 'resources.sharing', message: 'exclusive | mps | timeslice | mig:<profile> such as mig:1g.10gb' }],
    },
    { name: 'an unknown top-level key', change: (d) => void (d.gpu = 2), want: [{ path: '(root)', message: 'Unrecognized key: "gpu"' }] },
    { name: 'an unknown cap', change: (d) => void (d.caps.maxDollars = 5), want: [{ path: 'caps', message: 'Unrecognized key: "maxDollars"' }] },
    {
      name: 'an unknown attribution field',
      change: (d) => void (d.attribution.owner = 'bob'),
      want: [{ path: 'attribution', message: 'Unrecognized key: "owner"' }],
    },
    { name: 'an unknown resources field', change: (d) => void (d.resources.cpus = 4), want: [{ path: 'resources', message: 'Unrecognized key: "cpus"' }] },
    {
      name: 'a deadline without a time zone',
      change: (d) => void (d.caps.deadline = '2099-12-01T00:00:00'),
      want: [{ path: 'caps.deadline', message: 'Invalid ISO datetime' }],
    },
  ])('refuses $name, naming the path', ({ change, want }) => {
    const doc = valid();
    change(doc);
    expect(errorsOf(stringify(doc))).toEqual(want);
  });

  // Found by the chaos suite (test/chaos/intents.test.ts): each of these passed submit, then failed
  // in PostgreSQL (jsonb refuses a lone surrogate), at Temporal's limits, or lost the label silently.
  it.each<{ name: string; change: (d: ReturnType<typeof valid>) => void; want: FieldError[] }>([
    {
      name: 'a lone surrogate in the model',
      change: (d) => void (d.attribution.model = 'llama\ud800'),
      want: [{ path: 'attribution.model', message: 'must be well-formed Unicode: a lone surrogate (\\ud800 at 5)' }],
    },
    {
      name: 'a lone surrogate in a label key',
      change: (d) => void (d.labels = { ['\udc00k']: 'v' }),
      want: [{ path: 'labels.\udc00k', message: 'key must be well-formed Unicode: a lone surrogate (\\udc00 at 0)' }],
    },
    {
      name: 'a "__proto__" label',
      change: (d) => void (d.labels = JSON.parse('{"__proto__": "x", "team": "search"}')),
      want: [{ path: 'labels.__proto__', message: 'not a label name: a JavaScript object cannot hold it' }],
    },
    {
      name: 'a priority too long for a search attribute',
      change: (d) => void (d.priority = 'p'.repeat(64)),
      want: [{ path: 'priority', message: 'Too big: expected string to have <=63 characters' }],
    },
    {
      name: 'a tool name of 129 characters',
      change: (d) => void (d.tools = ['t'.repeat(129)]),
      want: [{ path: 'tools.0', message: 'Too big: expected string to have <=128 characters' }],
    },
    {
      name: '65 tools',
      change: (d) => void (d.tools = Array.from({ length: 65 }, (_, i) => `t${i}`)),
      want: [{ path: 'tools', message: 'Too big: expected array to have <=64 items' }],
    },
    {
      name: 'a GPU type of 64 characters',
      change: (d) => void (d.resources.gpuType = 'G'.repeat(64)),
      want: [{ path: 'resources.gpuType', message: 'Too big: expected string to have <=63 characters' }],
    },
    {
      name: 'a label value of 257 characters',
      change: (d) => void (d.labels = { team: 'v'.repeat(257) }),
      want: [{ path: 'labels.team', message: 'Too big: expected string to have <=256 characters' }],
    },
    {
      name: '33 labels',
      change: (d) => void (d.labels = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`l${i}`, 'v']))),
      want: [{ path: 'labels', message: 'at most 32 labels' }],
    },
  ])('refuses $name, through the SDK and as JSON text', ({ change, want }) => {
    const doc = valid();
    change(doc);
    expect(validate(Intent, doc)).toEqual({ ok: false, errors: want });
    expect(errorsOf(JSON.stringify(doc))).toEqual(want);
  });

  it.each([
    { name: 'a Map of caps', caps: new Map([['maxUsd', 5]]), want: 'expected an object of fields, received Map' },
    { name: 'a Date for caps', caps: new Date('2099-12-01T00:00:00Z'), want: 'expected an object of fields, received Date' },
    {
      name: 'a class instance for caps',
      caps: new (class Limits {
        maxUsd = 5;
      })(),
      want: 'expected an object of fields, received Limits',
    },
  ])('refuses $name instead of taking it as no caps (the SDK; JSON and YAML give plain objects)', ({ caps, want }) => {
    expect(validate(Intent, { ...valid(), caps })).toEqual({ ok: false, errors: [{ path: 'caps', message: want }] });
  });

  it('keeps surrogate pairs, labels named like Object methods, and an empty label value', () => {
    const doc = valid();
    doc.attribution.model = 'llama-\u{1F999}';
    doc.labels = { constructor: 'c', toString: '', hasOwnProperty: 'h' };
    const r = validate(Intent, doc);
    expect(r.ok && [r.value.attribution.model, r.value.labels]).toEqual(['llama-\u{1F999}', { constructor: 'c', toString: '', hasOwnProperty: 'h' }]);
  });

  it('refuses a negative cap and a fractional GPU count, naming each path', () => {
    const doc = valid();
    doc.caps.maxUsd = -5;
    doc.resources.gpus = 1.5;
    expect(errorsOf(stringify(doc)).map((e) => e.path)).toEqual(['caps.maxUsd', 'resources.gpus']);
  });

  it('normalises a deadline with an offset to UTC', () => {
    const doc = valid();
    doc.caps.deadline = '2099-12-01T02:00:00+02:00';
    const r = parseIntentText(JSON.stringify(doc));
    expect(r.ok && r.value.caps.deadline).toBe('2099-12-01T00:00:00.000Z');
  });

  it.each([
    { name: 'an unclosed flow sequence', text: 'kind: [training\nname: x\n' },
    { name: 'a tab-indented mapping', text: 'kind: training\nattribution:\n\ttenant: acme\n' },
    { name: 'truncated JSON', text: '{"kind": "training", "name": ' },
  ])('refuses malformed YAML ($name) as a whole document', ({ text }) => {
    const errors = errorsOf(text);
    expect(errors).toHaveLength(1);
    expect(errors[0]!.path).toBe('(document)');
    expect(errors[0]!.message).toMatch(/^not valid YAML or JSON: /);
  });

  it('refuses an empty document at the root', () => {
    expect(errorsOf('').map((e) => e.path)).toEqual(['(root)']);
  });

  it('lists every error of the malformed example at once', () => {
    expect(errorsOf(example('bad-intent.yaml')).map((e) => e.path)).toEqual(['name', 'attribution.team', 'caps.maxUsd', 'resources.gpuType']);
  });
});
