-- The audit log is append-only in the database too (decision 0019): a row-level trigger refuses
-- UPDATE and DELETE, a statement-level one TRUNCATE, whoever asks (the table's owner included,
-- until it disables them: that is what the signed checkpoints outside the database are for).
-- govloop_append_only() (0001) raises '<table> is append-only: <op> refused'.
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION govloop_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION govloop_append_only();

-- Roles other than the owner never get to change or remove rows, whatever was granted before.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
