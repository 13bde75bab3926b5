-- One row per email the service owes someone, keyed by the business fact it
-- tells of. The row is written, and committed, before any send is tried.
CREATE TABLE emails (
    id uuid PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    type text NOT NULL,
    priority smallint NOT NULL,
    recipient text NOT NULL,
    -- What the templates read; for an OTP email it holds the code, so it is
    -- erased once the email is sent or given up on.
    data jsonb,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- While sending: when the instance holding it is presumed gone.
    lease_until timestamptz,
    provider text,
    provider_message_id text,
    failure_reason text
        CHECK (failure_reason IN ('timeout', 'api_error', 'invalid_address')),
    last_error text,
    event_id uuid NOT NULL,
    correlation_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);

CREATE INDEX emails_due ON emails (priority, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX emails_leased ON emails (lease_until)
    WHERE status = 'sending';
