import { z } from 'zod';
import { DEFAULT_LADDER, LadderConfig } from '../governance/ladder';
import { SloList } from '../governance/slo';
import { DEFAULT_USAGE_LIMITS, UsageLimits } from '../governance/limits';
import { RiskClass, WorkloadKind } from '../governance/intent';

/** Schemas of govloop's own config files. Every file is validated on load; errors name file and path. */

const KindLimits = z.strictObject({
  maxContextTokens: z.number().int().positive(),
  maxSteps: z.number().int().positive(),
  maxToolCalls: z.number().int().nonnegative(),
  maxTokens: z.number().int().positive(),
  maxUsd: z.number().positive(),
  maxGpuHours: z.number().nonnegative(),
  maxGpusPerTask: z.number().int().nonnegative(),
  maxRiskClass: RiskClass,
});
export type KindLimits = z.infer<typeof KindLimits>;

export const GpuQuota = z.strictObject({
  tenant: z.string(),
  team: z.string(),
  gpuType: z.string(),
  gpus: z.number().int().nonnegative(),
});
export type GpuQuota = z.infer<typeof GpuQuota>;

/** One team's share of a cohort (governance/quota.ts): nominal quota, what it may borrow and lend, fair-share weight. */
export const CohortTeam = z.strictObject({
  tenant: z.string().min(1),
  team: z.string().min(1),
  nominal: z.number().int().nonnegative(),
  /** GPUs above nominal the team may borrow from the cohort's idle quota; null: no limit. */
  borrowingLimit: z.number().int().nonnegative().nullable().default(null),
  /** GPUs of its nominal quota the team lends to the cohort; null: all of it. */
  lendingLimit: z.number().int().nonnegative().nullable().default(null),
  weight: z.number().positive().default(1),
});
export const Cohort = z.strictObject({ name: z.string().min(1), gpuType: z.string().min(1), teams: z.array(CohortTeam).min(1) }).superRefine((c, ctx) => {
  const seen = new Set<string>();
  c.teams.forEach((t, i) => {
    const k = `${t.tenant}/${t.team}`;
    if (seen.has(k)) ctx.addIssue({ code: 'custom', path: ['teams', i], message: `${k} is twice in cohort ${c.name}` });
    seen.add(k);
    if (t.lendingLimit !== null && t.lendingLimit > t.nominal)
      ctx.addIssue({ code: 'custom', path: ['teams', i, 'lendingLimit'], message: `lends ${t.lendingLimit}, more than its nominal ${t.nominal}` });
  });
});
export type Cohort = z.infer<typeof Cohort>;

export const PoliciesFile = z.strictObject({
  name: z.string(),
  /** Reject work whose scope has no budget at all. */
  requireBudget: z.boolean(),
  kinds: z.record(WorkloadKind, KindLimits),
  /** GPU quota per tenant/team/type; teams with no row have `defaultGpuQuota`. */
  gpuQuotas: z.array(GpuQuota),
  defaultGpuQuota: z.number().int().nonnegative(),
  /** Quota cohorts per GPU type: teams listed here borrow and lend; their gpuQuotas rows do not apply for that type. */
  cohorts: z
    .array(Cohort)
    .default([])
    .superRefine((cs, ctx) => {
      const seen = new Map<string, string>();
      cs.forEach((c, i) =>
        c.teams.forEach((t, j) => {
          const k = `${t.tenant}/${t.team}/${c.gpuType}`;
          if (seen.has(k)) ctx.addIssue({ code: 'custom', path: [i, 'teams', j], message: `${k} is already in cohort ${seen.get(k)}` });
          seen.set(k, c.name);
        }),
      );
    }),
  preemption: z
    .strictObject({
      /** How long a victim has to checkpoint after the signal before it is suspended. */
      graceMillis: z.number().int().nonnegative().max(3_600_000).default(30_000),
      /**
       * A job that has run less than this (job-seconds) since it last started or resumed is not
       * chosen as a victim; operators' `govloop preempt` is not held back. 0: no shield.
       */
      minRunSeconds: z.number().nonnegative().max(86_400).default(0),
    })
    .default({ graceMillis: 30_000, minRunSeconds: 0 }),
  priorities: z.record(z.string(), z.number().int()),
  stepGate: z
    .strictObject({
      /** Past this share of maxUsd or maxTokens, steps on the primary model are degraded to the plan's fallback. */
      degradeAtFraction: z.number().gt(0).max(1).default(0.8),
    })
    .default({ degradeAtFraction: 0.8 }),
  compensation: z
    .strictObject({
      /** Tries of one compensation before the task needs an operator. */
      maxAttempts: z.number().int().positive().default(5),
      initialIntervalMs: z.number().int().positive().default(500),
    })
    .default({ maxAttempts: 5, initialIntervalMs: 500 }),
  /**
   * How many tries a governed task gives one ledger or cluster call before it asks an operator
   * (NeedsOperator) instead of retrying for ever (decision 0020). The defaults ride out about six
   * minutes of ledger outage and twenty of cluster outage.
   */
  retries: z
    .strictObject({
      ledgerMaxAttempts: z.number().int().min(2).max(1000).default(40),
      clusterMaxAttempts: z.number().int().min(2).max(1000).default(45),
    })
    .default({ ledgerMaxAttempts: 40, clusterMaxAttempts: 45 }),
  /**
   * A task's history is cut short by continue-as-new once it holds this many events, well before
   * Temporal's warning at 10,240 and its limit at 51,200 (or sooner, when the server suggests it).
   */
  history: z
    .strictObject({
      continueAsNewEvents: z.number().int().min(100).max(10_000).default(4000),
    })
    .default({ continueAsNewEvents: 4000 }),
  /** Where escalations and other notifications are POSTed (JSON); $GOVLOOP_NOTIFY_URL overrides. */
  notifyUrl: z.url().nullable().default(null),
  /** The budget enforcement ladder (governance/ladder.ts): thresholds in per cent of a budget. */
  ladder: LadderConfig.default(DEFAULT_LADDER),
  /** Priority classes that are degraded last and never preempted while other work runs. */
  criticalPriorities: z.array(z.string()).default(['critical']),
  /** The budget controller: how often it reads the ledger, and how many rounds before it continues as new. */
  budgetController: z
    .strictObject({
      pollMillis: z.number().int().min(50).max(600_000).default(5000),
      roundsPerRun: z.number().int().min(2).max(10_000).default(500),
    })
    .default({ pollMillis: 5000, roundsPerRun: 500 }),
  metering: z
    .strictObject({
      /** How often the meteringRollup schedule brings the hourly and daily rollups up to date. */
      rollupEverySeconds: z.number().int().min(10).max(86_400).default(300),
      /** Events recorded up to this long before a rollup run are looked at again by the next one. */
      lateArrivalSeconds: z.number().int().min(0).max(86_400).default(600),
    })
    .default({ rollupEverySeconds: 300, lateArrivalSeconds: 600 }),
  /** Per-event caps on usage (governance/limits.ts): an event over one is refused, nothing written. */
  usageLimits: UsageLimits.default(DEFAULT_USAGE_LIMITS),
  /** Signed audit checkpoints outside the database (decision 0019). Relative paths are taken from the data dir. */
  audit: z
    .strictObject({
      /** Where audit-checkpoints.jsonl is appended; null: <data dir>/audit-checkpoints. Put it where the database's admins cannot write. */
      checkpointDir: z.string().min(1).nullable().default(null),
      /** The Ed25519 signing key (PKCS#8 PEM, created with mode 0600 if missing); null: <data dir>/govloop-signing-key.pem. */
      signingKeyFile: z.string().min(1).nullable().default(null),
      /** How often the auditCheckpoint schedule writes a checkpoint (nothing when the chain did not move). */
      checkpointEverySeconds: z.number().int().min(10).max(86_400).default(300),
    })
    .default({ checkpointDir: null, signingKeyFile: null, checkpointEverySeconds: 300 }),
  /**
   * The reconciler (the govloop-reconcile Temporal Schedule): every everySeconds it settles tasks
   * whose workflow closed without settling them, once the workflow has been closed graceSeconds
   * (time to reset a run terminated by mistake); at most batch tasks per pass, oldest first.
   */
  reconcile: z
    .strictObject({
      everySeconds: z.number().int().min(10).max(86_400).default(300),
      graceSeconds: z
        .number()
        .int()
        .min(0)
        .max(7 * 86_400)
        .default(120),
      batch: z.number().int().min(1).max(5000).default(200),
    })
    .default({ everySeconds: 300, graceSeconds: 120, batch: 200 }),
  /**
   * Usage past a task's reservation is overage: recorded, charged to no budget (decision 0023).
   * Once a task's overage passes toleranceUsd, an operator is notified (task.overage, runbooks/overage.md).
   */
  overage: z
    .strictObject({
      toleranceUsd: z.number({ error: 'must be a number of USD' }).nonnegative().max(1e6).default(0),
    })
    .default({ toleranceUsd: 0 }),
  /**
   * Service level objectives per use case or team (governance/slo.ts, decision 0026): measured by
   * `govloop slo`; `forbidsFallback` keeps the budget ladder from degrading the scope to its
   * fallback model before the queue step.
   */
  slos: SloList.default([]),
});
export type Policies = z.infer<typeof PoliciesFile>;

export const Template = z.strictObject({
  name: z.string(),
  kinds: z.array(WorkloadKind).min(1),
  runtime: z.strictObject({
    image: z.string(),
    command: z.array(z.string()),
    env: z.record(z.string(), z.string()).default({}),
  }),
  /** A cheaper model to degrade to; null when the template has none. */
  fallbackModel: z.string().nullable(),
  /** Simulated seconds between usage reports of a running job. */
  reportEverySeconds: z.number().positive(),
});
export type Template = z.infer<typeof Template>;
export const TemplatesFile = z.strictObject({ templates: z.array(Template).min(1) });

export const PriceBookVersion = z.strictObject({
  version: z.number().int().positive(),
  effectiveFrom: z.iso.datetime({ offset: true }),
  /** USD per GPU-hour, by GPU type then sharing mode ("exclusive", "mps", "timeslice", "mig"). */
  gpuHourUsd: z.record(z.string(), z.record(z.string(), z.number().nonnegative())),
  /** USD per million tokens, by model; "default" applies to models not listed. */
  tokensPerMillionUsd: z.record(z.string(), z.strictObject({ in: z.number().nonnegative(), out: z.number().nonnegative() })),
});
export type PriceBookVersion = z.infer<typeof PriceBookVersion>;
export const PriceBookFile = z.strictObject({ versions: z.array(PriceBookVersion).min(1) });

export const ClusterNode = z.strictObject({
  name: z.string(),
  gpuType: z.string(),
  gpus: z.number().int().nonnegative(),
  rack: z.string(),
  block: z.string(),
  /** The NVLink domain id; default: the node's name (a domain of one node). */
  nvlinkDomain: z.string().optional(),
  cpuMilli: z.number().int().positive().default(192_000),
  memoryMib: z.number().int().positive().default(2_097_152),
  /** Ways of sharing a GPU the node allows (whole GPUs always). */
  sharing: z
    .strictObject({ mig: z.boolean().default(false), mps: z.boolean().default(false), timeslice: z.boolean().default(false) })
    .default({ mig: false, mps: false, timeslice: false }),
});
export type ClusterNode = z.infer<typeof ClusterNode>;
export const ClusterFile = z.strictObject({
  name: z.string().regex(/^[a-z0-9-]+$/),
  gpuTypes: z.record(z.string(), z.strictObject({ memoryGb: z.number().positive(), migProfiles: z.array(z.string()) })),
  nodes: z.array(ClusterNode).min(1),
});
export type ClusterConfig = z.infer<typeof ClusterFile>;

export const SimulationFile = z.strictObject({
  /** Simulated seconds that pass per real second. */
  speedup: z.number().positive(),
  defaultDurationSeconds: z.number().positive(),
  defaultTokensPerSecond: z.number().nonnegative(),
  /** Real milliseconds between two observations of a running job by its workflow. */
  pollMillis: z.number().int().positive(),
  /** Real milliseconds a queued task waits before asking for capacity again. */
  queueRetryMillis: z.number().int().positive(),
  /**
   * Real milliseconds a task queued for GPU quota waits, at the head of its queue, before it asks
   * again when no released GPUs woke it (config/task-queues.ts queuedWaitMillis); further back in
   * the queue it waits up to ten times as long.
   */
  queueRecheckMillis: z.number().int().positive().max(3_600_000).default(60_000),
});
export type SimulationConfig = z.infer<typeof SimulationFile>;

/**
 * The tool risk catalog: every tool an agent may call, how risky it is, who may approve it and
 * what undoes it. A tool that is not in the catalog is denied.
 */
export const SideEffect = z.enum(['none', 'read', 'write', 'external']);
export const ToolEntry = z.strictObject({
  risk: RiskClass,
  sideEffect: SideEffect,
  /** Approver tiers, first tier first: an unanswered request escalates to the next tier. */
  approvers: z.array(z.strictObject({ roles: z.array(z.string().min(1)).min(1) })).default([]),
  approvalTtlSeconds: z.number().positive().default(3600),
  escalateAfterSeconds: z.number().positive().default(900),
  /** The catalog tool that undoes this one's side effect; null when nothing can. */
  compensation: z.string().min(1).nullable().default(null),
  /** Tokens the tool's definition adds to every model call of a task that declares it. */
  definitionTokens: z.number().int().nonnegative().default(0),
  /** Where govloop calls the tool (used for compensations); without it, the simulated tool system. */
  endpoint: z.url().optional(),
});
export type ToolEntry = z.infer<typeof ToolEntry>;
export const ToolsFile = z
  .strictObject({
    /** Tool calls at or above this risk wait for a human approval. */
    approvalAtOrAbove: RiskClass.default('high'),
    tools: z.record(z.string().regex(/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/, 'dotted lowercase name such as payments.refund'), ToolEntry),
  })
  .superRefine((file, ctx) => {
    const order = RiskClass.options;
    for (const [name, t] of Object.entries(file.tools)) {
      if (t.compensation !== null && !Object.hasOwn(file.tools, t.compensation)) {
        ctx.addIssue({ code: 'custom', path: ['tools', name, 'compensation'], message: `${t.compensation} is not in the catalog` });
      }
      if (order.indexOf(t.risk) >= order.indexOf(file.approvalAtOrAbove) && t.approvers.length === 0) {
        ctx.addIssue({ code: 'custom', path: ['tools', name, 'approvers'], message: `a ${t.risk}-risk tool needs at least one approver tier` });
      }
      if (t.escalateAfterSeconds > t.approvalTtlSeconds) {
        ctx.addIssue({
          code: 'custom',
          path: ['tools', name, 'escalateAfterSeconds'],
          message: `escalation after ${t.escalateAfterSeconds}s comes after the approval TTL ${t.approvalTtlSeconds}s`,
        });
      }
    }
  });
export type ToolCatalog = z.infer<typeof ToolsFile>;

/**
 * config/auth.yaml: who is who (decision 0018). `none`: identities are typed names, marked
 * unverified everywhere (govloop dev); `required`: every mutating path needs a credential, an
 * OIDC access token or a govloop API key, and a typed name is refused.
 */
export const OidcSettings = z.strictObject({
  issuer: z.url(),
  audience: z.string().min(1),
  jwksUri: z.url().optional(),
  subjectClaim: z.string().min(1).default('sub'),
  clockToleranceSeconds: z.number().int().min(0).max(300).default(5),
});
export const AuthFile = z.strictObject({
  mode: z.enum(['none', 'required']).default('none'),
  oidc: OidcSettings.nullable().default(null),
  /** Subjects that hold platform-admin: every role in every tenant, and access grants anywhere. */
  platformAdmins: z.array(z.string().min(1).max(128)).default([]),
  /** A budget lowered by more than this share of its limit waits for a second person (0: every lowering, 1: never). */
  budgetLowerSecondPersonAbove: z.number().min(0).max(1).default(0.5),
  /** How long a signed approval token lets the approved tool call run. */
  approvalTokenTtlSeconds: z.number().int().positive().max(86_400).default(900),
});
export type AuthConfig = z.infer<typeof AuthFile>;

/** Everything govloop reads from config/: one plain, serializable object (it crosses into workflows). */
export interface GovConfig {
  policies: Policies;
  templates: Template[];
  priceBook: PriceBookVersion[];
  cluster: ClusterConfig;
  simulation: SimulationConfig;
  tools: ToolCatalog;
  auth: AuthConfig;
}
