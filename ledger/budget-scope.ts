/** A budget's scope (tenant, team, project) and how it is written in messages (ledger/budgets.ts). */
export interface BudgetScope {
  tenant: string;
  team?: string;
  project?: string;
}

export const scopeLabel = (s: { tenant: string; team?: string; project?: string }) => `${s.tenant}/${s.team ?? '*'}/${s.project ?? '*'}`;
