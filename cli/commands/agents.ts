import type { Command } from 'commander';
import { z } from 'zod';
import { getApproval, grantAccess, listAccess, pendingApprovals, revokeAccess } from '../../ledger/approvals';
import { type ApprovalAnswer, GovloopNotFoundError, taskOfApproval } from '../../sdk';
import { PLATFORM_ADMIN, type Principal, actorName, grantableRoles } from '../../governance/authz';
import { catalogRoles } from '../../governance/tools';
import { checkAccess, readableTenants } from '../../ledger/authz';
import { NameText, ReasonText } from '../../workflows/schemas';
import { type CommandContext, refused, withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, table, usd } from '../util';

const name = NameText;
const Decide = z.strictObject({ as: name.optional(), reason: ReasonText, json: z.boolean().default(false) });
const Approvals = z.strictObject({ tenant: name.optional(), as: name.optional(), json: z.boolean().default(false) });
const Access = z.strictObject({ tenant: name, user: name, role: name, as: name.optional(), json: z.boolean().default(false) });

/**
 * Approves or rejects through the task's workflow (it follows the decision at once). When the task
 * has already ended, the ledger still answers: the request was decided, or it expired.
 */
async function decide(ctx: CommandContext, kind: 'approve' | 'reject', approvalId: string, as: string | undefined, reason: string): Promise<ApprovalAnswer> {
  const gov = await ctx.gov();
  const d = { reason, ...(as !== undefined ? { as } : {}) };
  try {
    return kind === 'approve' ? await gov.approve(approvalId, d) : await gov.reject(approvalId, d);
  } catch (err) {
    if (!(err instanceof GovloopNotFoundError)) throw err;
    const row = await getApproval(await ctx.db(), approvalId);
    if (!row) throw new CliExit(Exit.Failure, `no approval request ${approvalId}`, { approvalId, code: 'not-found' });
    if (row.state === 'expired')
      return { recorded: false, approvalId, code: 'expired', message: `the request expired at ${row.expiresAt.toISOString()}`, state: row.state };
    return {
      recorded: false,
      approvalId,
      code: 'already-decided',
      message: `already ${row.state} by ${row.decidedBy} (task ${row.taskId} has ended)`,
      state: row.state,
    };
  }
}

/**
 * `access grant|revoke`: checks `p` may `access.manage` in the tenant and changes the grant in the
 * same transaction; a refusal is audited and exits 3. True when the grant changed.
 */
export async function changeAccess(
  ctx: CommandContext,
  p: Principal,
  verb: 'grant' | 'revoke',
  g: { tenant: string; user: string; role: string; by: string },
): Promise<boolean> {
  const r = await (
    await ctx.db()
  ).tx(async (c) => {
    const d = await checkAccess(c, p, 'access.manage', g.tenant, { detail: { verb, user: g.user, role: g.role } });
    if (!d.allowed) return d;
    return { allowed: true as const, changed: verb === 'grant' ? await grantAccess(c, g) : await revokeAccess(c, g) };
  });
  if (!r.allowed) throw refused(r, p);
  return r.changed;
}

function printDecision(a: ApprovalAnswer, json: boolean): void {
  if (json) printJson(a);
  else if (a.recorded) console.log(`${a.approvalId}: ${a.state} by ${a.by}${a.idempotent ? ' (already recorded)' : ''}`);
  else console.error(`${a.approvalId}: refused (${a.code}): ${a.message}`);
  if (!a.recorded) process.exitCode = Exit.Rejected;
}

export function register(program: Command): void {
  const dataDir = () => program.opts().dataDir as string | undefined;

  program
    .command('approvals')
    .description('tool calls waiting for a human approval, oldest first')
    .option('--tenant <tenant>')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(Approvals, raw);
      await withContext(dataDir(), async (ctx) => {
        const p = await ctx.principal(o.as, 'approvals');
        if (o.tenant) await ctx.allow(p, 'read', o.tenant);
        const rows = await pendingApprovals(await ctx.db(), o.tenant ?? (await readableTenants(await ctx.db(), p)) ?? undefined);
        if (o.json) return printJson(rows);
        if (rows.length === 0) return console.log('no approvals waiting');
        const now = Date.now();
        console.log(
          table(
            ['approval', 'tenant', 'tool', 'requester', 'cost so far', 'tier', 'waiting', 'expires in', 'args'],
            rows.map((r) => [
              r.approvalId,
              r.tenant,
              r.tool,
              r.requester,
              usd(r.costSoFarUsd),
              r.tier,
              `${Math.round((now - r.requestedAt.getTime()) / 1000)}s`,
              `${Math.round((r.expiresAt.getTime() - now) / 1000)}s`,
              r.argsDigest.slice(0, 19),
            ]),
          ),
        );
      });
    });

  for (const kind of ['approve', 'reject'] as const) {
    program
      .command(kind)
      .description(`${kind} a held tool call; exit 0 when recorded, 3 when refused (self-approval, missing-role, expired, already-decided)`)
      .argument('<approvalId>', 'as the step gate answered, e.g. support-agent-1a2b3c4d.a3')
      .option('--as <user>', 'the approver under auth: none (never the requester); with a credential, the credential says who')
      .requiredOption('--reason <text>', 'why (audited)')
      .option('--json', 'print JSON')
      .action(async (approvalId: string, raw) => {
        const o = parseOptions(Decide, raw);
        taskOfApproval(approvalId);
        await withContext(dataDir(), async (ctx) => printDecision(await decide(ctx, kind, approvalId, o.as, o.reason), o.json));
      });
  }

  program
    .command('resolve')
    .description('after a failed compensation (NeedsOperator): say the side effect was undone by hand; rollback goes on')
    .argument('<taskId>')
    .option('--as <user>', 'the operator (auth: none only)')
    .requiredOption('--reason <text>', 'what was done (audited)')
    .option('--json', 'print JSON')
    .action(async (taskId: string, raw) => {
      const o = parseOptions(Decide, raw);
      await withContext(dataDir(), async (ctx) => {
        const r = await (await ctx.gov()).resolve(taskId, { reason: o.reason, ...(o.as !== undefined ? { as: o.as } : {}) });
        if (o.json) printJson({ taskId, ...r });
        else console.log(`${taskId}: resolved; now ${r.state}`);
      });
    });

  const access = program
    .command('access')
    .description("who holds which role in a tenant: viewer, requester, approver, budget-owner, tenant-admin, and the tool catalog's approver roles");
  for (const verb of ['grant', 'revoke'] as const) {
    access
      .command(verb)
      .description(`${verb} a role (audited)`)
      .requiredOption('--tenant <tenant>')
      .requiredOption('--user <user>')
      .requiredOption('--role <role>')
      .option('--as <user>', 'who does it (auth: none only; audited)')
      .option('--json', 'print JSON')
      .action(async (raw) => {
        const o = parseOptions(Access, raw);
        await withContext(dataDir(), async (ctx) => {
          const roles = grantableRoles(catalogRoles(ctx.config().tools));
          if (!roles.includes(o.role)) {
            const hint = o.role === PLATFORM_ADMIN ? 'platform-admin comes from config/auth.yaml platformAdmins only' : `one of ${roles.join(', ')}`;
            throw new CliExit(Exit.BadInput, `invalid input:\n  role: ${hint}`, { errors: [{ path: 'role', message: hint }] });
          }
          const p = await ctx.principal(o.as, `access.${verb}`);
          const g = { tenant: o.tenant, user: o.user, role: o.role, by: actorName(p) };
          const changed = await changeAccess(ctx, p, verb, g);
          if (o.json) printJson({ ...g, action: verb, changed });
          else console.log(`${verb} ${o.role} to ${o.user} in ${o.tenant}: ${changed ? 'done' : 'no change'}`);
        });
      });
  }
  access
    .command('list')
    .description('roles held, by tenant and user')
    .option('--tenant <tenant>')
    .option('--as <user>', 'who asks (auth: none only)')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(Approvals, raw);
      await withContext(dataDir(), async (ctx) => {
        const p = await ctx.principal(o.as, 'access.list');
        if (o.tenant) await ctx.allow(p, 'read', o.tenant);
        const rows = await listAccess(await ctx.db(), o.tenant ?? (await readableTenants(await ctx.db(), p)) ?? undefined);
        if (o.json) return printJson(rows);
        console.log(
          table(
            ['tenant', 'user', 'role', 'granted by', 'at'],
            rows.map((r) => [r.tenant, r.user, r.role, r.grantedBy, r.grantedAt.toISOString()]),
          ),
        );
      });
    });
}
