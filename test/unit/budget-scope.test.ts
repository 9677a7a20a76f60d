import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type BudgetScope, BudgetScopeSchema, type OptionalBudgetScope, optionalForm, scopeLabel, scopeOf } from '../../governance/budget-scope';
import { budgetControllerId } from '../../workflows/messages';

const name = fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/);
/** Optional-field scopes as the schema accepts them: a project only with its team. */
const optionalScope: fc.Arbitrary<OptionalBudgetScope> = fc.oneof(
  fc.record({ tenant: name }),
  fc.record({ tenant: name, team: name }),
  fc.record({ tenant: name, team: name, project: name }),
);

describe('scopeOf and optionalForm', () => {
  it.each<{ name: string; from: OptionalBudgetScope; want: BudgetScope }>([
    { name: 'the whole tenant', from: { tenant: 'acme' }, want: { tenant: 'acme', team: '*', project: '*' } },
    { name: 'a team', from: { tenant: 'acme', team: 'search' }, want: { tenant: 'acme', team: 'search', project: '*' } },
    { name: 'a project of a team', from: { tenant: 'acme', team: 'search', project: 'ranker' }, want: { tenant: 'acme', team: 'search', project: 'ranker' } },
    { name: "a '*' given stays '*'", from: { tenant: 'acme', team: '*', project: 'ranker' }, want: { tenant: 'acme', team: '*', project: 'ranker' } },
    { name: 'a wildcard scope is taken as it is', from: { tenant: 'acme', team: '*', project: '*' }, want: { tenant: 'acme', team: '*', project: '*' } },
  ])('scopeOf: $name', ({ from, want }) => {
    expect(scopeOf(from)).toEqual(want);
  });

  it('scopeOf keeps only the scope of a wider object (CLI options, a budget key)', () => {
    expect(scopeOf({ tenant: 'acme', team: 'search', period: 'month', usd: 5 } as OptionalBudgetScope)).toEqual({
      tenant: 'acme',
      team: 'search',
      project: '*',
    });
  });

  it("optionalForm leaves '*' levels out, the fields in the order the controller's lease payload had them", () => {
    expect(optionalForm({ tenant: 'acme', team: '*', project: '*' })).toEqual({ tenant: 'acme' });
    expect(Object.keys(optionalForm({ tenant: 'acme', team: 'search', project: 'ranker' }))).toEqual(['tenant', 'team', 'project']);
    expect(JSON.stringify(optionalForm({ tenant: 'acme', team: 'search', project: '*' }))).toBe('{"tenant":"acme","team":"search"}');
  });

  it('round trip: optional form → scope → optional form, and scope → optional form → scope', () => {
    fc.assert(
      fc.property(optionalScope, (s) => {
        expect(optionalForm(scopeOf(s))).toEqual(s);
        const c = scopeOf(s);
        expect(scopeOf(optionalForm(c))).toEqual(c);
      }),
    );
  });
});

describe('scopeLabel', () => {
  it.each<{ from: OptionalBudgetScope; want: string }>([
    { from: { tenant: 'acme' }, want: 'acme/*/*' },
    { from: { tenant: 'acme', team: 'search' }, want: 'acme/search/*' },
    { from: { tenant: 'acme', team: 'search', project: 'ranker' }, want: 'acme/search/ranker' },
    { from: { tenant: 'acme', team: '*', project: '*' }, want: 'acme/*/*' },
  ])('$want', ({ from, want }) => {
    expect(scopeLabel(from)).toBe(want);
  });

  it('is the same for a scope in either form', () => {
    fc.assert(
      fc.property(optionalScope, (s) => {
        expect(scopeLabel(scopeOf(s))).toBe(scopeLabel(s));
      }),
    );
  });

  it("the budget controller's id is unchanged: budget:<tenant>/<team>/<project>:<period>", () => {
    expect(budgetControllerId({ tenant: 'acme', team: '*', project: '*', period: 'total' })).toBe('budget:acme/*/*:total');
    expect(budgetControllerId({ tenant: 'acme', team: 'search', project: '*', period: 'month' })).toBe('budget:acme/search/*:month');
    expect(budgetControllerId({ tenant: 'acme', team: 'search', project: 'ranker', period: 'week' })).toBe('budget:acme/search/ranker:week');
  });
});

describe('BudgetScopeSchema', () => {
  it('accepts a tenant, a team, a team and its project', () => {
    fc.assert(
      fc.property(optionalScope, (s) => {
        expect(BudgetScopeSchema.parse(s)).toEqual(s);
      }),
    );
  });

  it.each<{ name: string; input: unknown; path: (string | number)[]; message: RegExp }>([
    { name: 'a project without its team', input: { tenant: 'acme', project: 'ranker' }, path: ['project'], message: /a project scope needs a team/ },
    { name: 'an empty team', input: { tenant: 'acme', team: '' }, path: ['team'], message: /.+/ },
    { name: 'a name past 63 characters', input: { tenant: 'acme', team: 'search', project: 'p'.repeat(64) }, path: ['project'], message: /.+/ },
    { name: 'no tenant', input: { team: 'search' }, path: ['tenant'], message: /.+/ },
    { name: 'a field a scope does not have', input: { tenant: 'acme', useCase: 'chat' }, path: [], message: /useCase/ },
  ])('refuses $name, naming the path', ({ input, path, message }) => {
    const r = BudgetScopeSchema.safeParse(input);
    expect(r.success).toBe(false);
    const issue = r.error!.issues[0]!;
    expect(issue.path).toEqual(path);
    expect(issue.message).toMatch(message);
  });
});
