-- govloop ledger, version 1. Money is integer micro-dollars (bigint); sums are exact.

-- Attribution dimensions: every usage row points at one full tuple.
CREATE TABLE attributions (
  id         bigserial PRIMARY KEY,
  tenant     text NOT NULL,
  team       text NOT NULL,
  project    text NOT NULL,
  model      text NOT NULL,
  use_case   text NOT NULL,
  UNIQUE (tenant, team, project, model, use_case)
);

-- Price book: one row per version and price line. Rows are never edited once in force.
CREATE TABLE price_book (
  version        int NOT NULL,
  effective_from timestamptz NOT NULL,
  meter          text NOT NULL,          -- gpu_seconds | tokens_in | tokens_out
  subject        text NOT NULL,          -- gpu type:sharing, or model
  usd_per_unit   double precision NOT NULL,
  PRIMARY KEY (version, meter, subject)
);

-- Budgets: scope (tenant, team or '*', project or '*') x period x unit.
CREATE TABLE budgets (
  id            bigserial PRIMARY KEY,
  tenant        text NOT NULL,
  team          text NOT NULL DEFAULT '*',
  project       text NOT NULL DEFAULT '*',
  period        text NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
  unit          text NOT NULL DEFAULT 'usd' CHECK (unit IN ('usd')),
  limit_micros  bigint NOT NULL CHECK (limit_micros >= 0),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (tenant, team, project, period, unit)
);

-- One row per budget and period window; the counters move only together with the rows that justify them.
CREATE TABLE budget_windows (
  budget_id        bigint NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
  window_key       text NOT NULL,
  reserved_micros  bigint NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
  spent_micros     bigint NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
  PRIMARY KEY (budget_id, window_key)
);

-- Tasks: the ledger's record of each governed workload.
CREATE TABLE tasks (
  task_id         text PRIMARY KEY,
  kind            text NOT NULL,
  name            text NOT NULL,
  attribution_id  bigint NOT NULL REFERENCES attributions(id),
  requester       text NOT NULL,
  priority        text NOT NULL,
  decision        text,
  state           text NOT NULL,
  reasons         jsonb NOT NULL DEFAULT '[]',
  plan            jsonb,
  intent          jsonb NOT NULL,
  cost_micros     bigint NOT NULL DEFAULT 0,
  created_at      timestamptz NOT NULL DEFAULT now(),
  finished_at     timestamptz
);
CREATE INDEX tasks_state ON tasks (state);

-- Reservations: the worst case of a task, held against every budget window that covers it.
CREATE TABLE reservations (
  task_id           text PRIMARY KEY REFERENCES tasks(task_id),
  amount_micros     bigint NOT NULL CHECK (amount_micros >= 0),
  remaining_micros  bigint NOT NULL CHECK (remaining_micros >= 0),
  state             text NOT NULL CHECK (state IN ('held', 'released')),
  created_at        timestamptz NOT NULL DEFAULT now(),
  released_at       timestamptz
);
CREATE TABLE reservation_holds (
  task_id     text NOT NULL REFERENCES reservations(task_id),
  budget_id   bigint NOT NULL,
  window_key  text NOT NULL,
  PRIMARY KEY (task_id, budget_id, window_key),
  FOREIGN KEY (budget_id, window_key) REFERENCES budget_windows(budget_id, window_key) ON DELETE CASCADE
);

-- Usage: append-only; a re-delivered event (same idempotency key) is counted once, forever.
CREATE TABLE usage_events (
  id               bigserial PRIMARY KEY,
  idempotency_key  text NOT NULL UNIQUE,
  task_id          text,
  attribution_id   bigint NOT NULL REFERENCES attributions(id),
  tool             text,
  meter            text NOT NULL,
  subject          text NOT NULL,
  quantity         double precision NOT NULL CHECK (quantity >= 0),
  price_version    int NOT NULL,
  cost_micros      bigint NOT NULL CHECK (cost_micros >= 0),
  occurred_at      timestamptz NOT NULL,
  recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_events_task ON usage_events (task_id);
CREATE INDEX usage_events_time ON usage_events (occurred_at);
CREATE FUNCTION govloop_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$;
CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE ON usage_events
  FOR EACH ROW EXECUTE FUNCTION govloop_append_only();

-- Audit log: append-only, each row hashes the one before it.
CREATE TABLE audit_log (
  id         bigserial PRIMARY KEY,
  at         timestamptz NOT NULL DEFAULT now(),
  actor      text NOT NULL,
  task_id    text,
  action     text NOT NULL,
  decision   text NOT NULL,
  detail     jsonb NOT NULL DEFAULT '{}',
  dedupe_key text UNIQUE,
  prev_hash  text NOT NULL,
  hash       text NOT NULL
);
CREATE INDEX audit_log_task ON audit_log (task_id);

-- The simulated cluster: nodes and jobs live in the ledger, so a worker restart loses nothing.
CREATE TABLE sim_nodes (
  cluster   text NOT NULL,
  name      text NOT NULL,
  gpu_type  text NOT NULL,
  gpus      int NOT NULL,
  rack      text NOT NULL,
  block     text NOT NULL,
  PRIMARY KEY (cluster, name)
);
CREATE TABLE sim_jobs (
  cluster            text NOT NULL,
  name               text NOT NULL,
  task_id            text NOT NULL,
  node               text,
  gpus               int NOT NULL,
  gpu_type           text,
  sharing            text NOT NULL,
  phase              text NOT NULL CHECK (phase IN ('Suspended', 'Running', 'Succeeded', 'Failed', 'Deleted')),
  duration_s         double precision NOT NULL,
  fail_after_s       double precision,
  tokens_per_second  double precision NOT NULL,
  progress_s         double precision NOT NULL DEFAULT 0,
  resumed_at         timestamptz,
  labels             jsonb NOT NULL DEFAULT '{}',
  created_at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (cluster, name)
);
CREATE INDEX sim_jobs_node ON sim_jobs (cluster, node) WHERE phase IN ('Running', 'Suspended');

-- How much of a job's cumulative usage has already been metered, per meter.
CREATE TABLE meter_cursors (
  task_id   text NOT NULL,
  meter     text NOT NULL,
  metered   double precision NOT NULL,
  PRIMARY KEY (task_id, meter)
);
