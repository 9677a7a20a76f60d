-- Gangs and shared GPUs on the simulated cluster (docs/decisions/0017-gpu-requests.md).

-- What a job holds: the placement's assignments (node, GPU indexes, whole / MIG slice / MPS or
-- time-slice share), so a worker that restarts rebuilds the cluster's state exactly. `node` stays
-- the job's first node. Rows written before this migration hold `gpus` whole GPUs on `node`.
ALTER TABLE sim_jobs ADD COLUMN assignments jsonb;

-- A preemption frees what the victim counted against quota: a share or a MIG slice is a fraction of a GPU.
ALTER TABLE preemptions ALTER COLUMN gpus TYPE double precision;
