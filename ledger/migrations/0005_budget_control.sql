-- govloop ledger, version 5: the budget controller's ladder, budget raises that need a second
-- person, and budget leases.

-- The ladder step in force in each budget window, as the budget controller last set it. Admission
-- and the step gate read it; a new window starts at 'ok'.
ALTER TABLE budget_windows ADD COLUMN ladder_step text NOT NULL DEFAULT 'ok'
  CHECK (ladder_step IN ('ok', 'notify', 'throttle', 'queue', 'preempt'));
ALTER TABLE budget_windows ADD COLUMN ladder_changed_at timestamptz;

-- One row per step fired on an upward crossing (and per preemption). `crossing` is the
-- controller's count of upward moves in the window: the unique key makes each step fire once per
-- crossing however often the controller's activity is retried.
CREATE TABLE ladder_events (
  id          bigserial PRIMARY KEY,
  budget_id   bigint NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
  window_key  text NOT NULL,
  crossing    int NOT NULL,
  step        text NOT NULL,
  action      text NOT NULL,
  share_pct   double precision NOT NULL,
  detail      jsonb NOT NULL DEFAULT '{}',
  at          timestamptz NOT NULL DEFAULT now(),
  UNIQUE (budget_id, window_key, crossing, step, action)
);
CREATE INDEX ladder_events_at ON ladder_events (at);

-- A raise of an existing budget waits for someone other than the requester.
CREATE TABLE budget_raises (
  id            bigserial PRIMARY KEY,
  budget_id     bigint NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
  from_micros   bigint NOT NULL,
  to_micros     bigint NOT NULL CHECK (to_micros >= 0),
  requested_by  text NOT NULL,
  reason        text NOT NULL,
  state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected')),
  decided_by    text,
  requested_at  timestamptz NOT NULL DEFAULT now(),
  decided_at    timestamptz
);

-- Budget leases: a slice of a scope's budget reserved for a client that spends it in process.
-- `amount` is held on every covering budget window (like a task reservation); reported spend
-- moves from held to spent; what is left is released when the lease is returned or expires.
CREATE TABLE leases (
  lease_id        text PRIMARY KEY,
  tenant          text NOT NULL,
  team            text NOT NULL,
  project         text NOT NULL,
  holder          text NOT NULL,
  amount_micros   bigint NOT NULL CHECK (amount_micros >= 0),
  spent_micros    bigint NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
  state           text NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'returned', 'expired')),
  granted_at      timestamptz NOT NULL DEFAULT now(),
  expires_at      timestamptz NOT NULL,
  closed_at       timestamptz
);
CREATE TABLE lease_holds (
  lease_id    text NOT NULL REFERENCES leases(lease_id),
  budget_id   bigint NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
  window_key  text NOT NULL,
  PRIMARY KEY (lease_id, budget_id, window_key)
);
-- Spend reports of a lease, idempotent by (lease, report sequence).
CREATE TABLE lease_reports (
  lease_id    text NOT NULL REFERENCES leases(lease_id),
  seq         int NOT NULL,
  micros      bigint NOT NULL CHECK (micros >= 0),
  at          timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (lease_id, seq)
);
