-- govloop ledger, version 2: who may approve what, approval requests, compensations of agent steps.

-- Roles per tenant: an approver must hold one of the tool's approver roles in the task's tenant.
CREATE TABLE access_grants (
  tenant      text NOT NULL,
  user_name   text NOT NULL,
  role        text NOT NULL,
  granted_by  text NOT NULL,
  granted_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, user_name, role)
);

-- One row per high-risk tool call waiting for (or decided by) a human. The row is the lock that
-- makes a decision happen exactly once, whoever comes first: an approver, a rejecter, or the TTL.
CREATE TABLE approvals (
  approval_id   text PRIMARY KEY,
  task_id       text NOT NULL REFERENCES tasks(task_id),
  tenant        text NOT NULL,
  tool          text NOT NULL,
  args_digest   text NOT NULL,
  requester     text NOT NULL,
  cost_so_far_micros bigint NOT NULL,
  tier          int NOT NULL DEFAULT 0,
  state         text NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
  requested_at  timestamptz NOT NULL,
  escalate_at   timestamptz NOT NULL,
  expires_at    timestamptz NOT NULL,
  decided_by    text,
  decided_at    timestamptz,
  reason        text
);
CREATE INDEX approvals_pending ON approvals (requested_at) WHERE state = 'pending';

-- Compensations of side-effecting steps: what rollback did, or could not do.
CREATE TABLE compensations (
  task_id       text NOT NULL,
  seq           int NOT NULL,
  tool          text NOT NULL,
  compensation  text NOT NULL,
  args          jsonb,
  state         text NOT NULL CHECK (state IN ('done', 'failed')),
  attempts      int NOT NULL DEFAULT 0,
  error         text,
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (task_id, seq)
);
