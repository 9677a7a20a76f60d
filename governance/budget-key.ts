/** One budget (scope and period): the key of its controller workflow. */
export interface BudgetKey {
  tenant: string;
  team: string;
  project: string;
  period: 'day' | 'week' | 'month' | 'total';
}
