-- govloop ledger, version 17: the open tasks by planned GPU type (issue 13). Every quota decision
-- reads the tasks of one GPU type that hold or wait for quota (ledger/quota.ts gpuTasks,
-- tasksToWake; ledger/tasks.ts teamGpusInUse). Through the state index alone, in a run of 15,000
-- small cluster tasks, such a read went over 9,000-13,000 index entries (the row versions a task
-- leaves behind as its state changes, until vacuum) for 3-24 live rows: 13-15 ms a read
-- (EXPLAIN ANALYZE during the run), three or more reads per admission. This index holds only
-- unfinished tasks, keyed by the GPU type of their plan (NULL before admission writes one).
CREATE INDEX tasks_open_gpu ON tasks ((plan->'gpu'->>'type'), state) WHERE finished_at IS NULL;
