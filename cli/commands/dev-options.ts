import { existsSync } from 'node:fs';
import { z } from 'zod';
import { DEFAULT_STOP_MARGIN_SECONDS } from '../../cluster/kubernetes/options';
import { settings } from '../../config/settings';
import { TASK_QUEUE_CONTROL } from '../../workflows/messages';

/**
 * The options of `govloop dev` and `govloop worker`, checked in cli/commands/dev.ts before
 * anything heavy loads; cli/commands/dev-run.ts takes what they parse to (types only).
 */
const port = z.coerce.number({ error: 'must be a port number' }).int().min(1).max(65535);
export const DevOptions = z.strictObject({
  port: port.default(7233),
  uiPort: port.default(8233),
  ledgerPort: port.optional(),
  headless: z.boolean().default(false),
});
export const WorkerOptions = z.strictObject({
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

/** `govloop dev`'s options once checked. */
export type DevRun = z.output<typeof DevOptions>;
/** `govloop worker`'s options once checked. */
export type WorkerRun = z.output<typeof WorkerOptions>;
