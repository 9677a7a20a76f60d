-- govloop ledger, version 4: usage rollups (the meteringRollup schedule writes them).

-- Hourly and daily aggregates of usage_events by attribution, tool, meter and subject. A bucket
-- is always recomputed whole from usage_events (DELETE + INSERT in one transaction), so a re-run,
-- a duplicate event or a late event can never make a rollup drift from the raw truth.
-- Dimensions left empty ('') in an attribution are "unattributed" there; they are rolled up and
-- reported like any other value, never dropped.
CREATE TABLE usage_rollups (
  grain          text NOT NULL CHECK (grain IN ('hour', 'day')),
  bucket         timestamptz NOT NULL,
  attribution_id bigint NOT NULL REFERENCES attributions(id),
  tool           text NOT NULL DEFAULT '',
  meter          text NOT NULL,
  subject        text NOT NULL,
  quantity       double precision NOT NULL,
  cost_micros    bigint NOT NULL,
  events         bigint NOT NULL,
  PRIMARY KEY (grain, bucket, attribution_id, tool, meter, subject)
);
CREATE INDEX usage_rollups_bucket ON usage_rollups (grain, bucket);

-- How far each grain has been rolled up: buckets touched by events recorded after
-- (watermark - late-arrival margin) are recomputed by the next run.
CREATE TABLE rollup_state (
  grain      text PRIMARY KEY,
  watermark  timestamptz NOT NULL,
  runs       bigint NOT NULL DEFAULT 0,
  last_run   timestamptz NOT NULL
);

CREATE INDEX usage_events_recorded_at ON usage_events (recorded_at);
CREATE INDEX usage_events_occurred_at ON usage_events (occurred_at);
