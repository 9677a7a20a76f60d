/**
 * Admission throughput: the pure `admit()` decision over a realistic mix of intents and budget
 * headroom, with no ledger and no Temporal. A "decision" is what a submitted document costs the
 * control plane before any I/O: zod validation of the intent (`Intent.parse`), then `admit()`.
 * The two parts are measured on their own in the same rounds, interleaved, so their ratio is not
 * skewed by the machine getting busier or quieter between measurements.
 *
 *   npm run bench:admission -- [--seconds 12] [--rounds 5] [--json]
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { type GovConfig, loadConfig } from '../config/load';
import { type AdmissionContext, type AdmissionResult, admit } from '../governance/admission';
import { scopeLabel } from '../governance/budget-scope';
import type { BudgetHeadroom } from '../governance/headroom';
import { Intent, parseIntentText } from '../governance/intent';
import { type Period, windowKey } from '../governance/periods';
import { usdToMicros } from '../governance/pricing';
import { describeMachine, fmt, machine, median, nowMs, parseFlags, round, table } from './lib';

const usage = `usage: tsx bench/admission.ts [--seconds N] [--rounds R] [--json]
  --seconds  measured time in all, split over the rounds and the three measurements (default 12)
  --rounds   rounds; each runs decision, Intent.parse and admit() once, one after the other (default 5)
  --json     print one JSON object instead of tables`;

type Expect = AdmissionResult['decision'] | 'invalid';

/** One document as a caller sends it (not validated yet) and the ledger snapshot it is judged against. */
interface Case {
  label: string;
  source: 'example' | 'generated';
  doc: unknown;
  /** Budgets and team GPU use; `config` and `now` are filled in once for all cases. */
  budgets: BudgetHeadroom[];
  teamGpusInUse: number;
  want: Expect;
}

const examplesDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'config', 'examples');

const benchNow = new Date();

function headroom(scope: string, limitUsd: number, reservedUsd: number, spentUsd: number, period: Period = 'month'): BudgetHeadroom {
  return {
    scope,
    period,
    window: windowKey(period, benchNow),
    limitMicros: usdToMicros(limitUsd),
    reservedMicros: usdToMicros(reservedUsd),
    spentMicros: usdToMicros(spentUsd),
  };
}

/** Budget snapshots as the ledger returns them: tenant, team and project scopes, with some spend. */
function budgetsFor(doc: { attribution?: { tenant?: string; team?: string; project?: string } }, tight: boolean): BudgetHeadroom[] {
  const a = doc.attribution ?? {};
  const t = a.tenant ?? 'acme';
  const project = scopeLabel({ tenant: t, team: a.team, project: a.project });
  return [
    headroom(scopeLabel({ tenant: t }), 250_000, 41_000, 120_500),
    headroom(scopeLabel({ tenant: t, team: a.team }), 40_000, 6_200, 18_750),
    tight ? headroom(project, 500, 120, 371.5, 'week') : headroom(project, 8_000, 310, 2_400, 'week'),
  ];
}

/** What the example says it shows, from its file name: the bench checks it still does. */
const exampleWant: Record<string, Expect> = {
  'bad-intent.yaml': 'invalid',
  'too-big-pretrain.yaml': 'rejected',
};

function exampleCases(): Case[] {
  const files = readdirSync(examplesDir)
    .filter((f) => f.endsWith('.yaml'))
    .sort();
  return files.map((file) => {
    const text = readFileSync(join(examplesDir, file), 'utf8');
    const doc = parseYaml(text) as Record<string, unknown>;
    // The YAML path the CLI takes must agree with validating the parsed document.
    const viaText = parseIntentText(text);
    const want = exampleWant[file] ?? (viaText.ok ? 'admitted' : 'invalid');
    return { label: `example ${file.replace(/\.yaml$/, '')}`, source: 'example', doc, budgets: budgetsFor(doc, false), teamGpusInUse: 0, want };
  });
}

const attribution = (team: string, project: string, model: string, useCase: string) => ({ tenant: 'acme', team, project, model, useCase });

/** The decisions a busy control plane makes all day: admitted, rejected for caps or budget, queued on quota. */
function generatedCases(): Case[] {
  const training = (over: Record<string, unknown>) => ({
    kind: 'training',
    name: 'ranker-train',
    attribution: attribution('search', 'ranker', 'llama-3-8b', 'relevance'),
    caps: { maxUsd: 400, maxGpuHours: 48, deadline: '2099-01-01T00:00:00Z' },
    priority: 'normal',
    riskClass: 'low',
    resources: { gpus: 4, gpuType: 'H100', sharing: 'exclusive' },
    simulation: { durationSeconds: 3600, tokensPerSecond: 1500 },
    labels: { pipeline: 'nightly', owner: 'search-ml' },
    ...over,
  });
  const agent = (over: Record<string, unknown>) => ({
    kind: 'agent',
    name: 'triage-agent',
    attribution: attribution('support', 'helpdesk', 'llama-3-70b', 'ticket-triage'),
    caps: { maxContextTokens: 16000, maxSteps: 20, maxToolCalls: 6, maxTokens: 80000, maxUsd: 3 },
    priority: 'high',
    riskClass: 'medium',
    tools: ['search.web', 'db.read'],
    resources: { gpus: 0 },
    ...over,
  });
  const cases: Case[] = [];
  const add = (label: string, doc: Record<string, unknown>, want: Expect, opts: { tight?: boolean; teamGpusInUse?: number } = {}) =>
    cases.push({
      label,
      source: 'generated',
      doc,
      budgets: budgetsFor(doc as { attribution: { tenant: string } }, opts.tight ?? false),
      teamGpusInUse: opts.teamGpusInUse ?? 0,
      want,
    });

  add('admitted: training 4xH100', training({}), 'admitted', { teamGpusInUse: 4 });
  add(
    'admitted: finetune 2xA100',
    training({ kind: 'finetune', name: 'chat-ft', resources: { gpus: 2, gpuType: 'A100', sharing: 'exclusive' }, caps: { maxUsd: 120, maxGpuHours: 16 } }),
    'admitted',
  );
  add(
    'admitted: inference MIG slice',
    training({
      kind: 'inference',
      name: 'chat-serve',
      priority: 'high',
      resources: { gpus: 1, gpuType: 'A100', sharing: 'mig:1g.10gb' },
      caps: { maxUsd: 20, maxGpuHours: 24 },
    }),
    'admitted',
  );
  add('admitted: agent 2 tools', agent({}), 'admitted');
  add('admitted: agent, caps from policy', agent({ caps: {}, tools: ['search.web'] }), 'admitted');
  add('rejected: maxGpuHours over cap', training({ name: 'huge', caps: { maxUsd: 20000, maxGpuHours: 100000 } }), 'rejected');
  add('rejected: agent asks for GPUs', agent({ name: 'gpu-agent', resources: { gpus: 1, gpuType: 'H100' } }), 'rejected');
  add('rejected: critical risk, critical tool', agent({ name: 'risky', riskClass: 'critical', tools: ['search.web', 'shell.exec'] }), 'rejected');
  add('rejected: tool not in catalog', agent({ name: 'unknown-tool', tools: ['search.web', 'crm.export'] }), 'rejected');
  add('rejected: deadline passed', training({ name: 'late', caps: { maxUsd: 400, maxGpuHours: 48, deadline: '2001-01-01T00:00:00Z' } }), 'rejected');
  add('rejected: over budget (project)', training({ name: 'pricey', caps: { maxUsd: 4000, maxGpuHours: 400 } }), 'rejected', { tight: true });
  add(
    'rejected: over budget (agent)',
    agent({
      name: 'agent-pricey',
      attribution: attribution('support', 'helpdesk', 'frontier-large', 'ticket-triage'),
      caps: { maxUsd: 90, maxSteps: 200, maxTokens: 2_000_000 },
    }),
    'rejected',
    { tight: true },
  );
  add('queued: team H100 quota busy', training({ name: 'waits', resources: { gpus: 8, gpuType: 'H100', sharing: 'exclusive' } }), 'queued', {
    teamGpusInUse: 12,
  });
  add(
    'queued: team A100 quota busy',
    training({
      name: 'waits-a100',
      kind: 'batch',
      attribution: attribution('search', 'ranker', 'llama-3-8b', 'offline-eval'),
      resources: { gpus: 4, gpuType: 'A100', sharing: 'exclusive' },
      caps: { maxUsd: 100, maxGpuHours: 32 },
    }),
    'queued',
    { teamGpusInUse: 6 },
  );
  return cases;
}

interface Prepared {
  label: string;
  source: Case['source'];
  doc: unknown;
  intent: Intent | null;
  ctx: AdmissionContext;
  want: Expect;
  got: Expect;
  codes: string[];
}

function prepare(cases: Case[], config: GovConfig, now: string): Prepared[] {
  return cases.map((c) => {
    const parsed = Intent.safeParse(c.doc);
    const ctx: AdmissionContext = { config, now, budgets: c.budgets, teamGpusInUse: c.teamGpusInUse };
    if (!parsed.success) return { label: c.label, source: c.source, doc: c.doc, intent: null, ctx, want: c.want, got: 'invalid', codes: ['(zod)'] };
    const r = admit(parsed.data, ctx);
    return { label: c.label, source: c.source, doc: c.doc, intent: parsed.data, ctx, want: c.want, got: r.decision, codes: r.reasons.map((x) => x.code) };
  });
}

// Results go here so the optimizer cannot drop the work.
let sink = 0;

/** Runs `op(i)` over the case indices round-robin for `ms`, returns operations per second. */
function measure(ms: number, n: number, op: (i: number) => number): number {
  let ops = 0;
  let i = 0;
  const start = nowMs();
  let elapsed = 0;
  do {
    for (let k = 0; k < 64; k++) {
      sink += op(i);
      i = i + 1 === n ? 0 : i + 1;
    }
    ops += 64;
    elapsed = nowMs() - start;
  } while (elapsed < ms);
  return (ops * 1000) / elapsed;
}

function main() {
  const flags = parseFlags({ seconds: 12, rounds: 5, json: false }, usage);
  const rounds = Math.max(1, Math.round(flags.rounds));
  const m = machine();
  const config = loadConfig();
  // The clock is injected: one instant for the whole run, as a decision would see it.
  const now = benchNow.toISOString();
  const prepared = prepare([...exampleCases(), ...generatedCases()], config, now);
  const mismatches = prepared.filter((p) => p.want !== p.got);

  // Every measurement walks the same mix. Invalid documents stay in the decision and parse mixes
  // (a caller sends them too); admit() only ever sees valid intents.
  const docs = prepared.map((p) => p.doc);
  const valid = prepared.filter((p): p is Prepared & { intent: Intent } => p.intent !== null);
  const decision = (i: number): number => {
    const p = prepared[i]!;
    const parsed = Intent.safeParse(p.doc);
    return parsed.success ? admit(parsed.data, p.ctx).reasons.length + 1 : parsed.error.issues.length;
  };
  const parseOnly = (i: number): number => {
    const parsed = Intent.safeParse(docs[i]);
    return parsed.success ? parsed.data.tools.length + 1 : parsed.error.issues.length;
  };
  const admitOnly = (i: number): number => {
    const p = valid[i]!;
    return admit(p.intent, p.ctx).reasons.length + 1;
  };
  const parts: { name: string; what: string; n: number; op: (i: number) => number }[] = [
    { name: 'decision', what: 'Intent.parse + admit(), whole mix', n: prepared.length, op: decision },
    { name: 'parse', what: 'Intent.parse (zod) alone, whole mix', n: prepared.length, op: parseOnly },
    { name: 'admit', what: 'admit() alone, valid intents of the mix', n: valid.length, op: admitOnly },
  ];

  const sliceMs = (flags.seconds * 1000) / (rounds * parts.length);
  // Warm-up: let the JIT settle on every path before anything counts.
  for (const p of parts) measure(Math.min(1000, Math.max(200, sliceMs)), p.n, p.op);
  const perRound: Record<string, number[]> = Object.fromEntries(parts.map((p) => [p.name, []]));
  for (let r = 0; r < rounds; r++) {
    // Rotate the order so no part always runs first (or last) in a round.
    for (let k = 0; k < parts.length; k++) {
      const p = parts[(r + k) % parts.length]!;
      perRound[p.name]!.push(measure(sliceMs, p.n, p.op));
    }
  }

  // The cost of admit() per case, one short pass each: which decisions are dear.
  const perCaseMs = Math.max(50, Math.min(300, sliceMs / 4));
  const perCase = prepared.map((p) => {
    const admitOps = p.intent ? measure(perCaseMs, 1, () => admit(p.intent!, p.ctx).reasons.length) : Number.NaN;
    const parseOps = measure(perCaseMs, 1, () => (Intent.safeParse(p.doc).success ? 1 : 0));
    return { label: p.label, decision: p.got, codes: p.codes, parseUs: round(1e6 / parseOps, 2), admitUs: p.intent ? round(1e6 / admitOps, 2) : null };
  });

  const stats = (xs: number[]) => ({
    medianPerSec: Math.round(median(xs)),
    minPerSec: Math.round(Math.min(...xs)),
    maxPerSec: Math.round(Math.max(...xs)),
    usPerOp: round(1e6 / median(xs), 3),
    rounds: xs.map(Math.round),
  });
  const results = Object.fromEntries(parts.map((p) => [p.name, { what: p.what, ...stats(perRound[p.name]!) }])) as Record<
    'decision' | 'parse' | 'admit',
    ReturnType<typeof stats> & { what: string }
  >;
  const mix = {
    cases: prepared.length,
    examples: prepared.filter((p) => p.source === 'example').length,
    generated: prepared.filter((p) => p.source === 'generated').length,
    byDecision: prepared.reduce<Record<string, number>>((acc, p) => ({ ...acc, [p.got]: (acc[p.got] ?? 0) + 1 }), {}),
  };
  const ratio = {
    /** How many admit() calls cost as much as one Intent.parse. */
    parseToAdmit: round(results.parse.usPerOp / results.admit.usPerOp, 2),
    /** Share of a decision's time spent in validation (from the medians). */
    parseShareOfDecision: round(results.parse.usPerOp / results.decision.usPerOp, 3),
  };
  const report = {
    benchmark: 'admission',
    machine: m,
    parameters: { seconds: flags.seconds, rounds, sliceMs: Math.round(sliceMs), now },
    mix,
    results,
    ratio,
    perCase,
    mismatches: mismatches.map((p) => ({ label: p.label, want: p.want, got: p.got, codes: p.codes })),
    sink: sink % 7,
  };

  if (flags.json) {
    console.log(JSON.stringify(report));
  } else {
    console.log(`machine:    ${describeMachine(m)}`);
    console.log(`parameters: ${flags.seconds} s measured in ${rounds} rounds (${Math.round(sliceMs)} ms per part per round), after warm-up`);
    console.log(
      `mix:        ${mix.cases} documents (${mix.examples} from config/examples, ${mix.generated} generated): ${Object.entries(mix.byDecision)
        .map(([k, v]) => `${v} ${k}`)
        .join(', ')}`,
    );
    console.log();
    console.log(
      table(
        ['measured', 'median /s', 'min /s', 'max /s', 'µs/op (median)'],
        parts.map((p) => {
          const r = results[p.name as keyof typeof results];
          return [r.what, fmt(r.medianPerSec), fmt(r.minPerSec), fmt(r.maxPerSec), r.usPerOp.toFixed(2)];
        }),
      ),
    );
    console.log(
      `Intent.parse costs ${ratio.parseToAdmit}x an admit(); validation is ${Math.round(ratio.parseShareOfDecision * 100)}% of a decision (medians, same run).`,
    );
    console.log();
    console.log(
      table(
        ['case', 'decision', 'reason codes', 'parse µs', 'admit µs'],
        perCase.map((c) => [c.label, c.decision, c.codes.join(' ') || '—', c.parseUs.toFixed(2), c.admitUs === null ? '—' : c.admitUs.toFixed(2)]),
      ),
    );
  }
  if (mismatches.length > 0) {
    console.error(`\n${mismatches.length} case(s) no longer decide as the bench expects (policy or code changed?):`);
    for (const p of mismatches) console.error(`  ${p.label}: want ${p.want}, got ${p.got} ${p.codes.join(' ')}`);
    process.exitCode = 1;
  }
}

main();
