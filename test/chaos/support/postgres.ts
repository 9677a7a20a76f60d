/**
 * The chaos suite's PostgreSQL, as a test file drives it: the private cluster of the suite's
 * global setup (test/chaos/global-setup.ts), never the machine's cluster on 5432.
 *
 * Issue 11 asks for `pg_ctlcluster restart`. That is Debian's wrapper around pg_ctl for the
 * clusters it registers under /etc/postgresql; this cluster is a private one in a temp dir, so
 * pg_ctl itself is the equivalent: the same fast shutdown (every session ended with 57P01, a
 * checkpoint written) and the same start.
 */
import { inject } from 'vitest';
import { startPgCluster, stopPgCluster } from './pg-cluster';

const cluster = () => inject('chaosPostgres');

/** Stops PostgreSQL the way a restart does (-m fast): every open session is ended. */
export async function stopPostgres(): Promise<void> {
  await stopPgCluster(cluster(), 'fast');
}

/** Starts it again; resolves once it accepts connections. */
export async function startPostgres(): Promise<void> {
  await startPgCluster(cluster());
}

/** pg_ctl stop -m fast, then start, then wait until it accepts connections. */
export async function restartPostgres(): Promise<void> {
  await stopPostgres();
  await startPostgres();
}
