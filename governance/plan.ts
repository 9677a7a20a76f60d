import type { GovConfig } from '../config/load';
import type { Template } from '../config/schema';
import type { EffectiveCaps } from './caps';
import type { Intent, Sharing } from './intent';
import { costMicros, priceVersionAt } from './pricing';
import { toolOverheadTokens } from './tools';

/** The executable plan translation makes of an admitted intent. Plain data; it is stored with the task. */
export interface Plan {
  template: string;
  runtime: Template['runtime'];
  /** Where the work runs: on our GPUs (cluster) or against a hosted model API (hosted). */
  placement: 'cluster' | 'hosted';
  gpu: { count: number; type: string | null; sharing: Sharing };
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
    gpu: { count: intent.resources.gpus, type: intent.resources.gpuType ?? null, sharing: intent.resources.sharing },
    caps,
    fallbackModel: template.fallbackModel,
    toolOverheadTokens: toolOverheadTokens(config.tools, intent.tools),
    priority: { name: intent.priority, value: config.policies.priorities[intent.priority] ?? 0 },
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
