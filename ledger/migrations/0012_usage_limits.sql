-- govloop ledger, version 12: sums that cannot overflow (issue 11; governance/limits.ts).
-- (Numbered 0012, not 0011: migrations are applied by name in order, and a gap is fine.)

-- Every money counter holds at most 2^53 - 1 micro-dollars (~$9.007 billion): the largest integer
-- a JavaScript number holds exactly (ledger/db.ts reads bigint as number). An addition past it
-- fails the CHECK (or bigint's own range, 22003) and the ledger refuses it as a UsageLimitError:
-- the transaction rolls back and nothing moves. NOT VALID: rows written before this migration are
-- not checked (the migration must not fail on a ledger that already holds a huge value); every
-- row written or updated from now on is.
ALTER TABLE budgets ADD CONSTRAINT budgets_limit_micros_max CHECK (limit_micros <= 9007199254740991) NOT VALID;
ALTER TABLE budget_windows ADD CONSTRAINT budget_windows_reserved_micros_max CHECK (reserved_micros <= 9007199254740991) NOT VALID;
ALTER TABLE budget_windows ADD CONSTRAINT budget_windows_spent_micros_max CHECK (spent_micros <= 9007199254740991) NOT VALID;
ALTER TABLE tasks ADD CONSTRAINT tasks_cost_micros_max CHECK (cost_micros <= 9007199254740991) NOT VALID;
ALTER TABLE reservations ADD CONSTRAINT reservations_amount_micros_max CHECK (amount_micros <= 9007199254740991) NOT VALID;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_cost_micros_max CHECK (cost_micros <= 9007199254740991) NOT VALID;
ALTER TABLE leases ADD CONSTRAINT leases_amount_micros_max CHECK (amount_micros <= 9007199254740991) NOT VALID;
ALTER TABLE leases ADD CONSTRAINT leases_spent_micros_max CHECK (spent_micros <= 9007199254740991) NOT VALID;
ALTER TABLE lease_reports ADD CONSTRAINT lease_reports_micros_max CHECK (micros <= 9007199254740991) NOT VALID;

-- A rollup row sums events: it is numeric, so the rollup (one run for every tenant) can never fail
-- on a sum, whatever one tenant's events hold. Readers cast their sums to float8, which is exact
-- up to the same 2^53 and never raises.
ALTER TABLE usage_rollups ALTER COLUMN cost_micros TYPE numeric;
