-- govloop ledger, version 17: the open tasks by planned GPU type (issue 13). Every quota decision
-- reads the tasks of one GPU type that hold or wait for quota (ledger/quota.ts gpuTasks,
-- tasksToWake; ledger/tasks.ts teamGpusInUse). Through the state index those reads also went over
-- every task still in its first admission ('Admitting', no plan yet): with 15,000 tasks submitted
-- at once, a sequential scan of about 16 ms each, three or more per admission. This index holds
-- only unfinished tasks, keyed by the GPU type of their plan (NULL before admission writes one).
CREATE INDEX tasks_open_gpu ON tasks ((plan->'gpu'->>'type'), state) WHERE finished_at IS NULL;
