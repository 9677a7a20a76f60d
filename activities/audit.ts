import { ApplicationFailure, log } from '@temporalio/activity';
import type { GovConfig } from '../config/load';
import { type SigningKey, loadOrCreateSigningKey } from '../identity/signing';
import { AuditCheckpointRefused, auditPaths, writeAuditCheckpoint } from '../ledger/audit-checkpoints';
import type { Db } from '../ledger/db';

/** What one checkpoint run did; small on purpose (it lands in the workflow's history, the row hashes do not). */
export interface CheckpointRun {
  file: string;
  written: boolean;
  seq: number | null;
  headId: number | null;
  rows: number | null;
  keyId: string;
}

/**
 * The auditCheckpoint schedule's activity (decision 0019). Paths come from `policies.audit`; the
 * worker resolves their nulls against its data dir (runtime/stack.ts, `govloop worker`), and what is
 * still null here is resolved against `dataDir()`, which the worker injects (runtime/environment.ts:
 * $GOVLOOP_DATA_DIR or ~/.govloop). Read at each run, like the rest of the config the activities use.
 */
export function createAuditActivities({ db, config, dataDir }: { db: Db; config: GovConfig; dataDir?: () => string }) {
  let cached: { path: string; key: SigningKey } | undefined;
  const signingKey = (path: string): SigningKey => {
    if (cached?.path !== path) cached = { path, key: loadOrCreateSigningKey(path) };
    return cached.key;
  };
  return {
    /** Appends a signed checkpoint of the audit chain's head, or nothing when the head did not move. */
    async checkpointAudit(): Promise<CheckpointRun> {
      if (!dataDir) throw ApplicationFailure.nonRetryable('the worker gave the activities no data dir to resolve policies.audit paths against', 'NoDataDir');
      const paths = auditPaths(config.policies.audit, dataDir());
      const key = signingKey(paths.signingKeyFile);
      try {
        const r = await writeAuditCheckpoint(db, { dir: paths.checkpointDir, key });
        const c = r.checkpoint;
        if (r.written) log.info('audit checkpoint written', { file: r.file, seq: c?.seq, headId: c?.headId });
        return { file: r.file, written: r.written, seq: c?.seq ?? null, headId: c?.headId ?? null, rows: c?.rows ?? null, keyId: key.keyId };
      } catch (err) {
        // The ledger no longer matches what was signed: retrying cannot help, a person must look.
        if (err instanceof AuditCheckpointRefused) throw ApplicationFailure.nonRetryable(err.message, 'AuditCheckpointRefused');
        throw err;
      }
    },
  };
}
