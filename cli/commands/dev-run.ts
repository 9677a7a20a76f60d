import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { NativeConnection } from '@temporalio/worker';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import { loadConfig } from '../../config/load';
import { settings } from '../../config/settings';
import type { ClusterBackend } from '../../cluster/backend';
import { KubernetesCluster } from '../../cluster/kubernetes/backend';
import { SimulatedCluster } from '../../cluster/simulated/backend';
import { auditPaths } from '../../ledger/audit-checkpoints';
import { connectTemporal, dataDir, openLedger, readDevState } from '../../runtime/environment';
import { installLogging } from '../../runtime/logging';
import { startStack } from '../../runtime/stack';
import { ensureAuditCheckpointSchedule, ensureBudgetControllers, ensureReconcileSchedule, ensureRollupSchedule } from '../../runtime/schedules';
import { createWorkers, runWorkers } from '../../workers/worker';
import { jobChangedSignal } from '../../workflows/messages';
import type { DevRun, WorkerRun } from './dev-options';

/**
 * What `govloop dev` and `govloop worker` run once their options are checked (cli/commands/dev.ts).
 * Loaded on demand: the worker, the Kubernetes client and PGlite cost seconds of CPU to import,
 * which every other CLI command would otherwise pay.
 */

/** Resolves on the first SIGINT/SIGTERM. */
const untilSignal = () =>
  new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });

export async function runDev(o: DevRun, dir: string): Promise<void> {
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
}

export async function runWorker(o: WorkerRun, dataDirOption: string | undefined): Promise<void> {
  const env = settings();
  const logger = installLogging();
  const config = loadConfig();
  if (o.cluster) config.cluster = { ...config.cluster, name: o.cluster };
  config.policies.audit = { ...config.policies.audit, ...auditPaths(config.policies.audit, dataDir(dataDirOption)) };
  const dev = env.TEMPORAL_ADDRESS ? undefined : readDevState(dataDir(dataDirOption));
  const cfg = loadClientConnectConfig();
  const address = dev?.temporalAddress ?? cfg.connectionOptions.address ?? 'localhost:7233';
  const namespace = env.TEMPORAL_NAMESPACE ?? dev?.namespace ?? cfg.namespace ?? 'default';
  const ledger = await openLedger(dataDirOption);
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
      const temporal = await connectTemporal(dataDirOption);
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
      const temporal = await connectTemporal(dataDirOption);
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
}
