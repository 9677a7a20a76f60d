import type { Command } from 'commander';
import { z } from 'zod';
import { loadConfig } from '../../config/load';
import { connectTemporal, dataDir, openLedger, readDevState } from '../../runtime/environment';
import { installLogging } from '../../runtime/logging';
import { startStack } from '../../runtime/stack';
import { ensureAuditCheckpointSchedule, ensureBudgetControllers, ensureReconcileSchedule, ensureRollupSchedule } from '../../runtime/schedules';
import { auditPaths } from '../../ledger/audit-checkpoints';
import { KubeConfig } from '@kubernetes/client-node';
import type { ClusterBackend } from '../../cluster/backend';
import { DEFAULT_STOP_MARGIN_SECONDS, KubernetesCluster } from '../../cluster/kubernetes/backend';
import { SimulatedCluster } from '../../cluster/simulated/backend';
import { createWorkers, runWorkers } from '../../workers/worker';
import { NativeConnection } from '@temporalio/worker';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import { TASK_QUEUE_CONTROL, jobChangedSignal } from '../../workflows/messages';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CliExit, Exit, parseOptions } from '../util';
import { settings } from '../../config/settings';

const port = z.coerce.number({ error: 'must be a port number' }).int().min(1).max(65535);
const DevOptions = z.strictObject({ port: port.default(7233), uiPort: port.default(8233), ledgerPort: port.optional(), headless: z.boolean().default(false) });
const WorkerOptions = z.strictObject({
  taskQueue: z
    .string()
    .min(1)
    .default(() => settings().GOVLOOP_TASK_QUEUE ?? TASK_QUEUE_CONTROL),
  cluster: z
    .string()
    .regex(/^[a-z0-9-]+$/)
    .optional(),
  controllers: z.boolean().default(true),
  backend: z.enum(['simulated', 'kubernetes']).default(() => settings().GOVLOOP_CLUSTER_BACKEND ?? 'simulated'),
  k8sNamespace: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a Kubernetes namespace name')
    .max(63)
    .default(() => settings().GOVLOOP_K8S_NAMESPACE ?? 'govloop'),
  k8sPlacement: z.enum(['govloop', 'scheduler']).default(() => settings().GOVLOOP_K8S_PLACEMENT ?? 'govloop'),
  k8sCheckpointGrace: z.coerce
    .number()
    .int('whole seconds')
    .min(0)
    .max(3600)
    .default(() => settings().GOVLOOP_K8S_CHECKPOINT_GRACE_SECONDS ?? 90),
  k8sStopMargin: z.coerce
    .number()
    .int('whole seconds')
    .min(0)
    .max(3600)
    .default(() => settings().GOVLOOP_K8S_STOP_MARGIN_SECONDS ?? DEFAULT_STOP_MARGIN_SECONDS),
  workflowBundle: z
    .string()
    .min(1)
    .refine((p) => existsSync(p), 'no such file (write one with: npm run bundle:workflows -- PATH)')
    .optional(),
});

/** Resolves on the first SIGINT/SIGTERM. */
const untilSignal = () =>
  new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });

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
      const config = loadConfig();
      installLogging({ file: join(dir, 'worker.log') });
      const stack = await startStack({
        dataDir: dir,
        config,
        port: o.port,
        uiPort: o.uiPort,
        ...(o.ledgerPort ? { ledgerPort: o.ledgerPort } : {}),
        headless: o.headless,
        onProgress: (m) => console.log(m),
      });
      console.log(`govloop dev is up (data in ${dir})
  Temporal   ${stack.address}  namespace ${stack.namespace}
  UI         ${stack.uiUrl ?? '(headless)'}
  ledger     ${stack.ledgerSource === 'embedded' ? `${stack.databaseUrl} (embedded PGlite)` : 'DATABASE_URL'}
  logs       ${join(dir, 'worker.log')}
Other terminals: govloop submit config/examples/llama-ft-nightly.yaml --wait
Ctrl-C stops everything.`);
      const why = await Promise.race([untilSignal(), stack.running.then(() => 'workers stopped')]);
      console.log(`\n${why}: stopping ...`);
      await stack.stop();
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
      const logger = installLogging();
      const config = loadConfig();
      if (o.cluster) config.cluster = { ...config.cluster, name: o.cluster };
      config.policies.audit = { ...config.policies.audit, ...auditPaths(config.policies.audit, dataDir(program.opts().dataDir)) };
      const dev = env.TEMPORAL_ADDRESS ? undefined : readDevState(dataDir(program.opts().dataDir));
      const cfg = loadClientConnectConfig();
      const address = dev?.temporalAddress ?? cfg.connectionOptions.address ?? 'localhost:7233';
      const namespace = env.TEMPORAL_NAMESPACE ?? dev?.namespace ?? cfg.namespace ?? 'default';
      const ledger = await openLedger(program.opts().dataDir);
      const connection = await NativeConnection.connect({ ...cfg.connectionOptions, address });
      try {
        let backend: ClusterBackend;
        let stopWatch = () => {};
        if (o.backend === 'kubernetes') {
          const kc = new KubeConfig();
          kc.loadFromDefault();
          // govloop placement: topology from the Nodes' labels, pinned with node affinity; it falls
          // back to the kube-scheduler (and says why here) where the Nodes carry no govloop.io/gpu-type.
          const k8s = new KubernetesCluster(kc, {
            cluster: config.cluster.name,
            namespace: o.k8sNamespace,
            placement: o.k8sPlacement,
            checkpointGraceMillis: o.k8sCheckpointGrace * 1000,
            stopMarginSeconds: o.k8sStopMargin,
            // Pods that may report their checkpoint on their Job (deploy/rbac.yaml govloop-trainer).
            ...(env.GOVLOOP_K8S_SERVICE_ACCOUNT ? { serviceAccountName: env.GOVLOOP_K8S_SERVICE_ACCOUNT } : {}),
            onPlacementNote: (note) => logger.warn({ placement: o.k8sPlacement }, note),
          });
          backend = k8s;
          // Job changes seen by the watch wake the task's workflow (it observes the job at once);
          // the workflow's poll stays the fallback when a watch event is missed.
          const temporal = await connectTemporal(program.opts().dataDir);
          const w = k8s.watchJobs(
            (e) =>
              void temporal.client.workflow
                .getHandle(e.taskId)
                .signal(jobChangedSignal, { job: e.job, phase: e.phase })
                .catch(() => undefined),
            (err) => logger.warn({ err: String(err) }, 'kubernetes job watch failed; reconnecting'),
          );
          stopWatch = () => {
            w.stop();
            void temporal.connection.close();
          };
        } else {
          const sim = new SimulatedCluster(ledger.db, config.cluster, config.simulation.speedup);
          await sim.sync();
          backend = sim;
        }
        const workers = await createWorkers({
          connection,
          namespace,
          db: ledger.db,
          config,
          backend,
          controlQueue: o.taskQueue,
          ...(o.workflowBundle ? { bundle: { codePath: resolve(o.workflowBundle) } } : {}),
        });
        if (o.controllers) {
          const temporal = await connectTemporal(program.opts().dataDir);
          try {
            await ensureRollupSchedule(temporal.client, { everySeconds: config.policies.metering.rollupEverySeconds, taskQueue: o.taskQueue });
            await ensureAuditCheckpointSchedule(temporal.client, { everySeconds: config.policies.audit.checkpointEverySeconds, taskQueue: o.taskQueue });
            await ensureReconcileSchedule(temporal.client, { everySeconds: config.policies.reconcile.everySeconds, taskQueue: o.taskQueue });
            await ensureBudgetControllers(temporal.client, ledger.db, o.taskQueue);
          } finally {
            await temporal.connection.close();
          }
        }
        const abort = new AbortController();
        void untilSignal().then(() => abort.abort());
        logger.info({ address, namespace, taskQueue: o.taskQueue, ledger: ledger.source }, 'worker started');
        console.error(
          `worker running: ${address} ${namespace} queues ${o.taskQueue}, govloop-cluster-${config.cluster.name} (${o.backend}${o.backend === 'kubernetes' ? ` namespace ${o.k8sNamespace}, placement ${o.k8sPlacement}` : ''}); ledger ${ledger.source}`,
        );
        await runWorkers(workers, abort.signal);
        stopWatch();
      } finally {
        await connection.close();
        await ledger.close();
      }
    });
}
