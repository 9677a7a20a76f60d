-- When a simulated job last started or resumed (NULL while it is not Running). `resumed_at` moves
-- every time progress is folded in, so it cannot say how long the job has run: victim selection
-- needs that to shield young jobs (policies.preemption.minRunSeconds, decision 0013).
ALTER TABLE sim_jobs ADD COLUMN running_since timestamptz;
UPDATE sim_jobs SET running_since = resumed_at WHERE phase = 'Running';
