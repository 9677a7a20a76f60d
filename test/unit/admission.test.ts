import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { type AdmissionResult, admit } from '../../governance/admission';
import type { BudgetHeadroom } from '../../governance/headroom';
import { usdToMicros } from '../../governance/pricing';
import type { Reason } from '../../governance/reasons';
import { type BudgetBuilder, type ConfigBuilder, type IntentBuilder, aBudget, aConfig, anIntent } from '../support/builders';

const NOW = '2026-06-01T00:00:00.000Z';
const shipped = loadConfig();

type WantReason = Pick<Reason, 'code' | 'limit' | 'requested' | 'policy'>;

interface Case {
  name: string;
  intent: IntentBuilder;
  config?: ConfigBuilder;
  budgets?: BudgetBuilder[];
  teamGpusInUse?: number;
  now?: string;
  want: AdmissionResult['decision'];
  wantReasons: WantReason[];
  /** The worst case of the plan, when there is one. */
  wantWorstCaseUsd?: number;
}

// The default intent: training, 2 H100 of acme/search (quota 16), maxGpuHours 10 at $4/GPU-hour,
// maxUsd 100 — a worst case of $40.
const cases: Case[] = [
  { name: 'admits an intent within every ceiling, quota and budget', intent: anIntent(), want: 'admitted', wantReasons: [], wantWorstCaseUsd: 40 },
  {
    name: 'admits caps equal to the ceilings of the kind',
    intent: anIntent().caps({ maxUsd: 20_000, maxGpuHours: 4096 }),
    want: 'admitted',
    wantReasons: [],
    wantWorstCaseUsd: 4096 * 4,
  },
  {
    name: 'CAP_MAX_USD: maxUsd above the kind ceiling',
    intent: anIntent().caps({ maxUsd: 20_001 }),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_MAX_USD', limit: 20_000, requested: 20_001, policy: 'policies/default#kinds.training.maxUsd' }],
  },
  {
    name: 'CAP_MAX_GPU_HOURS: maxGpuHours above the kind ceiling',
    intent: anIntent().caps({ maxGpuHours: 4097 }),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_MAX_GPU_HOURS', limit: 4096, requested: 4097, policy: 'policies/default#kinds.training.maxGpuHours' }],
  },
  {
    name: 'CAP_MAX_TOKENS: maxTokens above the kind ceiling',
    intent: anIntent().caps({ maxTokens: 100_000_001 }),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_MAX_TOKENS', limit: 100_000_000, requested: 100_000_001, policy: 'policies/default#kinds.training.maxTokens' }],
  },
  {
    name: 'CAP_MAX_CONTEXT_TOKENS: maxContextTokens above the kind ceiling',
    intent: anIntent().caps({ maxContextTokens: 32_001 }),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_MAX_CONTEXT_TOKENS', limit: 32_000, requested: 32_001, policy: 'policies/default#kinds.training.maxContextTokens' }],
  },
  {
    name: 'CAP_MAX_STEPS: maxSteps above the kind ceiling',
    intent: anIntent().caps({ maxSteps: 2 }),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_MAX_STEPS', limit: 1, requested: 2, policy: 'policies/default#kinds.training.maxSteps' }],
  },
  {
    name: 'CAP_MAX_TOOL_CALLS: maxToolCalls above the kind ceiling',
    intent: anIntent().caps({ maxToolCalls: 1 }),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_MAX_TOOL_CALLS', limit: 0, requested: 1, policy: 'policies/default#kinds.training.maxToolCalls' }],
  },
  {
    name: 'CAP_DEADLINE: a deadline in the past',
    intent: anIntent().deadline('2026-05-31T23:59:59Z'),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_DEADLINE', limit: NOW, requested: '2026-05-31T23:59:59.000Z', policy: 'intent#caps.deadline' }],
  },
  {
    name: 'CAP_DEADLINE: a deadline that is exactly now has passed',
    intent: anIntent().deadline(NOW),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_DEADLINE', limit: NOW, requested: NOW, policy: 'intent#caps.deadline' }],
  },
  {
    name: 'a deadline one second ahead is admitted',
    intent: anIntent().deadline('2026-06-01T00:00:01Z'),
    want: 'admitted',
    wantReasons: [],
    wantWorstCaseUsd: 40,
  },
  {
    name: 'PRIORITY_UNKNOWN: a priority class the policy does not define',
    intent: anIntent().priority('urgent'),
    want: 'rejected',
    wantReasons: [{ code: 'PRIORITY_UNKNOWN', limit: null, requested: 'urgent', policy: 'policies/default#priorities' }],
  },
  {
    name: 'RISK_CLASS_NOT_ALLOWED: risk class above the kind maximum',
    intent: anIntent().risk('high'),
    want: 'rejected',
    wantReasons: [{ code: 'RISK_CLASS_NOT_ALLOWED', limit: 'medium', requested: 'high', policy: 'policies/default#kinds.training.maxRiskClass' }],
  },
  { name: 'a risk class equal to the kind maximum is admitted', intent: anIntent().risk('medium'), want: 'admitted', wantReasons: [], wantWorstCaseUsd: 40 },
  {
    name: 'MAX_GPUS_PER_TASK: more GPUs than the kind allows one task',
    intent: anIntent().gpus(6),
    config: aConfig().kindLimits('training', { maxGpusPerTask: 4 }),
    want: 'rejected',
    wantReasons: [{ code: 'MAX_GPUS_PER_TASK', limit: 4, requested: 6, policy: 'policies/default#kinds.training.maxGpusPerTask' }],
  },
  {
    name: 'GPU_TYPE_UNKNOWN: a GPU type the cluster does not have',
    intent: anIntent().gpus(2, 'B200'),
    want: 'rejected',
    wantReasons: [{ code: 'GPU_TYPE_UNKNOWN', limit: 'H100|A100', requested: 'B200', policy: 'cluster/sim#gpuTypes' }],
  },
  {
    name: 'GPU_TYPE_UNKNOWN: a GPU type the cluster lists but no node has',
    intent: anIntent().gpus(1, 'L4'),
    config: aConfig().gpuTypeWithoutNodes('L4'),
    want: 'rejected',
    wantReasons: [{ code: 'GPU_TYPE_UNKNOWN', limit: 'H100|A100|L4', requested: 'L4', policy: 'cluster/sim#gpuTypes' }],
  },
  {
    name: 'SHARING_UNSUPPORTED: a MIG profile the GPU type does not offer',
    intent: anIntent().gpus(1, 'H100', 'mig:9g.90gb'),
    want: 'rejected',
    wantReasons: [
      {
        code: 'SHARING_UNSUPPORTED',
        limit: '1g.10gb|1g.20gb|2g.20gb|3g.40gb|4g.40gb|7g.80gb',
        requested: 'mig:9g.90gb',
        policy: 'cluster/sim#gpuTypes.H100.migProfiles',
      },
    ],
  },
  {
    name: 'SHARING_UNSUPPORTED: MIG on a GPU type without MIG profiles',
    intent: anIntent().gpus(1, 'A100', 'mig:1g.10gb'),
    config: aConfig().migProfiles('A100', []),
    want: 'rejected',
    wantReasons: [{ code: 'SHARING_UNSUPPORTED', limit: '', requested: 'mig:1g.10gb', policy: 'cluster/sim#gpuTypes.A100.migProfiles' }],
  },
  // 10 GPU-hours of an H100 MIG slice at $0.60.
  {
    name: 'a MIG profile the GPU type offers is admitted',
    intent: anIntent().gpus(1, 'H100', 'mig:1g.10gb'),
    want: 'admitted',
    wantReasons: [],
    wantWorstCaseUsd: 6,
  },
  {
    name: 'GPU_CAPACITY_EXCEEDED: a gang required on one node, more GPUs than the largest node has',
    intent: anIntent().gpus(12).topology('node'),
    want: 'rejected',
    wantReasons: [{ code: 'GPU_CAPACITY_EXCEEDED', limit: 8, requested: 12, policy: 'cluster/sim#nodes' }],
  },
  {
    name: 'GPU_CAPACITY_EXCEEDED: a gang required in one rack, more GPUs than the largest rack has',
    intent: anIntent().gpus(56).topology('rack'),
    config: aConfig().gpuQuota('acme', 'search', 'H100', 64),
    want: 'rejected',
    wantReasons: [{ code: 'GPU_CAPACITY_EXCEEDED', limit: 48, requested: 56, policy: 'cluster/sim#nodes' }],
  },
  // 12 GPU-hours cap of training on 12 H100s; the gang spans two nodes.
  {
    name: 'a gang larger than a node may span nodes',
    intent: anIntent().gpus(12),
    config: aConfig().gpuQuota('acme', 'search', 'H100', 16),
    want: 'admitted',
    wantReasons: [],
  },
  {
    name: 'SHARING_UNSUPPORTED: no node of the type allows the sharing mode',
    intent: anIntent().share(250, 'H100', 'mps'),
    want: 'rejected',
    wantReasons: [{ code: 'SHARING_UNSUPPORTED', limit: null, requested: 'mps', policy: 'cluster/sim#nodes' }],
  },
  {
    name: 'GPU_QUOTA_BUSY: a share counts against quota by its fraction',
    intent: anIntent().share(500, 'A100', 'mps'),
    config: aConfig().gpuQuota('acme', 'search', 'A100', 2),
    teamGpusInUse: 1.75,
    want: 'queued',
    wantReasons: [{ code: 'GPU_QUOTA_BUSY', limit: 0.25, requested: 0.5, policy: 'policies/default#gpuQuotas[acme/search/A100]' }],
  },
  {
    name: "GPU_QUOTA_EXCEEDED: more GPUs than the team's quota row",
    intent: anIntent().gpus(6),
    config: aConfig().gpuQuota('acme', 'search', 'H100', 4),
    want: 'rejected',
    wantReasons: [{ code: 'GPU_QUOTA_EXCEEDED', limit: 4, requested: 6, policy: 'policies/default#gpuQuotas[acme/search/H100]' }],
  },
  {
    name: 'GPU_QUOTA_EXCEEDED: a team with no quota row gets the default quota',
    intent: anIntent().team('infra').gpus(4),
    config: aConfig().defaultGpuQuota(2),
    want: 'rejected',
    wantReasons: [{ code: 'GPU_QUOTA_EXCEEDED', limit: 2, requested: 4, policy: 'policies/default#defaultGpuQuota' }],
  },
  {
    name: 'GPU_QUOTA_BUSY: the quota is held by running work, so the task is queued',
    intent: anIntent(),
    teamGpusInUse: 15,
    want: 'queued',
    wantReasons: [{ code: 'GPU_QUOTA_BUSY', limit: 1, requested: 2, policy: 'policies/default#gpuQuotas[acme/search/H100]' }],
    wantWorstCaseUsd: 40,
  },
  { name: 'a task that fills the quota exactly is admitted', intent: anIntent(), teamGpusInUse: 14, want: 'admitted', wantReasons: [], wantWorstCaseUsd: 40 },
  {
    name: 'BUDGET_EXCEEDED: the worst case does not fit the headroom; limit is the headroom in USD',
    intent: anIntent(),
    budgets: [aBudget().limitUsd(50).reservedUsd(5).spentUsd(10)],
    want: 'rejected',
    wantReasons: [{ code: 'BUDGET_EXCEEDED', limit: 35, requested: 40, policy: 'budget:acme/search/*:month' }],
  },
  {
    name: 'a worst case that fits the headroom exactly is admitted',
    intent: anIntent(),
    budgets: [aBudget().limitUsd(50).spentUsd(10)],
    want: 'admitted',
    wantReasons: [],
    wantWorstCaseUsd: 40,
  },
  {
    name: 'BUDGET_EXCEEDED names only the covering budgets that are short',
    intent: anIntent(),
    budgets: [aBudget().scope('acme/*/*').limitUsd(1000), aBudget().scope('acme/search/ranker').period('week', '2026-W22').limitUsd(30)],
    want: 'rejected',
    wantReasons: [{ code: 'BUDGET_EXCEEDED', limit: 30, requested: 40, policy: 'budget:acme/search/ranker:week' }],
  },
  {
    name: 'BUDGET_EXCEEDED on an overdrawn budget reports a headroom of 0, not a negative one',
    intent: anIntent(),
    budgets: [aBudget().limitUsd(10).spentUsd(12)],
    want: 'rejected',
    wantReasons: [{ code: 'BUDGET_EXCEEDED', limit: 0, requested: 40, policy: 'budget:acme/search/*:month' }],
  },
  {
    name: 'BUDGET_MISSING: requireBudget and no budget covers the task',
    intent: anIntent(),
    config: aConfig().requireBudget(),
    want: 'rejected',
    wantReasons: [{ code: 'BUDGET_MISSING', limit: null, requested: 40, policy: 'policies/default#requireBudget' }],
  },
  {
    name: 'requireBudget with a covering budget that fits is admitted',
    intent: anIntent(),
    config: aConfig().requireBudget(),
    budgets: [aBudget()],
    want: 'admitted',
    wantReasons: [],
    wantWorstCaseUsd: 40,
  },
  {
    name: 'a task short of budget is rejected even when it would otherwise only wait for GPUs',
    intent: anIntent(),
    teamGpusInUse: 15,
    budgets: [aBudget().limitUsd(20)],
    want: 'rejected',
    wantReasons: [{ code: 'BUDGET_EXCEEDED', limit: 20, requested: 40, policy: 'budget:acme/search/*:month' }],
  },
  {
    name: 'collects every reason at once',
    intent: anIntent().caps({ maxUsd: 30_000, maxGpuHours: 5000 }).deadline('2026-01-01T00:00:00Z').priority('urgent').risk('critical').gpus(12, 'B200'),
    want: 'rejected',
    wantReasons: [
      { code: 'CAP_MAX_USD', limit: 20_000, requested: 30_000, policy: 'policies/default#kinds.training.maxUsd' },
      { code: 'CAP_MAX_GPU_HOURS', limit: 4096, requested: 5000, policy: 'policies/default#kinds.training.maxGpuHours' },
      { code: 'CAP_DEADLINE', limit: NOW, requested: '2026-01-01T00:00:00.000Z', policy: 'intent#caps.deadline' },
      { code: 'PRIORITY_UNKNOWN', limit: null, requested: 'urgent', policy: 'policies/default#priorities' },
      { code: 'RISK_CLASS_NOT_ALLOWED', limit: 'medium', requested: 'critical', policy: 'policies/default#kinds.training.maxRiskClass' },
      { code: 'GPU_TYPE_UNKNOWN', limit: 'H100|A100', requested: 'B200', policy: 'cluster/sim#gpuTypes' },
    ],
  },
  {
    name: 'KIND_NOT_ALLOWED: a kind the policy has no limits for',
    intent: anIntent().kind('batch'),
    config: aConfig().withoutKind('batch'),
    want: 'rejected',
    wantReasons: [{ code: 'KIND_NOT_ALLOWED', limit: null, requested: 'batch', policy: 'policies/default#kinds' }],
  },
  {
    name: 'NO_TEMPLATE: no golden-path template runs the kind',
    intent: anIntent().kind('batch'),
    config: aConfig().withoutTemplatesFor('batch'),
    want: 'rejected',
    wantReasons: [{ code: 'NO_TEMPLATE', limit: null, requested: 'batch', policy: 'templates' }],
  },
  // A hosted agent on llama-3-8b: its 2M-token ceiling at $0.40/M out is a worst case of $0.80.
  {
    name: 'admits a hosted agent with catalog tools',
    intent: anIntent().agent().tools('search.web'),
    want: 'admitted',
    wantReasons: [],
    wantWorstCaseUsd: 0.8,
  },
  {
    name: 'TOOL_UNKNOWN: an agent declares a tool that is not in the catalog',
    intent: anIntent().agent().tools('rm.rf'),
    want: 'rejected',
    wantReasons: [{ code: 'TOOL_UNKNOWN', limit: null, requested: 'rm.rf', policy: 'tools#catalog' }],
  },
  {
    name: 'TOOL_RISK_NOT_ALLOWED: an agent declares a tool riskier than its kind allows',
    intent: anIntent().agent().tools('shell.exec'),
    want: 'rejected',
    wantReasons: [{ code: 'TOOL_RISK_NOT_ALLOWED', limit: 'high', requested: 'critical', policy: 'policies/default#kinds.agent.maxRiskClass' }],
  },
  {
    name: "CAP_MAX_CONTEXT_TOKENS: the tools' definitions leave no room in the context",
    intent: anIntent().agent().caps({ maxContextTokens: 420 }).tools('search.web', 'db.read'),
    want: 'rejected',
    wantReasons: [{ code: 'CAP_MAX_CONTEXT_TOKENS', limit: 420, requested: 420, policy: 'tools#definitionTokens' }],
  },
  {
    name: 'an agent asking for a GPU is over the kind ceiling of 0 GPUs per task',
    intent: anIntent().agent().gpus(1),
    want: 'rejected',
    wantReasons: [{ code: 'MAX_GPUS_PER_TASK', limit: 0, requested: 1, policy: 'policies/default#kinds.agent.maxGpusPerTask' }],
  },
  // Names every object inherits are names like any other: not a price, a rank or a tool. The
  // generated-intents chaos run found a model called valueOf reserving NaN (a null in the ledger).
  {
    name: 'a model called valueOf is priced at the default token price ($15/M out: 2M tokens is $30)',
    intent: anIntent().agent().model('valueOf'),
    want: 'admitted',
    wantReasons: [],
    wantWorstCaseUsd: 30,
  },
  {
    name: 'PRIORITY_UNKNOWN: a priority called toString',
    intent: anIntent().priority('toString'),
    want: 'rejected',
    wantReasons: [{ code: 'PRIORITY_UNKNOWN', limit: null, requested: 'toString', policy: 'policies/default#priorities' }],
  },
  {
    name: 'TOOL_UNKNOWN: a tool called constructor',
    intent: anIntent().agent().tools('constructor'),
    want: 'rejected',
    wantReasons: [{ code: 'TOOL_UNKNOWN', limit: null, requested: 'constructor', policy: 'tools#catalog' }],
  },
];

const pick = (r: Reason): WantReason => ({ code: r.code, limit: r.limit, requested: r.requested, policy: r.policy });

describe('admit', () => {
  it.each(cases)('$name', (tc) => {
    const got = admit(tc.intent.build(), {
      config: (tc.config ?? aConfig()).build(),
      now: tc.now ?? NOW,
      budgets: (tc.budgets ?? []).map((b) => b.build()),
      teamGpusInUse: tc.teamGpusInUse ?? 0,
    });
    expect(got.decision).toBe(tc.want);
    expect(got.reasons.map(pick)).toEqual(tc.wantReasons);
    for (const r of got.reasons) expect(r.message.length).toBeGreaterThan(0);
    if (tc.wantWorstCaseUsd !== undefined) {
      expect(got.decision).not.toBe('rejected');
      if (got.decision !== 'rejected') expect(got.plan.worstCaseMicros).toBe(usdToMicros(tc.wantWorstCaseUsd));
    }
  });

  it('gives caps the intent leaves out the ceiling of the kind, and plans with the shipped template', () => {
    const got = admit(anIntent().noCaps().build(), { config: shipped, now: NOW, budgets: [], teamGpusInUse: 0 });
    expect(got.decision).toBe('admitted');
    if (got.decision !== 'admitted') return;
    const { maxGpusPerTask: _g, maxRiskClass: _r, ...ceilings } = shipped.policies.kinds.training!;
    expect(got.plan.caps).toEqual({ ...ceilings, deadline: null });
    expect(got.plan).toMatchObject({
      template: 'torchrun-training',
      placement: 'cluster',
      gpu: { count: 2, type: 'H100', sharing: 'exclusive' },
      priority: { name: 'normal', value: 500 },
      fallbackModel: null,
      priceVersion: 1,
      // 4096 GPU-hours at $4 is below the $20,000 ceiling.
      worstCaseMicros: usdToMicros(4096 * 4),
    });
  });

  it('is pure: it does not change the config, the budgets or the intent it is given', () => {
    const config = aConfig().build();
    const intent = anIntent().build();
    const budgets = [aBudget().limitUsd(20).build()];
    const before = structuredClone({ config, intent, budgets });
    admit(intent, { config, now: NOW, budgets, teamGpusInUse: 3 });
    expect({ config, intent, budgets }).toEqual(before);
  });

  it('property: what it admits or queues fits every covering budget and maxUsd; what budgets reject names exactly the short ones', () => {
    const budget = fc.record({ limit: fc.integer({ min: 0, max: 200 }), reserved: fc.integer({ min: 0, max: 100 }), spent: fc.integer({ min: 0, max: 100 }) });
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 50 }),
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 0, max: 20 }),
        fc.array(budget, { maxLength: 4 }),
        (maxGpuHours, maxUsd, gpus, inUse, bs) => {
          const budgets: BudgetHeadroom[] = bs.map((b, i) =>
            aBudget().scope(`acme/search/p${i}`).limitUsd(b.limit).reservedUsd(b.reserved).spentUsd(b.spent).build(),
          );
          const got = admit(anIntent().caps({ maxGpuHours, maxUsd }).gpus(gpus).build(), { config: shipped, now: NOW, budgets, teamGpusInUse: inUse });
          const headroom = (b: BudgetHeadroom) => b.limitMicros - b.reservedMicros - b.spentMicros;
          const worst = usdToMicros(Math.min(maxUsd, maxGpuHours * 4));
          const short = budgets.filter((b) => headroom(b) < worst).map((b) => `budget:${b.scope}:month`);
          if (got.decision === 'rejected') {
            expect(got.reasons.every((r) => r.code === 'BUDGET_EXCEEDED')).toBe(true);
            expect(got.reasons.map((r) => r.policy)).toEqual(short);
            return;
          }
          expect(short).toEqual([]);
          expect(got.plan.worstCaseMicros).toBe(worst);
          expect(got.plan.worstCaseMicros).toBeLessThanOrEqual(usdToMicros(maxUsd));
          for (const b of budgets) expect(got.plan.worstCaseMicros).toBeLessThanOrEqual(headroom(b));
          expect(got.decision).toBe(inUse + gpus > 16 ? 'queued' : 'admitted');
        },
      ),
      { numRuns: 300 },
    );
  });
});
