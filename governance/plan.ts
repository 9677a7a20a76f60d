import type { GovConfig, Template } from '../config/schema';
import type { EffectiveCaps } from './caps';
import type { GpuTopology, Intent, Resources, Sharing } from './intent';
import { costMicros, priceVersionAt } from './pricing';
import { toolOverheadTokens } from './tools';
import { own } from './own';

/** The executable plan translation makes of an admitted intent. Plain data; it is stored with the task. */
export interface Plan {
  template: string;
  runtime: Template['runtime'];
  /** Where the work runs: on our GPUs (cluster) or against a hosted model API (hosted). */
  placement: 'cluster' | 'hosted';
  /**
   * `milli`: the share of one GPU (mps / timeslice); `topology`: how far the gang may spread;
   * `quotaGpus`: what the task counts against GPU quota, in GPUs (a share by its fraction, a MIG
   * instance by its compute slices of 7). Plans stored before these fields lack them: read with
   * `quotaGpusOf`.
   */
  gpu: { count: number; type: string | null; sharing: Sharing; milli?: number; topology?: GpuTopology; quotaGpus?: number };
  caps: EffectiveCaps;
  fallbackModel: string | null;
  /** Tokens the declared tools' definitions add to every model call. */
  toolOverheadTokens: number;
  priority: { name: string; value: number };
  /** The most this task can cost under its caps; reserved against the budget before dispatch. */
  worstCaseMicros: number;
  simulation: { durationSeconds: number; tokensPerSecond: number; failAfterSeconds: number | null };
  reportEverySeconds: number;
  priceVersion: number;
}

export function pickTemplate(templates: Template[], kind: Intent['kind']): Template | undefined {
  return templates.find((t) => t.kinds.includes(kind));
}

/**
 * The worst case a task can cost: on the cluster, its GPU-hour cap at the GPU's price; against a
 * hosted model, its token cap at the dearer of the model's in/out prices; never more than maxUsd.
 */
export function worstCaseMicros(intent: Intent, caps: EffectiveCaps, config: GovConfig, now: string): number {
  const version = priceVersionAt(config.priceBook, now);
  const maxUsdMicros = Math.round(caps.maxUsd * 1_000_000);
  let bound: number;
  if (intent.resources.gpus > 0) {
    bound = costMicros(version, {
      meter: 'gpu_seconds',
      quantity: caps.maxGpuHours * 3600,
      subject: `${intent.resources.gpuType}:${intent.resources.sharing}`,
    });
  } else {
    const model = intent.attribution.model;
    const tokens = caps.maxTokens;
    bound = Math.max(
      costMicros(version, { meter: 'tokens_in', quantity: tokens, subject: model }),
      costMicros(version, { meter: 'tokens_out', quantity: tokens, subject: model }),
    );
  }
  return Math.min(maxUsdMicros, bound);
}

export function translate(intent: Intent, caps: EffectiveCaps, template: Template, config: GovConfig, now: string): Plan {
  const sim = intent.simulation;
  return {
    template: template.name,
    runtime: template.runtime,
    placement: intent.resources.gpus > 0 ? 'cluster' : 'hosted',
    gpu: {
      count: intent.resources.gpus,
      type: intent.resources.gpuType ?? null,
      sharing: intent.resources.sharing,
      ...(intent.resources.gpuMilli !== undefined ? { milli: intent.resources.gpuMilli } : {}),
      ...(intent.resources.topology ? { topology: intent.resources.topology } : {}),
      quotaGpus: quotaGpus(intent.resources),
    },
    caps,
    fallbackModel: template.fallbackModel,
    toolOverheadTokens: toolOverheadTokens(config.tools, intent.tools),
    priority: { name: intent.priority, value: own(config.policies.priorities, intent.priority) ?? 0 },
    worstCaseMicros: worstCaseMicros(intent, caps, config, now),
    simulation: {
      durationSeconds: sim?.durationSeconds ?? config.simulation.defaultDurationSeconds,
      tokensPerSecond: sim?.tokensPerSecond ?? config.simulation.defaultTokensPerSecond,
      failAfterSeconds: sim?.failAfterSeconds ?? null,
    },
    reportEverySeconds: template.reportEverySeconds,
    priceVersion: priceVersionAt(config.priceBook, now).version,
  };
}

/** MIG compute slices of a whole 80 GB A100/H100 GPU: a `<c>g.<m>gb` instance is c of them. */
const MIG_COMPUTE_SLICES = 7;

/** The share of a whole GPU one MIG instance of `profile` (`3g.40gb`) is: its compute slices of 7. */
export function migGpuFraction(profile: string): number {
  return Math.min(1, Number(/^(\d+)g\./.exec(profile)?.[1] ?? MIG_COMPUTE_SLICES) / MIG_COMPUTE_SLICES);
}

/**
 * What a GPU request counts against quota, in GPUs: whole GPUs one each, a share by its fraction
 * (`gpuMilli` / 1000), a MIG instance by its compute slices of 7 (1g.10gb = 1/7). Three decimals.
 */
export function quotaGpus(r: Pick<Resources, 'gpus' | 'sharing' | 'gpuMilli'>): number {
  if (r.gpus <= 0) return 0;
  let each = 1;
  if (r.sharing === 'mps' || r.sharing === 'timeslice') each = (r.gpuMilli ?? 1000) / 1000;
  else if (r.sharing.startsWith('mig:')) each = migGpuFraction(r.sharing.slice('mig:'.length));
  return Math.round(r.gpus * each * 1000) / 1000;
}

/** A plan's quota GPUs, for plans stored before `quotaGpus` existed too. */
export function quotaGpusOf(gpu: Plan['gpu']): number {
  return gpu.quotaGpus ?? quotaGpus({ gpus: gpu.count, sharing: gpu.sharing, gpuMilli: gpu.milli });
}
