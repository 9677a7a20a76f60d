/** Kubernetes resource quantities (cluster/kubernetes/placement.ts). */

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/** A Kubernetes resource quantity (`16`, `15500m`, `64Gi`, `1e3`) in base units; null when malformed. */
export function parseQuantity(q: string | number | undefined | null): number | null {
  if (q === undefined || q === null) return null;
  if (typeof q === 'number') return Number.isFinite(q) ? q : null;
  const m = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei)|([eE][+-]?\d+)|(n|u|m|k|M|G|T|P|E)?)$/.exec(q.trim());
  if (!m) return null;
  const n = Number(m[1]);
  if (m[2]) return n * BINARY[m[2]]!;
  if (m[3]) return n * 10 ** Number(m[3].slice(1));
  return n * DECIMAL[m[4] ?? '']!;
}
