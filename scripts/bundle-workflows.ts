// Writes the workflow bundle once, for `govloop worker --workflow-bundle PATH` (or
// $GOVLOOP_WORKFLOW_BUNDLE): a worker that loads it starts without bundling workflows/ itself,
// the way Temporal's production sample deploys (style.md rule 14). Rebuild it with the code.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { bundleWorkflows } from '../workers/worker';

async function run(): Promise<void> {
  const args = z
    .tuple([z.string().min(1, 'the bundle path, e.g. dist/workflow-bundle.js')], { error: 'usage: npm run bundle:workflows -- PATH' })
    .safeParse(process.argv.slice(2));
  if (!args.success) throw new Error(`bundle:workflows: ${args.error.issues.map((i) => i.message).join('; ')}`);
  const out = resolve(args.data[0]);
  const bundle = await bundleWorkflows();
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, bundle.code);
  console.log(`workflow bundle written: ${out} (${Math.round(bundle.code.length / 1024)} KiB)`);
}

run().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
