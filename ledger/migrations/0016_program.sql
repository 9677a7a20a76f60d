-- govloop ledger, version 16: the migration program's deliverables (issue 12, decision 0027).
-- Each artifact the program produces is kept whole, hashed (sha256 of content), and its hash goes
-- into the audit chain (action 'program.deliverable'), so a deliverable can be traced and checked.
CREATE TABLE program_artifacts (
  program_id text NOT NULL,
  deliverable_id text NOT NULL,
  phase_id text NOT NULL,
  kind text NOT NULL,
  version text NOT NULL,
  sha256 text NOT NULL,
  content text NOT NULL,
  sources jsonb NOT NULL DEFAULT '[]',
  produced_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (program_id, deliverable_id, sha256)
);
