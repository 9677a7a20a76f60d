-- govloop ledger, version 14: the simulated cluster stops a job at its run limit (issue 15).
-- stop_at_ran_s: the job's ran_s at which the cluster stops it (set by resume from the run limit
-- the task's caps leave; NULL: no limit). stop_reason: why the cluster stopped it
-- ('DeadlineExceeded', as Kubernetes names a Job stopped by activeDeadlineSeconds).
ALTER TABLE sim_jobs ADD COLUMN stop_at_ran_s double precision;
ALTER TABLE sim_jobs ADD COLUMN stop_reason text;
