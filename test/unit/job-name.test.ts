import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { JOB_NAME_MAX, jobName } from '../../cluster/backend';

/** What Kubernetes accepts as a Job name, and as the hostname `<job>-<index>` of an Indexed Job's pods. */
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const isLabel = (s: string) => DNS1123_LABEL.test(s) && s.length <= 63;

/** Task ids as people and tools write them: any text, and ids made of the characters the slug folds. */
const taskIds = fc.oneof(
  fc.string({ minLength: 1, maxLength: 120 }),
  fc.string({ unit: fc.constantFrom('a', 'A', 'b', 'B', '-', '_', '.', '/', ' ', '1'), minLength: 1, maxLength: 90 }),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
);

describe('jobName', () => {
  it('gives every task id a DNS-1123 label that leaves room for a gang pod index', () => {
    fc.assert(
      fc.property(taskIds, (id) => {
        const name = jobName(id);
        expect(isLabel(name), name).toBe(true);
        expect(name.length).toBeLessThanOrEqual(JOB_NAME_MAX);
        expect(isLabel(`${name}-99999`)).toBe(true);
        expect(name.startsWith('gl-')).toBe(true);
        expect(jobName(id)).toBe(name);
      }),
      { numRuns: 2000 },
    );
  });

  it('gives distinct task ids distinct names', () => {
    fc.assert(
      fc.property(taskIds, taskIds, (a, b) => {
        fc.pre(a !== b);
        expect(jobName(a)).not.toBe(jobName(b));
      }),
      { numRuns: 2000 },
    );
  });

  const shared = `acme-search-ranker-llama-3-70b-finetune-nightly-2026-01-01-`;
  it.each([
    { why: 'case', a: 'Train-1', b: 'train-1' },
    { why: 'punctuation', a: 'train/1', b: 'train_1' },
    { why: 'punctuation against a dash', a: 'train.1', b: 'train-1' },
    { why: 'runs of punctuation', a: 'a--b', b: 'a-b' },
    { why: 'a leading or trailing dash', a: '-x-', b: 'x' },
    { why: 'no letters or digits at all', a: '///', b: '...' },
    { why: 'long ids sharing a 63-character prefix', a: `${shared}run-0001`, b: `${shared}run-0002` },
    { why: 'long ids that differ only past 63 characters', a: `${'x'.repeat(63)}a`, b: `${'x'.repeat(63)}b` },
  ])('keeps ids apart that differ only in $why', ({ a, b }) => {
    expect(jobName(a)).not.toBe(jobName(b));
    expect(isLabel(jobName(a)) && isLabel(jobName(b))).toBe(true);
  });

  it.each([
    { id: 'Train/ABC_42', wantPrefix: 'gl-train-abc-42-' },
    { id: '---', wantPrefix: 'gl-' },
    { id: `${'a'.repeat(100)}`, wantPrefix: `gl-${'a'.repeat(37)}-` },
    { id: 'x'.repeat(36) + '/y', wantPrefix: `gl-${'x'.repeat(36)}-` },
  ])('keeps a readable slug of $id in front of a 16-hex-digit hash', ({ id, wantPrefix }) => {
    const name = jobName(id);
    expect(name.startsWith(wantPrefix)).toBe(true);
    expect(name.slice(wantPrefix.length)).toMatch(/^[0-9a-f]{16}$/);
  });

  it('is stable across releases: a name once given stays the name of that task', () => {
    // Pinned: a running workflow re-dispatching after preemption recomputes the name and must find its job.
    expect(jobName('llama-ft-nightly-1a2b3c4d')).toMatchInlineSnapshot(`"gl-llama-ft-nightly-1a2b3c4d-aa9d4c940242dead"`);
  });
});
