-- govloop ledger, version 18: a preemption that was never carried out is closed, not left open.
-- A preemption row stays open (suspended_at NULL) while its victim checkpoints. When the victim's
-- job ends first (PREEMPT_TOO_LATE), or the task is cancelled or fails in the meantime, nothing is
-- suspended and nothing lost; the row was left open for ever and counted in the period report's
-- preemption losses against the preemptor's team. `dropped_at` is when the victim finished with
-- its preemption still open (ledger/tasks.ts updateTask); reports leave such rows out.
ALTER TABLE preemptions ADD COLUMN dropped_at timestamptz;
-- Rows left open by victims that have already finished: not carried out, as of their finish.
UPDATE preemptions p SET dropped_at = t.finished_at
  FROM tasks t
 WHERE t.task_id = p.victim_task_id AND p.suspended_at IS NULL AND t.finished_at IS NOT NULL;
