-- govloop ledger, version 15: SLOs (issue 12, decision 0026). One row per agent step the step gate
-- decided (allow, degrade or deny; a step waiting for approval is recorded when it comes back
-- approved). latency_ms: what the agent reported with the step (`latencyMs`; NULL when it sent
-- none). gate_ms: the time the step gate took to decide. Idempotent by (task, seq), as the gate is.
CREATE TABLE agent_steps (
  task_id      text NOT NULL,
  seq          int NOT NULL,
  decision     text NOT NULL CHECK (decision IN ('allow', 'degrade', 'deny')),
  model        text,
  latency_ms   double precision CHECK (latency_ms >= 0),
  gate_ms      double precision NOT NULL CHECK (gate_ms >= 0),
  recorded_at  timestamptz NOT NULL,
  PRIMARY KEY (task_id, seq)
);
CREATE INDEX agent_steps_time ON agent_steps (recorded_at);
-- measureSlos reads finished tasks by time.
CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_created_at ON tasks (created_at);
