import type { Command } from 'commander';
import { z } from 'zod';
import { loadConfig } from '../../config/load';
import { dataDir, readDevState } from '../../runtime/environment';
import { findTemporalCli } from '../../runtime/temporal-cli';
import { CliExit, Exit, parseOptions, printJson } from '../util';
import { settings } from '../../config/settings';

export function register(program: Command): void {
  program
    .command('doctor')
    .description('check this machine: config valid, temporal CLI found (built with go install if missing), where the ledger and server are')
    .option('--json', 'print JSON')
    .action(async (raw) => {
      const o = parseOptions(z.strictObject({ json: z.boolean().default(false) }), raw);
      const config = loadConfig();
      const cli = findTemporalCli({ onProgress: (m) => console.error(m) });
      const dir = dataDir(program.opts().dataDir);
      const dev = readDevState(dir);
      const report = {
        config: {
          policies: config.policies.name,
          cluster: config.cluster.name,
          nodes: config.cluster.nodes.length,
          gpus: config.cluster.nodes.reduce((s, n) => s + n.gpus, 0),
        },
        temporalCli: cli ?? null,
        temporal: settings().TEMPORAL_ADDRESS ?? dev?.temporalAddress ?? 'localhost:7233 (default)',
        ledger: settings().DATABASE_URL ? 'DATABASE_URL' : dev ? `govloop dev (${dev.databaseUrl})` : `embedded PGlite in ${dir}/ledger`,
        dataDir: dir,
      };
      if (o.json) printJson(report);
      else for (const [k, v] of Object.entries(report)) console.log(`${k.padEnd(12)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : v}`);
      if (!cli) throw new CliExit(Exit.Failure, 'no temporal CLI and no Go to build it: set TEMPORAL_CLI or install Go');
    });
}
