/**
 * Small fluent builders for test fixtures (style.md rule 13): start from a valid default, change
 * only what the test is about, `build()` a plain object. Defaults mirror the harness's `intent()`.
 */
import type { BudgetHeadroom } from '../../governance/headroom';
import { type GovConfig, loadConfig } from '../../config/load';
import type { KindLimits } from '../../config/schema';
import { type Attribution, type Caps, Intent, type IntentInput, type RiskClass, type WorkloadKind } from '../../governance/intent';
import { usdToMicros } from '../../governance/pricing';

/** An intent that admission admits under the shipped config: 2 H100 for a training job of acme/search. */
export class IntentBuilder {
  private input: IntentInput = {
    kind: 'training',
    name: 'job',
    attribution: { tenant: 'acme', team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' },
    caps: { maxUsd: 100, maxGpuHours: 10 },
    priority: 'normal',
    riskClass: 'low',
    tools: [],
    resources: { gpus: 2, gpuType: 'H100', sharing: 'exclusive' },
  };

  kind(kind: WorkloadKind): this {
    this.input.kind = kind;
    return this;
  }

  named(name: string): this {
    this.input.name = name;
    return this;
  }

  attribution(a: Partial<Attribution>): this {
    this.input.attribution = { ...this.input.attribution, ...a };
    return this;
  }

  tenant(tenant: string): this {
    return this.attribution({ tenant });
  }

  team(team: string): this {
    return this.attribution({ team });
  }

  model(model: string): this {
    return this.attribution({ model });
  }

  /** Merges into the caps so far; pass `{ maxUsd: undefined }` to leave a cap to the policy. */
  caps(caps: Partial<Record<keyof Caps, number | string | undefined>>): this {
    this.input.caps = { ...this.input.caps, ...caps } as IntentInput['caps'];
    return this;
  }

  /** No caps at all: every cap is the ceiling of the kind. */
  noCaps(): this {
    this.input.caps = {};
    return this;
  }

  deadline(iso: string): this {
    return this.caps({ deadline: iso });
  }

  priority(priority: string): this {
    this.input.priority = priority;
    return this;
  }

  risk(riskClass: RiskClass): this {
    this.input.riskClass = riskClass;
    return this;
  }

  tools(...tools: string[]): this {
    this.input.tools = tools;
    return this;
  }

  gpus(gpus: number, gpuType = 'H100', sharing = 'exclusive'): this {
    this.input.resources = { gpus, gpuType, sharing };
    return this;
  }

  /** A share of one GPU through `sharing` (mps or timeslice), in thousandths. */
  share(gpuMilli: number, gpuType = 'A100', sharing: 'mps' | 'timeslice' = 'mps'): this {
    this.input.resources = { gpus: 1, gpuType, sharing, gpuMilli };
    return this;
  }

  /** How far the gang may spread. */
  topology(level: 'node' | 'nvlink' | 'rack' | 'block' | 'cluster', mode: 'required' | 'preferred' = 'required'): this {
    this.input.resources = { gpus: 0, ...this.input.resources, topology: { level, mode } };
    return this;
  }

  /** Runs against a hosted model: no GPUs. */
  hosted(): this {
    this.input.resources = { gpus: 0 };
    return this;
  }

  /** A hosted agent with generous caps; change what the test is about. */
  agent(): this {
    return this.kind('agent').hosted().noCaps().risk('low');
  }

  /** The intent as the parser would produce it (defaults applied); throws if it is not valid. */
  build(): Intent {
    return Intent.parse(structuredClone(this.input));
  }

  /** What a caller writes, before parsing. */
  toInput(): IntentInput {
    return structuredClone(this.input);
  }
}

export const anIntent = () => new IntentBuilder();

/** A private copy of the shipped config, changed one knob at a time. */
export class ConfigBuilder {
  private config: GovConfig = structuredClone(loadConfig());

  requireBudget(on = true): this {
    this.config.policies.requireBudget = on;
    return this;
  }

  gpuQuota(tenant: string, team: string, gpuType: string, gpus: number): this {
    this.config.policies.gpuQuotas = [
      ...this.config.policies.gpuQuotas.filter((q) => !(q.tenant === tenant && q.team === team && q.gpuType === gpuType)),
      { tenant, team, gpuType, gpus },
    ];
    return this;
  }

  defaultGpuQuota(gpus: number): this {
    this.config.policies.defaultGpuQuota = gpus;
    return this;
  }

  kindLimits(kind: WorkloadKind, limits: Partial<KindLimits>): this {
    const current = this.config.policies.kinds[kind];
    if (!current) throw new Error(`no limits for ${kind}`);
    this.config.policies.kinds[kind] = { ...current, ...limits };
    return this;
  }

  withoutKind(kind: WorkloadKind): this {
    delete this.config.policies.kinds[kind];
    return this;
  }

  withoutTemplatesFor(kind: WorkloadKind): this {
    this.config.templates = this.config.templates.filter((t) => !t.kinds.includes(kind));
    return this;
  }

  migProfiles(gpuType: string, profiles: string[]): this {
    const t = this.config.cluster.gpuTypes[gpuType];
    if (!t) throw new Error(`no GPU type ${gpuType}`);
    t.migProfiles = profiles;
    return this;
  }

  /** A GPU type the cluster knows, with no node that has it. */
  gpuTypeWithoutNodes(gpuType: string): this {
    this.config.cluster.gpuTypes[gpuType] = { memoryGb: 80, migProfiles: [] };
    return this;
  }

  build(): GovConfig {
    return structuredClone(this.config);
  }
}

export const aConfig = () => new ConfigBuilder();

/** One budget window's headroom as the ledger reports it to admission. */
export class BudgetBuilder {
  private b: BudgetHeadroom = { scope: 'acme/search/*', period: 'month', window: '2026-06', limitMicros: usdToMicros(1000), reservedMicros: 0, spentMicros: 0 };

  scope(scope: string): this {
    this.b.scope = scope;
    return this;
  }

  period(period: string, window: string): this {
    this.b.period = period;
    this.b.window = window;
    return this;
  }

  limitUsd(usd: number): this {
    this.b.limitMicros = usdToMicros(usd);
    return this;
  }

  reservedUsd(usd: number): this {
    this.b.reservedMicros = usdToMicros(usd);
    return this;
  }

  spentUsd(usd: number): this {
    this.b.spentMicros = usdToMicros(usd);
    return this;
  }

  build(): BudgetHeadroom {
    return { ...this.b };
  }
}

export const aBudget = () => new BudgetBuilder();
