import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { z } from 'zod';
import { parseIntentText } from '../../governance/intent';
import { outcomeOf, type TaskOutcome } from '../../sdk';
import { withContext } from '../context';
import { CliExit, Exit, parseOptions, printJson, usd } from '../util';
import { settings } from '../../config/settings';

const Options = z.strictObject({
  wait: z.boolean().default(false),
  json: z.boolean().default(false),
  as: z.string().min(1).max(128).optional(),
  id: z.string().min(1).optional(),
});

export function printOutcome(o: TaskOutcome, json: boolean): void {
  if (json) return printJson(o);
  console.log(`${o.taskId}: ${o.decision} → ${o.state}${o.costUsd !== null ? `, cost ${usd(o.costUsd)}` : ''}`);
  for (const r of o.reasons) console.log(`  ${r.code}: ${r.message} (limit ${r.limit}, requested ${r.requested}, policy ${r.policy})`);
}

export function register(program: Command): void {
  program
    .command('submit')
    .description('submit an intent (YAML or JSON file, "-" for stdin); prints the admission decision, or the outcome with --wait')
    .argument('<file>', 'intent file')
    .option('--wait', 'wait until the task ends')
    .option('--json', 'print one JSON object')
    .option('--as <user>', 'the requester under auth: none (default $USER); with a credential, the credential says who')
    .option('--id <taskId>', 'task id (default: name + random suffix)')
    .action(async (file: string, raw) => {
      const opts = parseOptions(Options, raw);
      let text: string;
      try {
        text = readFileSync(file === '-' ? 0 : file, 'utf8');
      } catch (err) {
        throw new CliExit(Exit.BadInput, `cannot read ${file}: ${(err as Error).message}`);
      }
      const parsed = parseIntentText(text);
      if (!parsed.ok) {
        throw new CliExit(Exit.BadInput, `invalid intent ${file}:\n${parsed.errors.map((e) => `  ${e.path}: ${e.message}`).join('\n')}`, {
          errors: parsed.errors,
        });
      }
      await withContext(program.opts().dataDir, async (ctx) => {
        const gov = await ctx.gov();
        const requester = opts.as ?? (gov.credential ? undefined : (settings().USER ?? 'cli'));
        const admission = await gov.submit(parsed.value, { ...(requester !== undefined ? { requester } : {}), ...(opts.id ? { taskId: opts.id } : {}) });
        let outcome: TaskOutcome = {
          taskId: admission.taskId,
          decision: admission.decision,
          reasons: admission.reasons,
          state: admission.state,
          usage: null,
          costUsd: null,
        };
        if (opts.wait && admission.decision !== 'rejected') outcome = outcomeOf(await gov.result(admission.taskId));
        else if (admission.decision === 'rejected') outcome = outcomeOf(await gov.result(admission.taskId));
        printOutcome(outcome, opts.json);
        if (outcome.decision === 'rejected') process.exitCode = Exit.Rejected;
        else if (opts.wait && outcome.state !== 'Succeeded') process.exitCode = outcome.state === 'CapExceeded' ? Exit.Rejected : Exit.Failure;
      });
    });
}
