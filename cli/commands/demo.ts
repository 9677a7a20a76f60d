import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { z } from 'zod';
import { loadConfig, loadProgramPlan } from '../../config/load';
import { scopeLabel } from '../../governance/budget-scope';
import { parseIntentText, type Intent } from '../../governance/intent';
import { setBudget } from '../../ledger/budgets';
import { rollUp, rollupUsageBy } from '../../ledger/rollups';
import { GovloopClient, type TaskStatus } from '../../sdk';
import { FINAL_STATES, TASK_QUEUE_CONTROL } from '../../workflows/messages';
import { DEMO_PLATFORM_OWNER, ladderDrill, onboardLandingPaths, startDemoProgram } from './demo-program';
import { programReport } from './program';
import { Exit, CliExit, parseOptions, table, usd } from '../util';

const examplesDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'config', 'examples');
const port = z.coerce.number().int().min(1).max(65535);
const DemoOptions = z.strictObject({
  keep: z.boolean().default(false),
  uiPort: port.default(8233),
  daySeconds: z.coerce.number({ error: 'must be a number of seconds' }).positive().max(86_400).default(2),
});

/** A deterministic stand-in for a hosted model: the token counts and tool calls of a triage agent. */
const scriptedAgent = [
  { tokensIn: 1200, tokensOut: 220, contextTokens: 1200 },
  { tokensIn: 300, tokensOut: 40, contextTokens: 1700, tool: 'search.web' },
  { tokensIn: 2100, tokensOut: 380, contextTokens: 2100 },
  { tokensIn: 250, tokensOut: 30, contextTokens: 2600, tool: 'search.web' },
  { tokensIn: 2900, tokensOut: 510, contextTokens: 2900 },
  { tokensIn: 3400, tokensOut: 620, contextTokens: 3400 },
];

export function register(program: Command): void {
  program
    .command('demo')
    .description('the main job: start everything embedded, run the example intents, show outcomes and showback by team')
    .option('--keep', 'keep govloop (and the Temporal UI) running after the demo until Ctrl-C')
    .option('--ui-port <n>', 'Temporal UI port with --keep', '8233')
    .option('--day-seconds <n>', 'seconds in a day of the migration program the demo runs (default 2: its 90 days in 3 minutes at most)')
    .action(async (raw) => {
      const o = parseOptions(DemoOptions, raw);
      const given = program.opts().dataDir as string | undefined;
      const dir = given ?? mkdtempSync(join(tmpdir(), 'govloop-demo-'));
      const config = loadConfig();
      const plan = loadProgramPlan();
      // The migration program's platform owner signs with an API key: a platform admin by config.
      config.auth.platformAdmins = [...config.auth.platformAdmins, DEMO_PLATFORM_OWNER];
      // The stack (worker, dev server, PGlite) loads only when the demo runs, not with every CLI command.
      const [{ installLogging }, { startStack }] = await Promise.all([import('../../runtime/logging'), import('../../runtime/stack')]);
      installLogging({ file: join(dir, 'worker.log'), level: 'warn' });
      const t0 = Date.now();
      const say = (m: string) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${m}`);
      const stack = await startStack({ dataDir: dir, config, headless: !o.keep, uiPort: o.uiPort, onProgress: say });
      try {
        say(`up: Temporal ${stack.address}, ledger ${stack.ledgerSource}${stack.uiUrl ? `, UI ${stack.uiUrl}` : ''}`);
        for (const [scope, usdLimit] of [
          [{ tenant: 'acme', team: 'search' }, 500],
          [{ tenant: 'acme', team: 'research' }, 2000],
          [{ tenant: 'acme', team: 'support' }, 50],
          [{ tenant: 'globex' }, 20],
        ] as const) {
          await setBudget(stack.db, scope, 'month', usdLimit, 'demo');
          say(`budget ${scopeLabel(scope)} month ${usd(usdLimit)}`);
        }
        const prog = await startDemoProgram(stack.db, stack.client, { plan, daySeconds: o.daySeconds, taskQueue: TASK_QUEUE_CONTROL, say });
        const programRun = prog.drive(plan.phases.length * 90 * o.daySeconds * 1000 + 60_000);
        programRun.catch(() => undefined);
        const intents: Intent[] = [];
        for (const f of readdirSync(examplesDir)
          .filter((f) => f.endsWith('.yaml'))
          .sort()) {
          const parsed = parseIntentText(readFileSync(join(examplesDir, f), 'utf8'));
          if (parsed.ok) intents.push(parsed.value);
          else say(`${f}: invalid intent, not submitted (${parsed.errors.map((e) => `${e.path}: ${e.message}`).join('; ')})`);
        }
        const gov = new GovloopClient(stack.client);
        const ids: string[] = [];
        for (const intent of intents) {
          const a = await gov.submit(intent, { requester: 'demo' });
          ids.push(a.taskId);
          say(`submitted ${intent.name}: ${a.decision}${a.reasons.length ? ` (${a.reasons.map((r) => r.code).join(', ')})` : ''}`);
        }
        const agentId = ids[intents.findIndex((i) => i.kind === 'agent')];
        const agentRun = agentId ? runAgent(gov, agentId, say) : Promise.resolve();

        // Progress: a line whenever a task changes state, and every few seconds for running jobs.
        const last = new Map<string, string>();
        let lastTick = 0;
        let statuses: TaskStatus[] = [];
        for (;;) {
          statuses = await Promise.all(ids.map((id) => gov.status(id)));
          for (const s of statuses) {
            if (last.get(s.taskId) !== s.state) {
              last.set(s.taskId, s.state);
              say(`${s.name.padEnd(20)} ${s.state}${s.nodes.length ? ` on ${s.nodes.join(',')}` : ''}`);
            }
          }
          if (statuses.every((s) => FINAL_STATES.includes(s.state))) break;
          if (Date.now() - lastTick > 3000) {
            lastTick = Date.now();
            const running = statuses.filter((s) => s.state === 'Running');
            if (running.length)
              say(
                `running: ${running.map((s) => `${s.name} ${s.progress !== null ? `${Math.round(s.progress * 100)}%` : `${s.usage.steps} steps`} ${usd(s.costUsd)}`).join(' | ')}`,
              );
          }
          await new Promise((r) => setTimeout(r, 500));
        }
        await agentRun;

        // The loop phase's evidence: two landing paths onboarded, and every step of the budget ladder.
        await onboardLandingPaths(dir, say);
        const agentIntent = intents.find((i) => i.kind === 'agent');
        if (agentIntent)
          await ladderDrill(stack.db, stack.client, gov, {
            config,
            taskQueue: TASK_QUEUE_CONTROL,
            agentIntent: { ...agentIntent, name: `${agentIntent.name}-drill` },
            say,
            restoreUsd: 50,
          });
        const programStatus = await programRun;
        say(`program: all ${programStatus.phases.length} phases closed on day ${programStatus.day}`);

        console.log('\nOutcomes');
        console.log(
          table(
            ['task', 'kind', 'decision', 'state', 'reason', 'GPU-hours', 'tokens', 'cost'],
            statuses.map((s) => [
              s.name,
              s.kind,
              s.decision,
              s.state,
              s.reasons.map((r) => r.code).join(', ') || '-',
              s.usage.gpuHours,
              s.usage.tokensIn + s.usage.tokensOut + s.usage.tokensProcessed,
              usd(s.costUsd),
            ]),
          ),
        );
        await rollUp(stack.db, { lateArrivalSeconds: config.policies.metering.lateArrivalSeconds });
        const rows = await rollupUsageBy(stack.db, ['tenant', 'team'], new Date(0), new Date(8.64e15));
        console.log("\nShowback by team (from the ledger's usage rollups; `govloop report` for unit costs)");
        console.log(
          table(
            ['tenant', 'team', 'tasks', 'GPU-hours', 'tokens', 'cost'],
            rows.map((r) => [String(r.tenant), String(r.team), r.tasks ?? '-', r.gpuHours, r.tokens, usd(r.costUsd)]),
          ),
        );
        console.log(`\nThe migration program (govloop program report)\n\n${programReport(programStatus)}`);
        const expected = new Map(intents.map((i, k) => [ids[k], i.name]));
        const failed = statuses.filter((s) => s.state === 'Failed');
        if (failed.length) throw new CliExit(Exit.Failure, `demo tasks failed: ${failed.map((s) => expected.get(s.taskId)).join(', ')}`);
        if (o.keep) {
          console.log(`\ngovloop keeps running: Temporal UI ${stack.uiUrl}, data in ${dir}. Ctrl-C stops it.`);
          await new Promise<void>((resolve) => {
            process.once('SIGINT', () => resolve());
            process.once('SIGTERM', () => resolve());
          });
        }
      } finally {
        await stack.stop();
        if (!given && !o.keep) rmSync(dir, { recursive: true, force: true });
      }
    });
}

async function runAgent(gov: GovloopClient, taskId: string, say: (m: string) => void): Promise<void> {
  for (const [i, step] of scriptedAgent.entries()) {
    const a = await gov.step(taskId, step);
    say(`support-agent step ${i + 1}${step.tool ? ` (tool ${step.tool})` : ''}: ${a.answer}${a.reason ? ` ${a.reason.code}` : ''}, ${usd(a.costUsd)} so far`);
    if (a.answer === 'deny') return;
  }
  await gov.finish(taskId, 'support-agent');
}
