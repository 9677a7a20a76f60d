-- Quotas and preemption (docs/decisions/0013-quotas-and-preemption.md).

-- The simulated cluster checkpoints: a suspended job goes back to its last checkpoint. ran_s is
-- every simulated second it ran (what is metered and charged); progress_s is work kept.
ALTER TABLE sim_jobs ADD COLUMN checkpoint_s double precision NOT NULL DEFAULT 0;
ALTER TABLE sim_jobs ADD COLUMN ran_s double precision NOT NULL DEFAULT 0;
ALTER TABLE sim_jobs ADD COLUMN lost_s double precision NOT NULL DEFAULT 0;
UPDATE sim_jobs SET ran_s = progress_s;

-- One row per preemption of a task: who decided it and for whom, and the work it lost. Open
-- (suspended_at NULL) while the victim checkpoints and is suspended; the lost GPU-seconds are
-- shown against the preemptor's team.
CREATE TABLE preemptions (
  victim_task_id     text NOT NULL REFERENCES tasks(task_id),
  round              int NOT NULL,
  preemptor_task_id  text,
  by                 text NOT NULL,
  reason             text NOT NULL,
  preemptor_tenant   text,
  preemptor_team     text,
  gpu_type           text,
  gpus               int NOT NULL DEFAULT 0,
  lost_gpu_seconds   double precision NOT NULL DEFAULT 0,
  decided_at         timestamptz NOT NULL DEFAULT now(),
  suspended_at       timestamptz,
  PRIMARY KEY (victim_task_id, round)
);
CREATE UNIQUE INDEX preemptions_open ON preemptions (victim_task_id) WHERE suspended_at IS NULL;
CREATE INDEX preemptions_team ON preemptions (preemptor_tenant, preemptor_team);
