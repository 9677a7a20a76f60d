import type { PriceBookVersion } from '../config/schema';
import { own } from './own';

/**
 * Money is integer micro-dollars everywhere in the ledger: sums are exact, and a cent is 10,000.
 */
export const MICROS_PER_USD = 1_000_000;
export const usdToMicros = (usd: number): number => Math.round(usd * MICROS_PER_USD);
export const microsToUsd = (micros: number): number => micros / MICROS_PER_USD;

export type Meter = 'tokens_in' | 'tokens_out' | 'gpu_seconds';

export interface PricedUsage {
  meter: Meter;
  quantity: number;
  /** The model for token meters, `<gpuType>:<sharing>` for GPU meters. */
  subject: string;
}

/** The price-book version in force at `at` (ISO time): a new price never rewrites history. */
export function priceVersionAt(book: PriceBookVersion[], at: string): PriceBookVersion {
  const t = Date.parse(at);
  let found: PriceBookVersion | undefined;
  for (const v of book) if (Date.parse(v.effectiveFrom) <= t) found = v;
  const first = book[0];
  if (found) return found;
  if (!first) throw new Error('price book is empty');
  return first;
}

function sharingKey(sharing: string): string {
  return sharing.startsWith('mig:') ? 'mig' : sharing;
}

/** USD per unit of quantity for one usage line, from one price-book version. */
export function unitPriceUsd(version: PriceBookVersion, usage: Omit<PricedUsage, 'quantity'>): number {
  if (usage.meter === 'gpu_seconds') {
    const [gpuType = '', sharing = 'exclusive'] = usage.subject.split(':');
    const byType = own(version.gpuHourUsd, gpuType);
    const perHour = (byType && own(byType, sharingKey(sharing))) ?? byType?.exclusive;
    if (perHour === undefined) throw new Error(`price book v${version.version} has no GPU-hour price for ${gpuType}`);
    return perHour / 3600;
  }
  const model = own(version.tokensPerMillionUsd, usage.subject) ?? version.tokensPerMillionUsd.default;
  if (!model) throw new Error(`price book v${version.version} has no token price for ${usage.subject} and no default`);
  return (usage.meter === 'tokens_in' ? model.in : model.out) / 1_000_000;
}

export function costMicros(version: PriceBookVersion, usage: PricedUsage): number {
  return usdToMicros(usage.quantity * unitPriceUsd(version, usage));
}
