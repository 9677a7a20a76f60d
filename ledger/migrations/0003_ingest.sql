-- govloop ledger, version 3: API keys for the usage ingestion API.

-- One row per key. Only the SHA-256 of the key is kept: the plaintext is shown once, at creation.
-- A key belongs to one tenant and reads and writes that tenant only.
CREATE TABLE api_keys (
  id          bigserial PRIMARY KEY,
  tenant      text NOT NULL,
  key_hash    text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
  prefix      text NOT NULL,          -- the first characters of the key, to tell keys apart in lists
  created_by  text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

-- GET /v1/usage reads one tenant's usage over a time range: find its attributions, then their
-- events by time, without scanning every tenant's events.
CREATE INDEX usage_events_attribution_time ON usage_events (attribution_id, occurred_at);
