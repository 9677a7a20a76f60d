import type { ToolCatalog, ToolEntry } from '../config/schema';
import type { RiskClass } from './intent';
import { type Reason, ReasonCode, reason } from './reasons';
import { own } from './own';

const riskOrder: RiskClass[] = ['low', 'medium', 'high', 'critical'];
export const riskRank = (r: RiskClass) => riskOrder.indexOf(r);

/** What the gate needs to know about one task's tools: the catalog and what the intent declared. */
export interface ToolPolicy {
  catalog: ToolCatalog;
  declared: string[];
}

/** A tool the task may call, or the reason it may not: unknown tools are denied by default. */
export function checkTool(policy: ToolPolicy, tool: string): { ok: true; entry: ToolEntry } | { ok: false; reason: Reason } {
  const entry = own(policy.catalog.tools, tool);
  if (!entry) {
    return { ok: false, reason: reason(ReasonCode.ToolUnknown, `tool ${tool} is not in the tool catalog`, null, tool, 'tools#catalog') };
  }
  if (!policy.declared.includes(tool)) {
    return {
      ok: false,
      reason: reason(ReasonCode.ToolNotAllowed, `tool ${tool} is not declared by the task`, policy.declared.join('|') || null, tool, 'intent#tools'),
    };
  }
  return { ok: true, entry };
}

export function needsApproval(catalog: ToolCatalog, entry: ToolEntry): boolean {
  return riskRank(entry.risk) >= riskRank(catalog.approvalAtOrAbove);
}

/** Side-effecting steps are the ones rollback must undo. */
export const hasSideEffect = (entry: ToolEntry) => entry.sideEffect === 'write' || entry.sideEffect === 'external';

/** Roles that may decide a request at escalation tier `tier` (0 = first): every tier up to it. */
export function approverRoles(entry: ToolEntry, tier: number): string[] {
  return [...new Set(entry.approvers.slice(0, tier + 1).flatMap((t) => t.roles))];
}

/** Tokens the declared tools' definitions add to every model call. */
export function toolOverheadTokens(catalog: ToolCatalog, declared: string[]): number {
  return declared.reduce((sum, t) => sum + (own(catalog.tools, t)?.definitionTokens ?? 0), 0);
}

/**
 * Admission's view of the declared tools: each must be in the catalog, and none may be riskier
 * than the kind's ceiling.
 */
export function admitTools(catalog: ToolCatalog, declared: string[], maxRisk: RiskClass, policy: string): Reason[] {
  const reasons: Reason[] = [];
  for (const t of declared) {
    const entry = own(catalog.tools, t);
    if (!entry) reasons.push(reason(ReasonCode.ToolUnknown, `tool ${t} is not in the tool catalog`, null, t, 'tools#catalog'));
    else if (riskRank(entry.risk) > riskRank(maxRisk)) {
      reasons.push(
        reason(ReasonCode.ToolRiskNotAllowed, `tool ${t} is ${entry.risk} risk, above the ceiling ${maxRisk}`, maxRisk, entry.risk, `${policy}.maxRiskClass`),
      );
    }
  }
  return reasons;
}

/** Every approver role the catalog names, over all tools and tiers (they are tenant roles `access grant` accepts). */
export function catalogRoles(catalog: ToolCatalog): string[] {
  return [...new Set(Object.values(catalog.tools).flatMap((t) => t.approvers.flatMap((a) => a.roles)))].sort();
}
