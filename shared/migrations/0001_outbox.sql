-- Events waiting for the broker; a row leaves only once the broker confirms it.
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    seq bigserial NOT NULL,
    routing_key text NOT NULL,
    body bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error text
);

CREATE INDEX outbox_due ON outbox (next_attempt_at, seq);

-- Wake the relay when a transaction that added events commits.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bitloot_outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_inserted
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
