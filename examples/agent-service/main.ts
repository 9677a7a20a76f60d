/**
 * The example agent service: runs N scripted agents (a deterministic fake model, no weights)
 * through govloop's step gate at once and prints what it reported next to what govloop answered.
 *
 *   govloop dev                                   # in one terminal
 *   npx tsx examples/agent-service/main.ts --tasks 50 --tenant acme --approver alice
 *
 * Identities: the service submits and steps with its own credential ($GOVLOOP_TOKEN or
 * $GOVLOOP_API_KEY); the stand-in approver decides with another person's ($GOVLOOP_APPROVER_TOKEN).
 * Under `auth: none` (govloop dev) `--requester` and `--approver` are typed names, marked unverified.
 * Before an approved refund runs, the service checks govloop's signed approval token against the
 * public key in `--public-key` (default: the dev data dir's key).
 *
 * Compare with the ledger: govloop usage --by model --tenant acme --period today
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadPublicKey } from '../../identity/signing';
import { verifyApprovalToken } from '../../identity/approval-token';
import { dataDir } from '../../runtime/environment';
import { z } from 'zod';
import { GovloopClient, GovloopInputError } from '../../sdk';
import { table } from '../../cli/util';
import { type RunOptions, runAgents } from './service';

const Options = z.strictObject({
  tasks: z.coerce.number().int().positive().max(10_000).default(10),
  concurrency: z.coerce.number().int().positive().max(1000).default(50),
  steps: z.coerce.number().int().positive().max(200).default(9),
  tenant: z.string().min(1).default('acme'),
  requester: z.string().min(1).default('agent-service'),
  approver: z.string().min(1).optional(),
  refunds: z.boolean().default(false),
  publicKey: z.string().min(1).optional(),
});

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      tasks: { type: 'string' },
      concurrency: { type: 'string' },
      steps: { type: 'string' },
      tenant: { type: 'string' },
      requester: { type: 'string' },
      approver: { type: 'string' },
      refunds: { type: 'boolean' },
      'public-key': { type: 'string' },
    },
  });
  const { 'public-key': publicKey, ...rest } = values;
  const parsed = Options.safeParse({ ...rest, ...(publicKey ? { publicKey } : {}) });
  if (!parsed.success) throw new GovloopInputError(parsed.error.issues.map((i) => ({ path: `--${i.path.join('.')}`, message: i.message })));
  const o = parsed.data;
  const gov = await GovloopClient.connect();
  // The approver is another person: their own credential, never the service's.
  const approverGov = process.env.GOVLOOP_APPROVER_TOKEN ? gov.withCredential(process.env.GOVLOOP_APPROVER_TOKEN) : gov;
  const keyFile = o.publicKey ?? join(dataDir(), 'govloop-signing-key.pem');
  const key = existsSync(keyFile) ? loadPublicKey(keyFile) : null;
  if (o.refunds && !key) console.warn(`no govloop public key at ${keyFile}: approved refunds are refused (pass --public-key)`);
  const checkApproval = (tool: string, args: unknown, token: string | null | undefined) => {
    if (!key) return 'no govloop public key to check the approval token with';
    const c = verifyApprovalToken(key, token, { tool, args });
    return c.ok ? null : `${c.code}: ${c.message}`;
  };
  const tools = ['search.web', 'db.read', ...(o.refunds ? ['payments.refund'] : [])];
  const runs: RunOptions[] = Array.from({ length: o.tasks }, (_, i) => ({
    requester: o.requester,
    script: { seed: i + 1, steps: o.steps, tools },
    intent: {
      kind: 'agent',
      name: `support-agent-${i}`,
      attribution: { tenant: o.tenant, team: 'support', project: 'helpdesk', model: 'llama-3-70b', useCase: 'ticket-triage' },
      caps: { maxSteps: 40, maxToolCalls: 20, maxContextTokens: 64_000, maxTokens: 200_000, maxUsd: 2 },
      riskClass: o.refunds ? 'high' : 'medium',
      tools,
      resources: { gpus: 0 },
    },
    checkApproval,
    ...(o.approver || process.env.GOVLOOP_APPROVER_TOKEN
      ? {
          approver: async (id: string) =>
            void (await approverGov.approve(id, {
              reason: 'example service auto-approval',
              ...(o.approver && !process.env.GOVLOOP_APPROVER_TOKEN ? { as: o.approver } : {}),
            })),
        }
      : {}),
  }));
  const started = Date.now();
  const reports = await runAgents(gov, runs, o.concurrency);
  const seconds = (Date.now() - started) / 1000;
  const byModel = new Map<string, { tokensIn: number; tokensOut: number }>();
  for (const r of reports) {
    for (const [m, t] of Object.entries(r.reported)) {
      const cur = byModel.get(m) ?? { tokensIn: 0, tokensOut: 0 };
      byModel.set(m, { tokensIn: cur.tokensIn + t.tokensIn, tokensOut: cur.tokensOut + t.tokensOut });
    }
  }
  const states = new Map<string, number>();
  for (const r of reports) states.set(r.state, (states.get(r.state) ?? 0) + 1);
  console.log(`${reports.length} agents in ${seconds.toFixed(1)} s: ${[...states].map(([s, n]) => `${n} ${s}`).join(', ')}`);
  console.log(
    table(
      ['model', 'tokens in (reported)', 'tokens out (reported)'],
      [...byModel].map(([m, t]) => [m, t.tokensIn, t.tokensOut]),
    ),
  );
  console.log(`compare: govloop usage --by model --tenant ${o.tenant} --period today`);
  await gov.client.connection.close();
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : String(err));
  process.exit(err instanceof GovloopInputError ? 2 : 1);
});
