import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { ConfigError, defaultConfigDir, loadProgramPlan } from '../../config/load';

const dir = mkdtempSync(join(tmpdir(), 'program-plan-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const shipped = () => parse(readFileSync(join(defaultConfigDir, 'program.yaml'), 'utf8')) as Record<string, any>;

/** The errors loading `doc` gives, as "path: message". */
function errorsOf(doc: unknown): string[] {
  const file = join(dir, `plan-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, typeof doc === 'string' ? doc : stringify(doc));
  try {
    loadProgramPlan(file);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).file).toBe(file);
    return (err as ConfigError).errors.map((e) => `${e.path}: ${e.message}`);
  }
  throw new Error('the plan loaded');
}

describe('the program plan (config/program.yaml)', () => {
  it("the shipped plan is the seed's: three phases over 90 days, each with its work, deliverables and measured gates", () => {
    const plan = loadProgramPlan();
    expect(plan.phases.map((p) => [p.id, p.startDay, p.endDay])).toEqual([
      ['ledger', 1, 30],
      ['resource-governance', 31, 60],
      ['loop', 61, 90],
    ]);
    expect(plan.phases.map((p) => p.deliverables.map((d) => d.kind))).toEqual([
      ['dashboard', 'admission-policy'],
      ['templates', 'isolation-policy'],
      ['runbook', 'onboarding-record'],
    ]);
    expect(plan.phases.map((p) => p.gates.map((g) => g.check))).toEqual([
      ['attributionCoverage', 'budgetCoverage', 'quotaCoverage', 'admissionPolicyV0'],
      ['isolationPolicy', 'topologyAcceptance', 'goldenPaths'],
      ['ladderExecuted', 'sloLinkage', 'pilotMigration', 'teamContract', 'runbookV1', 'onboarding'],
    ]);
    expect(plan.phases[0]!.gates[0]).toMatchObject({ threshold: 0.95, windowDays: 7 });
  });

  it('GOVLOOP_CONFIG_DIR picks the default file', () => {
    const other = mkdtempSync(join(tmpdir(), 'program-dir-'));
    const doc = shipped();
    doc.name = 'Elsewhere';
    writeFileSync(join(other, 'program.yaml'), stringify(doc));
    const before = process.env.GOVLOOP_CONFIG_DIR;
    process.env.GOVLOOP_CONFIG_DIR = other;
    try {
      expect(loadProgramPlan().name).toBe('Elsewhere');
    } finally {
      if (before === undefined) delete process.env.GOVLOOP_CONFIG_DIR;
      else process.env.GOVLOOP_CONFIG_DIR = before;
      rmSync(other, { recursive: true, force: true });
    }
  });

  it('a duplicate phase id, a phase that ends before it starts and a duplicate gate id are each named by path', () => {
    const doc = shipped();
    doc.phases[1].id = 'ledger';
    doc.phases[2].endDay = 50;
    doc.phases[0].gates[1].id = 'attribution-coverage';
    expect(errorsOf(doc)).toEqual([
      'phases.0.gates.1.id: gate id attribution-coverage is used twice in the phase',
      'phases.1.id: phase id ledger is used twice',
      'phases.2.endDay: ends (day 50) before it starts (day 61)',
    ]);
  });

  it('an unknown check, a threshold above 1 and bad params are all reported at once', () => {
    const doc = shipped();
    doc.phases[0].gates[0].check = 'vibes';
    doc.phases[0].gates[1].threshold = 1.5;
    doc.phases[1].gates[0].params = { allowed: { H100: ['exclusive', 'shared'] }, extra: 1 };
    doc.phases[2].gates[1].params = { pilots: ['acme-search'] };
    const errors = errorsOf(doc);
    expect(errors).toContain(
      'phases.0.gates.0.check: Invalid option: expected one of "attributionCoverage"|"budgetCoverage"|"quotaCoverage"|"admissionPolicyV0"|"isolationPolicy"|"topologyAcceptance"|"goldenPaths"|"ladderExecuted"|"sloLinkage"|"pilotMigration"|"teamContract"|"runbookV1"|"onboarding"',
    );
    expect(errors).toContain('phases.0.gates.1.threshold: Too big: expected number to be <=1');
    expect(errors).toContain('phases.1.gates.0.params.allowed.H100.1: exclusive | mps | timeslice | mig | mig:<profile>');
    expect(errors).toContain('phases.1.gates.0.params: Unrecognized key: "extra"');
    expect(errors).toContain('phases.2.gates.1.params.pilots.0: tenant/team/useCase');
    expect(errors).toHaveLength(5);
  });

  it('a gate that needs params and has none says which', () => {
    const doc = shipped();
    delete doc.phases[1].gates[0].params;
    expect(errorsOf(doc)).toEqual(['phases.1.gates.0.params.allowed: required']);
  });

  it('a file that is not YAML is reported as the document', () => {
    expect(errorsOf('phases: [unclosed')[0]).toMatch(/^\(document\): /);
  });
});
