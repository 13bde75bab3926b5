-- Wrong codes per address, across all its codes: the sliding window of the
-- budget of failed verifications. A new code resets its own wrong tries but
-- not these, so asking for more codes buys no more guesses. Only codes that
-- were actually compared and wrong are kept; refusals while the budget is
-- spent are not, so they cannot prolong the lock.
CREATE TABLE failed_verifications (
    id bigserial PRIMARY KEY,
    email_hash bytea NOT NULL,
    failed_at timestamptz NOT NULL
);

CREATE INDEX failed_verifications_by_email
    ON failed_verifications (email_hash, failed_at);
CREATE INDEX failed_verifications_by_time ON failed_verifications (failed_at);
