import { describe, expect, it } from 'vitest';
import type { GovConfig } from '../../config/load';
import { resolveCaps } from '../../governance/caps';
import { worstCaseMicros } from '../../governance/plan';
import { usdToMicros } from '../../governance/pricing';
import { type IntentBuilder, aConfig, anIntent } from '../support/builders';

const NOW = '2026-06-01T00:00:00.000Z';

/** The shipped config, plus a model whose input tokens cost more than its output, and a v2 at twice the v1 prices from July. */
function config(): GovConfig {
  const c = aConfig().build();
  const v1 = c.priceBook[0]!;
  v1.tokensPerMillionUsd['reader-model'] = { in: 10, out: 1 };
  const v2 = structuredClone(v1);
  v2.version = 2;
  v2.effectiveFrom = '2026-07-01T00:00:00Z';
  for (const byType of Object.values(v2.gpuHourUsd)) for (const k of Object.keys(byType)) byType[k]! *= 2;
  c.priceBook = [v1, v2];
  return c;
}

function worstCaseUsd(b: IntentBuilder, now = NOW): number {
  const c = config();
  const intent = b.build();
  const { caps, reasons } = resolveCaps(intent, c.policies.kinds[intent.kind]!, c.policies.name);
  expect(reasons).toEqual([]);
  return worstCaseMicros(intent, caps, c, now) / 1_000_000;
}

describe('worstCaseMicros', () => {
  it.each<{ name: string; intent: IntentBuilder; now?: string; wantUsd: number }>([
    { name: 'on the cluster: the GPU-hour cap at the GPU price', intent: anIntent().caps({ maxGpuHours: 10, maxUsd: 100 }), wantUsd: 40 },
    {
      name: 'on the cluster: maxGpuHours is the whole task, whatever the GPU count',
      intent: anIntent().gpus(8).caps({ maxGpuHours: 10, maxUsd: 100 }),
      wantUsd: 40,
    },
    { name: 'on the cluster: never more than maxUsd', intent: anIntent().caps({ maxGpuHours: 10, maxUsd: 25 }), wantUsd: 25 },
    {
      name: 'on the cluster: at the price of the sharing mode (MPS)',
      intent: anIntent().share(500, 'H100', 'mps').caps({ maxGpuHours: 10, maxUsd: 100 }),
      wantUsd: 15,
    },
    {
      name: 'on the cluster: at the price of the sharing mode (MIG)',
      intent: anIntent().gpus(1, 'A100', 'mig:3g.40gb').caps({ maxGpuHours: 10, maxUsd: 100 }),
      wantUsd: 3,
    },
    { name: 'on the cluster: a zero GPU-hour cap costs nothing', intent: anIntent().caps({ maxGpuHours: 0, maxUsd: 100 }), wantUsd: 0 },
    {
      name: 'on the cluster: at the version in force at `now`',
      intent: anIntent().caps({ maxGpuHours: 10, maxUsd: 100 }),
      now: '2026-07-01T00:00:00Z',
      wantUsd: 80,
    },
    // llama-3-70b: $0.90 in, $1.20 out per 1M tokens; 60k tokens all at the dearer price.
    {
      name: 'hosted: the token cap at the dearer of the in/out prices',
      intent: anIntent().agent().model('llama-3-70b').caps({ maxTokens: 60_000, maxUsd: 2 }),
      wantUsd: 0.072,
    },
    { name: 'hosted: when input is the dearer price', intent: anIntent().agent().model('reader-model').caps({ maxTokens: 100_000, maxUsd: 50 }), wantUsd: 1 },
    {
      name: 'hosted: a model not in the book at the default price',
      intent: anIntent().agent().model('mystery-9b').caps({ maxTokens: 100_000, maxUsd: 50 }),
      wantUsd: 1.5,
    },
    { name: 'hosted: never more than maxUsd', intent: anIntent().agent().model('mystery-9b').caps({ maxTokens: 100_000, maxUsd: 1 }), wantUsd: 1 },
    {
      name: 'hosted inference is priced by tokens too',
      intent: anIntent().kind('inference').hosted().model('llama-3-8b').caps({ maxTokens: 5_000_000, maxUsd: 100 }),
      wantUsd: 2,
    },
    { name: 'hosted: a cap left out is the ceiling of the kind', intent: anIntent().agent(), wantUsd: 0.8 },
  ])('$name → $wantUsd USD', ({ intent, now, wantUsd }) => {
    expect(worstCaseUsd(intent, now)).toBe(wantUsd);
  });

  it('is whole micro-dollars, capped at maxUsd rounded to the micro', () => {
    const c = config();
    const intent = anIntent().caps({ maxGpuHours: 10, maxUsd: 12.3456789 }).build();
    const { caps } = resolveCaps(intent, c.policies.kinds.training!, 'default');
    expect(worstCaseMicros(intent, caps, c, NOW)).toBe(usdToMicros(12.3456789));
    expect(Number.isInteger(worstCaseMicros(intent, caps, c, NOW))).toBe(true);
  });
});
