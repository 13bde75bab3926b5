-- Every verified webhook delivery, exactly as received; one row per provider event.
CREATE TABLE deliveries (
    id uuid PRIMARY KEY,
    provider text NOT NULL,
    dedup_key text NOT NULL,
    event_name text NOT NULL,
    reference text NOT NULL,
    raw_body bytea NOT NULL,
    received_at timestamptz NOT NULL,
    event_id uuid NOT NULL,
    CONSTRAINT deliveries_provider_event UNIQUE (provider, dedup_key)
);

CREATE INDEX deliveries_reference ON deliveries (provider, reference);
