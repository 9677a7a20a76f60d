-- govloop ledger, version 9: identities (decision 0018).

-- A key is issued to a user in one tenant: it authenticates as that user, acting in that tenant
-- only. Keys from before (usage ingestion, one tenant each) name no user.
ALTER TABLE api_keys ADD COLUMN subject text;

-- The workflow run a task row belongs to. A second run under the same task id is refused at
-- admission (TASK_ID_REUSED): it never adopts the first run's reservation, usage or approvals.
ALTER TABLE tasks ADD COLUMN run_id text;

-- An approval is bound to the run and step it was asked for, besides the tool and args digest.
ALTER TABLE approvals ADD COLUMN run_id text;
ALTER TABLE approvals ADD COLUMN seq int;
