/**
 * A budget's scope, written one way: tenant, team and project, with '*' for a level the budget does
 * not narrow (the whole tenant, the whole team), as the ledger's `budgets` rows store it. A
 * `BudgetKey` adds the period: the key of a budget and of its controller workflow.
 *
 * Messages, the CLI's options and the SDK's `lease()` write a scope with optional fields instead
 * (a missing team: the whole tenant); `scopeOf` and `optionalForm` are the one pair of conversions
 * between the two, `scopeLabel` the one label (`acme/*\/*`), `BudgetScopeSchema` the one check.
 * Pure: imported by workflow code.
 */
import { z } from 'zod';
import type { Period } from './periods';

/** A level of a scope that the budget does not narrow. */
export const ANY = '*';

/** A budget's scope as the ledger stores it: '*' for a level it does not narrow. */
export interface BudgetScope {
  tenant: string;
  team: string;
  project: string;
}

/** One budget (scope and period): the key of its ledger row and of its controller workflow. */
export interface BudgetKey extends BudgetScope {
  period: Period;
}

/** A scope as messages and options write it: a missing team or project is the whole tenant or team. */
export interface OptionalBudgetScope {
  tenant: string;
  team?: string;
  project?: string;
}

/** The scope of an optional-field scope (a missing level is '*'; a '*' given stays '*'). Also takes a `BudgetScope`. */
export const scopeOf = (s: OptionalBudgetScope): BudgetScope => ({ tenant: s.tenant, team: s.team ?? ANY, project: s.project ?? ANY });

/** The optional-field form of a scope: '*' levels left out. */
export const optionalForm = (s: BudgetScope): OptionalBudgetScope => ({
  tenant: s.tenant,
  ...(s.team !== ANY ? { team: s.team } : {}),
  ...(s.project !== ANY ? { project: s.project } : {}),
});

/** `tenant/team/project` with '*' for a level not narrowed: `acme/*\/*`, `acme/search/*`. Takes either form. */
export const scopeLabel = (s: OptionalBudgetScope): string => {
  const c = scopeOf(s);
  return `${c.tenant}/${c.team}/${c.project}`;
};

/** A tenant, team or project name in a scope. */
export const scopeName = z.string().min(1).max(63);

/** A project scope names its team: a project budget covers its own team's project only. */
export const projectNeedsTeam = (s: { team?: string | undefined; project?: string | undefined }): boolean => s.project === undefined || s.team !== undefined;

/** A scope in its optional-field form, as the SDK, CLI and server take it. */
export const BudgetScopeSchema = z
  .strictObject({ tenant: scopeName, team: scopeName.optional(), project: scopeName.optional() })
  .refine(projectNeedsTeam, { message: 'a project scope needs a team', path: ['project'] });
