import type { ClusterNode, GovConfig } from '../config/schema';
import { resolveCaps } from './caps';
import { decideFlatQuota, gpuQuotaFor } from './flat-quota';
import { type BudgetHeadroom, decideBudgets } from './headroom';
import type { Intent, RiskClass } from './intent';
import { type Plan, pickTemplate, quotaGpus, translate } from './plan';
import { microsToUsd } from './pricing';
import type { QuotaDecision } from './quota';
import { type Reason, ReasonCode, reason } from './reasons';
import { admitTools, toolOverheadTokens } from './tools';
import { own } from './own';

export interface AdmissionContext {
  config: GovConfig;
  now: string;
  /** Every budget whose scope covers the intent's attribution. */
  budgets: BudgetHeadroom[];
  /** GPUs of the intent's type the team holds now (running or reserved work). */
  teamGpusInUse: number;
  /**
   * The quota decision of governance/quota.ts (cohorts, borrowing, preemption), when the caller made
   * one; it replaces the flat check against `gpuQuotaFor` and `teamGpusInUse`.
   */
  quota?: QuotaDecision;
}

export type AdmissionResult =
  { decision: 'admitted'; plan: Plan; reasons: [] } | { decision: 'queued'; plan: Plan; reasons: Reason[] } | { decision: 'rejected'; reasons: Reason[] };

const riskOrder: RiskClass[] = ['low', 'medium', 'high', 'critical'];

/**
 * Admission: policy as intent. Pure — every input is in the arguments, the clock included.
 * Rejections collect every reason that applies, so one answer tells the whole story; a task is
 * queued only when nothing rejects it and all it lacks is capacity that will free up.
 */
export function admit(intent: Intent, ctx: AdmissionContext): AdmissionResult {
  const { policies } = ctx.config;
  const policy = `policies/${policies.name}`;
  const limits = own(policies.kinds, intent.kind);
  if (!limits) {
    return { decision: 'rejected', reasons: [reason(ReasonCode.KindNotAllowed, `no policy admits kind ${intent.kind}`, null, intent.kind, `${policy}#kinds`)] };
  }
  const { caps, reasons } = resolveCaps(intent, limits, policies.name);

  if (caps.deadline !== null && Date.parse(caps.deadline) <= Date.parse(ctx.now)) {
    reasons.push(reason(ReasonCode.CapDeadline, `deadline ${caps.deadline} has passed`, ctx.now, caps.deadline, 'intent#caps.deadline'));
  }
  if (own(policies.priorities, intent.priority) === undefined) {
    reasons.push(
      reason(
        ReasonCode.PriorityUnknown,
        `priority "${intent.priority}" is not one of ${Object.keys(policies.priorities).join(', ')}`,
        null,
        intent.priority,
        `${policy}#priorities`,
      ),
    );
  }
  if (riskOrder.indexOf(intent.riskClass) > riskOrder.indexOf(limits.maxRiskClass)) {
    reasons.push(
      reason(
        ReasonCode.RiskClassNotAllowed,
        `risk class ${intent.riskClass} is above ${limits.maxRiskClass} for ${intent.kind}`,
        limits.maxRiskClass,
        intent.riskClass,
        `${policy}#kinds.${intent.kind}.maxRiskClass`,
      ),
    );
  }

  // Tools: each in the catalog, none above the kind's risk ceiling, their definitions leave room in the context.
  reasons.push(...admitTools(ctx.config.tools, intent.tools, limits.maxRiskClass, `${policy}#kinds.${intent.kind}`));
  const overhead = toolOverheadTokens(ctx.config.tools, intent.tools);
  if (intent.tools.length > 0 && overhead >= caps.maxContextTokens) {
    reasons.push(
      reason(
        ReasonCode.CapMaxContextTokens,
        `the declared tools' definitions take ${overhead} tokens, leaving no room under maxContextTokens ${caps.maxContextTokens}`,
        caps.maxContextTokens,
        overhead,
        'tools#definitionTokens',
      ),
    );
  }

  // GPUs: ceiling per task, known type, supported sharing, team quota, cluster size.
  const { gpus, gpuType, sharing } = intent.resources;
  let quotaBusy: Reason | undefined;
  if (gpus > limits.maxGpusPerTask) {
    reasons.push(
      reason(
        ReasonCode.MaxGpusPerTask,
        `${gpus} GPUs is above the ${intent.kind} ceiling ${limits.maxGpusPerTask}`,
        limits.maxGpusPerTask,
        gpus,
        `${policy}#kinds.${intent.kind}.maxGpusPerTask`,
      ),
    );
  }
  if (gpus > 0 && gpuType !== undefined) {
    const typeInfo = ctx.config.cluster.gpuTypes[gpuType];
    const nodes = ctx.config.cluster.nodes.filter((n) => n.gpuType === gpuType);
    if (!typeInfo || nodes.length === 0) {
      reasons.push(
        reason(
          ReasonCode.GpuTypeUnknown,
          `cluster ${ctx.config.cluster.name} has no ${gpuType} GPUs`,
          Object.keys(ctx.config.cluster.gpuTypes).join('|'),
          gpuType,
          `cluster/${ctx.config.cluster.name}#gpuTypes`,
        ),
      );
    } else {
      if (sharing.startsWith('mig:') && !typeInfo.migProfiles.includes(sharing.slice(4))) {
        reasons.push(
          reason(
            ReasonCode.SharingUnsupported,
            `${gpuType} has no MIG profile ${sharing.slice(4)}`,
            typeInfo.migProfiles.join('|'),
            sharing,
            `cluster/${ctx.config.cluster.name}#gpuTypes.${gpuType}.migProfiles`,
          ),
        );
      }
      const mode = sharing.startsWith('mig:') ? 'mig' : sharing === 'mps' || sharing === 'timeslice' ? sharing : null;
      const able = mode === null ? nodes : nodes.filter((n) => n.sharing[mode]);
      if (mode !== null && able.length === 0) {
        reasons.push(
          reason(
            ReasonCode.SharingUnsupported,
            `no ${gpuType} node of cluster ${ctx.config.cluster.name} allows ${mode}`,
            null,
            sharing,
            `cluster/${ctx.config.cluster.name}#nodes`,
          ),
        );
      } else if (sharing === 'exclusive') {
        // A gang may span nodes, but never wider than a required level; the largest domain of that level bounds it.
        const level = intent.resources.topology?.mode === 'required' ? intent.resources.topology.level : 'cluster';
        const largest = largestDomain(able, level);
        if (gpus > largest) {
          const where = level === 'cluster' ? `the cluster has ${largest}` : `the largest ${level} has ${largest} and the job requires one ${level}`;
          reasons.push(
            reason(ReasonCode.GpuCapacityExceeded, `${gpus} ${gpuType} GPUs do not fit: ${where}`, largest, gpus, `cluster/${ctx.config.cluster.name}#nodes`),
          );
        }
      }
      const asked = quotaGpus(intent.resources);
      const { quota, policy: quotaPolicy } = gpuQuotaFor(policies, intent.attribution, gpuType);
      if (ctx.quota) {
        if (ctx.quota.decision === 'rejected') reasons.push(ctx.quota.reason);
        else if (ctx.quota.decision !== 'admitted') quotaBusy = ctx.quota.reason;
      } else {
        const flat = decideFlatQuota({ team: intent.attribution.team, gpuType, asked, inUse: ctx.teamGpusInUse, quota, policy: quotaPolicy });
        if (flat?.code === ReasonCode.GpuQuotaBusy) quotaBusy = flat;
        else if (flat) reasons.push(flat);
      }
    }
  }

  const template = pickTemplate(ctx.config.templates, intent.kind);
  if (!template) {
    reasons.push(reason(ReasonCode.NoTemplate, `no golden-path template runs ${intent.kind}`, null, intent.kind, 'templates'));
  }
  if (reasons.length > 0 || !template) return { decision: 'rejected', reasons };

  const plan = translate(intent, caps, template, ctx.config, ctx.now);

  // Budgets: the worst case must fit the headroom of every scope that covers the task.
  if (ctx.budgets.length === 0 && policies.requireBudget) {
    return {
      decision: 'rejected',
      reasons: [
        reason(
          ReasonCode.BudgetMissing,
          `no budget covers ${intent.attribution.tenant}/${intent.attribution.team}/${intent.attribution.project}`,
          null,
          microsToUsd(plan.worstCaseMicros),
          `${policy}#requireBudget`,
        ),
      ],
    };
  }
  // The worst case must fit every covering budget; a budget whose ladder is at its queue step (the hard limit) holds new work instead.
  const budgets = decideBudgets(ctx.budgets, plan.worstCaseMicros);
  if (!budgets.ok) return budgets.retry ? { decision: 'queued', plan, reasons: budgets.reasons } : { decision: 'rejected', reasons: budgets.reasons };

  if (quotaBusy) return { decision: 'queued', plan, reasons: [quotaBusy] };
  return { decision: 'admitted', plan, reasons: [] };
}

/** GPUs of the largest domain at `level` among `nodes` (whole GPUs; an NVLink domain defaults to its node). */
function largestDomain(nodes: readonly ClusterNode[], level: 'node' | 'nvlink' | 'rack' | 'block' | 'cluster'): number {
  const key = (n: ClusterNode) =>
    level === 'node' ? n.name : level === 'nvlink' ? (n.nvlinkDomain ?? n.name) : level === 'rack' ? n.rack : level === 'block' ? n.block : '';
  const total = new Map<string, number>();
  for (const n of nodes) total.set(key(n), (total.get(key(n)) ?? 0) + n.gpus);
  return Math.max(0, ...total.values());
}
