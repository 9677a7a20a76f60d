/**
 * One placement at a time per cluster, across worker processes: a coordination.k8s.io/v1 Lease
 * (`govloop-placement-<cluster>` in the Jobs' namespace) that a worker holds while it reads what
 * is free, places, and creates the Job. Two workers placing on one cluster would otherwise both
 * read the same free GPUs and pin two Jobs to them.
 *
 * The protocol is the one client-go's leader election uses, without its renew loop (a placement
 * takes a few API calls, far less than the lease duration):
 *   - acquire: read the Lease (create it empty if missing); if nobody holds it, we hold it, or the
 *     holder's renewTime + leaseDurationSeconds has passed (a worker that died holding it), write
 *     ourselves as holder with a merge patch that carries the resourceVersion we read, so of two
 *     workers that saw it free only one wins (the other gets 409 Conflict and reads again).
 *     Otherwise wait a little and try again, up to `waitMillis`, then fail (the activity retries).
 *   - release: clear holderIdentity, again conditioned on the resourceVersion; a 409 or 404 means
 *     it is no longer ours to release (it expired and someone took it), which is fine.
 * Expiry compares the holder's renewTime with this worker's clock, so the workers' clocks must
 * agree to well within the lease duration (NTP does); client-go instead times the record's
 * changes locally, which a placement this short does not need.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import {
  type ConfigurationOptions,
  type CoordinationV1ApiCreateNamespacedLeaseRequest,
  type CoordinationV1ApiPatchNamespacedLeaseRequest,
  type CoordinationV1ApiReadNamespacedLeaseRequest,
  PatchStrategy,
  type V1Lease,
  setHeaderOptions,
} from '@kubernetes/client-node';

/** The CoordinationV1Api calls the lease makes; tests may inject their own. */
export interface LeasesApi {
  createNamespacedLease(param: CoordinationV1ApiCreateNamespacedLeaseRequest, options?: ConfigurationOptions): Promise<V1Lease>;
  readNamespacedLease(param: CoordinationV1ApiReadNamespacedLeaseRequest, options?: ConfigurationOptions): Promise<V1Lease>;
  patchNamespacedLease(param: CoordinationV1ApiPatchNamespacedLeaseRequest, options?: ConfigurationOptions): Promise<V1Lease>;
}

export interface PlacementLeaseOptions {
  /** Who holds it: unique per worker process. Default `<hostname>-<pid>-<random>`. */
  identity?: string;
  /** How long a holder that stopped answering keeps it. Default 15 s. */
  durationSeconds?: number;
  /** How long to wait for another holder before giving up (the dispatch activity retries). Default 30 s. */
  waitMillis?: number;
  clock?: () => Date;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** metav1.MicroTime: RFC 3339 with exactly six fractional digits (the API server rejects fewer). */
export function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

/** Who holds the lease at `now`, or null when it is free (never held, released, or expired). */
export function leaseHolder(lease: V1Lease, now: Date): string | null {
  const holder = lease.spec?.holderIdentity;
  if (!holder) return null;
  const renewed = lease.spec?.renewTime ?? lease.spec?.acquireTime;
  const at = renewed ? new Date(renewed as unknown as string).getTime() : Number.NaN;
  const duration = lease.spec?.leaseDurationSeconds ?? 0;
  if (Number.isNaN(at) || at + duration * 1000 < now.getTime()) return null;
  return holder;
}

/** HTTP status of a client-node error, or null. */
function statusOf(err: unknown): number | null {
  const e = err as { code?: unknown; body?: unknown } | null;
  return e && typeof e.code === 'number' && 'body' in e ? e.code : null;
}

export class PlacementLease {
  readonly identity: string;
  private readonly durationSeconds: number;
  private readonly waitMillis: number;
  private readonly clock: () => Date;

  constructor(
    private readonly api: LeasesApi,
    readonly namespace: string,
    readonly name: string,
    opts: PlacementLeaseOptions = {},
  ) {
    this.identity = opts.identity ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
    this.durationSeconds = opts.durationSeconds ?? 15;
    this.waitMillis = opts.waitMillis ?? 30_000;
    this.clock = opts.clock ?? (() => new Date());
  }

  /** Runs `fn` while holding the lease. */
  async hold<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      await this.release();
    }
  }

  async acquire(): Promise<void> {
    const deadline = Date.now() + this.waitMillis;
    for (let attempt = 0; ; attempt++) {
      const lease = await this.read();
      if (lease === null) {
        await this.createEmpty();
        continue;
      }
      const now = this.clock();
      const holder = leaseHolder(lease, now);
      if (holder === null || holder === this.identity) {
        // As client-go counts them: every acquire by someone other than the last recorded holder.
        const transitions = (lease.spec?.leaseTransitions ?? 0) + (lease.spec?.holderIdentity !== this.identity ? 1 : 0);
        try {
          await this.api.patchNamespacedLease(
            {
              name: this.name,
              namespace: this.namespace,
              body: {
                metadata: { resourceVersion: lease.metadata?.resourceVersion },
                spec: {
                  holderIdentity: this.identity,
                  leaseDurationSeconds: this.durationSeconds,
                  acquireTime: microTime(now),
                  renewTime: microTime(now),
                  leaseTransitions: transitions,
                },
              },
            },
            mergePatch,
          );
          return;
        } catch (err) {
          if (statusOf(err) !== 409 && statusOf(err) !== 404) throw leaseFailure(`take lease ${this.namespace}/${this.name}`, err);
          continue; // someone else wrote it in between: read again
        }
      }
      if (Date.now() >= deadline) {
        throw new Error(
          `kubernetes: placement lease ${this.namespace}/${this.name} is held by ${holder} (renewed ${String(lease.spec?.renewTime ?? '?')}, for ${lease.spec?.leaseDurationSeconds ?? '?'} s); waited ${this.waitMillis} ms. Another worker is placing on this cluster; if it died, the lease expires on its own`,
        );
      }
      await new Promise((r) => setTimeout(r, Math.min(500, 25 * 2 ** Math.min(attempt, 4)) * (0.5 + Math.random())));
    }
  }

  async release(): Promise<void> {
    const lease = await this.read();
    if (!lease || lease.spec?.holderIdentity !== this.identity) return;
    try {
      await this.api.patchNamespacedLease(
        {
          name: this.name,
          namespace: this.namespace,
          body: { metadata: { resourceVersion: lease.metadata?.resourceVersion }, spec: { holderIdentity: null } },
        },
        mergePatch,
      );
    } catch (err) {
      if (statusOf(err) !== 409 && statusOf(err) !== 404) throw leaseFailure(`release lease ${this.namespace}/${this.name}`, err);
    }
  }

  private async read(): Promise<V1Lease | null> {
    try {
      return await this.api.readNamespacedLease({ name: this.name, namespace: this.namespace });
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw leaseFailure(`read lease ${this.namespace}/${this.name}`, err);
    }
  }

  private async createEmpty(): Promise<void> {
    try {
      await this.api.createNamespacedLease({
        namespace: this.namespace,
        body: { metadata: { name: this.name, labels: { 'app.kubernetes.io/managed-by': 'govloop' } }, spec: {} },
      });
    } catch (err) {
      if (statusOf(err) !== 409) throw leaseFailure(`create lease ${this.namespace}/${this.name}`, err);
    }
  }
}

function leaseFailure(what: string, err: unknown): Error {
  const code = statusOf(err);
  const hint = code === 403 ? ' (the worker needs get/create/patch on leases.coordination.k8s.io in this namespace; deploy/rbac.yaml has it)' : '';
  return new Error(`kubernetes: ${what}: ${code === null ? ((err as Error)?.message ?? String(err)) : `HTTP ${code}`}${hint}`, { cause: err });
}
