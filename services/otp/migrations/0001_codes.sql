-- Login codes, the requests that asked for them, and the users they made.
-- Addresses and clients are kept as keyed hashes (HMAC-SHA256 under the
-- service's secret); codes only as keyed hashes; times come from the
-- service's clock, so that every instance judges them alike.

-- One live code per address: a new request replaces the earlier one.
CREATE TABLE codes (
    email_hash bytea PRIMARY KEY,
    request_id uuid NOT NULL,
    code_hash bytea NOT NULL,
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    wrong_tries integer NOT NULL DEFAULT 0 CHECK (wrong_tries >= 0)
);

CREATE INDEX codes_by_expiry ON codes (expires_at);

-- Every request that was answered 202: the sliding windows of the rate limits.
-- Refused requests are not kept, so a flood cannot prolong its own refusal.
CREATE TABLE code_requests (
    id bigserial PRIMARY KEY,
    email_hash bytea NOT NULL,
    client_hash bytea NOT NULL,
    requested_at timestamptz NOT NULL
);

CREATE INDEX code_requests_by_email ON code_requests (email_hash, requested_at);
CREATE INDEX code_requests_by_client ON code_requests (client_hash, requested_at);
CREATE INDEX code_requests_by_time ON code_requests (requested_at);

-- Addresses that have logged in at least once; the first login registers them.
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE,
    registered_at timestamptz NOT NULL,
    last_login_at timestamptz NOT NULL
);
