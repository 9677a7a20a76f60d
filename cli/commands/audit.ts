import { existsSync, statSync } from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { join } from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import { type AuditVerdict, verifyAudit } from '../../ledger/audit';
import {
  AuditCheckpointRefused,
  CHECKPOINT_FILE,
  type AuditCheckpoints,
  auditPaths,
  readAuditCheckpoints,
  writeAuditCheckpoint,
} from '../../ledger/audit-checkpoints';
import { keyIdOf, loadOrCreateSigningKey, loadPublicKey } from '../../identity/signing';
import { dataDir as dataDirOf } from '../../runtime/environment';
import { type CommandContext, withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson } from '../util';

const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();
const isFile = (p: string) => existsSync(p) && statSync(p).isFile();

const VerifyOptions = z.strictObject({
  checkpoints: z.string().min(1).refine(isDir, 'no such directory').optional(),
  publicKey: z.string().min(1).refine(isFile, 'no such file').optional(),
  json: z.boolean().default(false),
});
const CheckpointOptions = z.strictObject({
  checkpoints: z.string().min(1).optional(),
  key: z.string().min(1).optional(),
  json: z.boolean().default(false),
});

/** policies.audit's paths, nulls resolved under the command's data dir. */
const configuredPaths = (ctx: CommandContext) => auditPaths(ctx.config().policies.audit, dataDirOf(ctx.dataDir));

function describe(v: AuditVerdict, cps: AuditCheckpoints | null, dir: string): string {
  const lines: string[] = [];
  if (v.ok) {
    const c = v.checkpoints;
    lines.push(
      `audit chain intact: ${v.rows} rows; ${c ? `${c.verified} signed checkpoint${c.verified === 1 ? '' : 's'} agree, up to row ${c.headId ?? '—'} (${c.file})` : `no checkpoints in ${dir}: the chain was checked by itself`}`,
    );
  } else if (v.firstBadId !== null) {
    lines.push(`audit chain broken at row ${v.firstBadId} (${v.problem}); ${v.rows} rows`, `  ${v.message}`);
  } else {
    lines.push(`audit checkpoints broken at line ${v.checkpointLine} of ${cps?.file ?? dir} (${v.problem}); ${v.rows} rows`, `  ${v.message}`);
  }
  for (const f of v.checkpointFindings ?? [])
    if (v.ok || v.firstBadId !== null || f.line !== v.checkpointLine) lines.push(`  also: ${f.message} (${f.problem})`);
  if (!v.ok) lines.push('  runbook: runbooks/audit-verify-failed.md');
  return lines.join('\n');
}

/** `govloop audit verify` and `govloop audit checkpoint` (decision 0019). */
export function registerAuditCommands(audit: Command, dataDir: () => string | undefined): void {
  audit
    .command('verify')
    .description('recompute the hash chain and compare it with the signed checkpoints; exit 4 naming the first row (or checkpoint line) that does not fit')
    .option('--checkpoints <dir>', `directory of ${CHECKPOINT_FILE} (default: policies.audit.checkpointDir, else <data dir>/audit-checkpoints)`)
    .option('--public-key <file>', 'PEM public key (or the signing key itself) the checkpoints were signed with (default: policies.audit.signingKeyFile)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(VerifyOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const paths = configuredPaths(ctx);
        const dir = o.checkpoints ?? paths.checkpointDir;
        const file = join(dir, CHECKPOINT_FILE);
        let cps: AuditCheckpoints | null = null;
        if (existsSync(file)) {
          const keyFile = o.publicKey ?? paths.signingKeyFile;
          if (!isFile(keyFile))
            throw new CliExit(Exit.Failure, `${file} holds checkpoints, but there is no key to check them with at ${keyFile}: give --public-key FILE`);
          let publicKey: KeyObject;
          try {
            publicKey = loadPublicKey(keyFile);
          } catch (err) {
            throw new CliExit(Exit.BadInput, `invalid options:\n  --public-key: ${(err as Error).message}`);
          }
          cps = await readAuditCheckpoints(dir, publicKey);
        } else if (o.checkpoints !== undefined) {
          throw new CliExit(Exit.Failure, `no ${CHECKPOINT_FILE} in ${dir}`);
        }
        const v = await verifyAudit(await ctx.db(), cps ? { checkpoints: cps } : {});
        if (o.json) printJson(v);
        else console.log(describe(v, cps, dir));
        if (!v.ok) process.exitCode = Exit.AuditBroken;
      });
    });

  audit
    .command('checkpoint')
    .description('append a signed checkpoint of the chain head now (the auditCheckpoint schedule does it every policies.audit.checkpointEverySeconds)')
    .option('--checkpoints <dir>', 'directory to append to (default: policies.audit.checkpointDir, else <data dir>/audit-checkpoints)')
    .option('--key <file>', 'Ed25519 signing key, created if missing (default: policies.audit.signingKeyFile)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(CheckpointOptions, raw);
      await withContext(dataDir(), async (ctx) => {
        const paths = configuredPaths(ctx);
        const dir = o.checkpoints ?? paths.checkpointDir;
        const key = loadOrCreateSigningKey(o.key ?? paths.signingKeyFile);
        let r;
        try {
          r = await writeAuditCheckpoint(await ctx.db(), { dir, key });
        } catch (err) {
          if (err instanceof AuditCheckpointRefused) throw new CliExit(Exit.AuditBroken, `no checkpoint written: ${err.message}`);
          throw err;
        }
        const c = r.checkpoint;
        const out = { file: r.file, written: r.written, seq: c?.seq ?? null, headId: c?.headId ?? null, rows: c?.rows ?? null, keyId: keyIdOf(key.publicKey) };
        if (o.json) return printJson(out);
        if (!c) return console.log(`the audit log is empty: nothing to checkpoint (${r.file})`);
        console.log(
          r.written
            ? `checkpoint ${c.seq}: rows ${c.prevHeadId + 1}..${c.headId} (${c.rows} in all), signed by key ${c.keyId}, appended to ${r.file}`
            : `no rows since checkpoint ${c.seq} (head row ${c.headId}): nothing written`,
        );
      });
    });
}
