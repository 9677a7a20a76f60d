import { Command, CommanderError } from 'commander';
import { GovloopAccessError, GovloopInputError, GovloopNotFoundError, GovloopStateError, GovloopWorkerError } from '../sdk';
import { ConfigError } from '../config/load';
import { CliExit, Exit } from './util';
import * as agents from './commands/agents';
import * as capacity from './commands/capacity';
import * as demo from './commands/demo';
import * as dev from './commands/dev';
import * as doctor from './commands/doctor';
import * as ledger from './commands/ledger';
import * as onboardCmd from './commands/onboard';
import * as programCmd from './commands/program';
import * as reconcile from './commands/reconcile';
import * as serve from './commands/serve';
import * as slo from './commands/slo';
import * as submit from './commands/submit';
import * as tasks from './commands/tasks';

const program = new Command('govloop')
  .description('govloop: every AI workload inside a durable governance loop (admission → translation → dispatch → metering → enforcement)')
  .option('--data-dir <dir>', 'state of govloop dev / embedded ledger (default: $GOVLOOP_DATA_DIR or ~/.govloop)')
  .showHelpAfterError()
  .exitOverride();

for (const m of [dev, demo, submit, tasks, agents, capacity, ledger, onboardCmd, programCmd, reconcile, slo, serve, doctor]) m.register(program);

function wantsJson(): boolean {
  return process.argv.includes('--json');
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Commander already printed the problem (unknown option, missing argument); help exits 0.
    process.exitCode = err.exitCode === 0 ? Exit.Ok : Exit.BadInput;
  } else if (err instanceof CliExit) {
    if (wantsJson() && err.json !== undefined) console.log(JSON.stringify({ error: err.message, ...(err.json as object) }, null, 2));
    console.error(err.message);
    process.exitCode = err.code;
  } else if (err instanceof GovloopInputError) {
    if (wantsJson()) console.log(JSON.stringify({ error: 'invalid input', errors: err.errors }, null, 2));
    console.error(err.message);
    process.exitCode = Exit.BadInput;
  } else if (err instanceof GovloopAccessError) {
    if (wantsJson()) console.log(JSON.stringify({ error: err.message, code: err.code }, null, 2));
    console.error(`refused (${err.code})`);
    console.error(err.message);
    process.exitCode = Exit.Rejected;
  } else if (err instanceof GovloopNotFoundError || err instanceof GovloopStateError || err instanceof GovloopWorkerError) {
    if (wantsJson()) console.log(JSON.stringify({ error: err.message, ...(err instanceof GovloopWorkerError ? { taskId: err.taskId } : {}) }, null, 2));
    console.error(err.message);
    process.exitCode = Exit.Failure;
  } else if (err instanceof ConfigError) {
    console.error(err.message);
    process.exitCode = Exit.BadInput;
  } else {
    console.error(`govloop: ${(err as Error).message ?? String(err)}`);
    process.exitCode = Exit.Failure;
  }
}
