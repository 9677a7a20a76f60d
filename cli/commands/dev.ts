import type { Command } from 'commander';
import { DEFAULT_STOP_MARGIN_SECONDS } from '../../cluster/kubernetes/options';
import { settings } from '../../config/settings';
import { dataDir, readDevState } from '../../runtime/environment';
import { CliExit, Exit, parseOptions } from '../util';
import { DevOptions, WorkerOptions } from './dev-options';

export function register(program: Command): void {
  program
    .command('dev')
    .description('run everything on this machine: Temporal dev server, ledger, simulated cluster, workers (Ctrl-C stops all)')
    .option('--port <n>', 'Temporal frontend port', '7233')
    .option('--ui-port <n>', 'Temporal UI port', '8233')
    .option('--ledger-port <n>', 'port of the embedded ledger (default: any free port)')
    .option('--headless', 'no Temporal UI')
    .action(async (raw) => {
      const o = parseOptions(DevOptions, raw);
      const dir = dataDir(program.opts().dataDir);
      if (readDevState(dir)) throw new CliExit(Exit.Failure, `govloop dev is already running for ${dir}`);
      // The stack (worker, Temporal dev server, PGlite) loads only here: other commands start in a fraction of the time.
      const { runDev } = await import('./dev-run');
      await runDev(o, dir);
    });

  program
    .command('worker')
    .description('run the control and dispatch workers against TEMPORAL_ADDRESS and DATABASE_URL (or a running govloop dev)')
    .option('--task-queue <name>', 'control task queue (default $GOVLOOP_TASK_QUEUE or the control queue)')
    .option('--cluster <name>', 'simulated cluster name (default: config/cluster.yaml)')
    .option('--no-controllers', 'start no budget controllers and no schedules (rollup, audit checkpoint, reconcile: another worker pool owns them)')
    .option(
      '--backend <kind>',
      'cluster backend: simulated | kubernetes (KUBECONFIG, ~/.kube/config or in-cluster); default $GOVLOOP_CLUSTER_BACKEND or simulated',
    )
    .option('--k8s-namespace <ns>', 'namespace of the Jobs (kubernetes backend); default $GOVLOOP_K8S_NAMESPACE or govloop')
    .option(
      '--k8s-checkpoint-grace <seconds>',
      'least preemption grace on Kubernetes: the pods see the checkpoint request through the downward API within about a minute, then save; the longer of this and policies.preemption.graceMillis is waited; default $GOVLOOP_K8S_CHECKPOINT_GRACE_SECONDS or 90',
    )
    .option(
      '--k8s-stop-margin <seconds>',
      `how late after a task's run limit the Job controller may stop its Job (its sync, a controller-manager failover, clock skew); the limit set as activeDeadlineSeconds is this much shorter than the caps leave; default $GOVLOOP_K8S_STOP_MARGIN_SECONDS or ${DEFAULT_STOP_MARGIN_SECONDS}`,
    )
    .option(
      '--workflow-bundle <path>',
      'a workflow bundle pre-built by `npm run bundle:workflows -- PATH` from this same checkout, instead of bundling workflows/ at every start (seconds of CPU); default $GOVLOOP_WORKFLOW_BUNDLE',
    )
    .option(
      '--k8s-placement <mode>',
      "who picks the nodes (kubernetes backend): govloop (pins each Job to the nodes governance/placement.ts chooses from the Nodes' govloop.io/* labels) | scheduler (the kube-scheduler); default $GOVLOOP_K8S_PLACEMENT or govloop",
    )
    .action(async (raw) => {
      const env = settings();
      const o = parseOptions(WorkerOptions, { ...(env.GOVLOOP_WORKFLOW_BUNDLE ? { workflowBundle: env.GOVLOOP_WORKFLOW_BUNDLE } : {}), ...raw });
      // The worker, the Kubernetes client and the cluster backends load only here (seconds of CPU for each CLI call otherwise).
      const { runWorker } = await import('./dev-run');
      await runWorker(o, program.opts().dataDir);
    });
}
