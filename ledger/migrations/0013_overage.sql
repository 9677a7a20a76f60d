-- govloop ledger, version 13: the charge to budgets never exceeds the reservation (issue 15,
-- decision 0023). Usage beyond what a task reserved is recorded as overage: attributed and
-- audited, shown in `govloop report`, and not added to any budget window's spent.

-- What a task's usage has charged to its budget windows so far, over its whole life (held or
-- released). A task is charged at most amount_micros in total; the rest is overage.
ALTER TABLE reservations ADD COLUMN charged_micros bigint NOT NULL DEFAULT 0;
-- A held reservation has charged exactly what its usage took out of it. A released one has no
-- remaining figure left (release sets it to 0); its task's cost, capped at the reservation, is the
-- best figure there is: before this migration every cost was charged, up to the reservation first.
UPDATE reservations SET charged_micros = amount_micros - remaining_micros WHERE state = 'held';
UPDATE reservations r SET charged_micros = LEAST(r.amount_micros, GREATEST(t.cost_micros, 0))
  FROM tasks t WHERE t.task_id = r.task_id AND r.state = 'released';
ALTER TABLE reservations ADD CONSTRAINT reservations_charged_micros_range CHECK (charged_micros >= 0 AND charged_micros <= amount_micros);
ALTER TABLE reservations ADD CONSTRAINT reservations_charged_micros_max CHECK (charged_micros <= 9007199254740991);

-- One row per charge that went past the reservation: the part not charged to any budget.
-- charge_key is the idempotency key of a usage event of that charge: the event is recorded once
-- (usage_events' key), so is its charge, and a second row for it cannot be written.
CREATE TABLE overages (
  id           bigserial PRIMARY KEY,
  task_id      text NOT NULL REFERENCES tasks(task_id),
  charge_key   text NOT NULL UNIQUE,
  tenant       text NOT NULL,
  team         text NOT NULL,
  project      text NOT NULL,
  micros       bigint NOT NULL CHECK (micros > 0),
  occurred_at  timestamptz NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT overages_micros_max CHECK (micros <= 9007199254740991)
);
CREATE INDEX overages_task ON overages (task_id);
CREATE INDEX overages_scope ON overages (tenant, occurred_at);
