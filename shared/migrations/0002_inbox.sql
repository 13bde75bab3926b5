-- Events a consumer has already handled, so a redelivery changes nothing.
CREATE TABLE inbox (
    consumer text NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
