-- The catalogue, orders, their payments and every change of status.

CREATE TABLE products (
    id text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    name text NOT NULL,
    price numeric(12, 2) NOT NULL CHECK (price > 0),
    currency text NOT NULL DEFAULT 'usd',
    active boolean NOT NULL DEFAULT true
);

INSERT INTO products (id, name, price) VALUES
    ('steam-gift-card-20', 'Steam Gift Card 20 USD', 20.00),
    ('xbox-game-pass-1m', 'Xbox Game Pass Ultimate, 1 month', 16.99),
    ('minecraft-java', 'Minecraft: Java & Bedrock Edition', 29.99),
    ('elden-ring', 'Elden Ring (Steam key)', 39.99);

CREATE TABLE orders (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    status text NOT NULL,
    total_amount numeric(12, 2) NOT NULL,
    total_currency text NOT NULL,
    idempotency_key text UNIQUE,
    underpaid_at timestamptz,
    fulfilment_status text,
    fulfilment_updated_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
    order_id uuid NOT NULL REFERENCES orders (id),
    product_id text NOT NULL REFERENCES products (id),
    quantity integer NOT NULL CHECK (quantity > 0),
    unit_price numeric(12, 2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- One payment an order; repeated deposits to it are rows of payment_deposits.
CREATE TABLE payments (
    order_id uuid PRIMARY KEY REFERENCES orders (id),
    provider text NOT NULL,
    provider_payment_id text NOT NULL,
    status text NOT NULL,
    pay_address text NOT NULL,
    pay_amount numeric(38, 18) NOT NULL CHECK (pay_amount > 0),
    pay_currency text NOT NULL,
    actually_paid numeric(38, 18) NOT NULL DEFAULT 0,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_payment_id)
);

CREATE TABLE payment_deposits (
    provider text NOT NULL,
    provider_payment_id text NOT NULL,
    order_id uuid NOT NULL REFERENCES payments (order_id),
    status text NOT NULL,
    actually_paid numeric(38, 18) NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_payment_id)
);

CREATE TABLE order_history (
    id bigserial PRIMARY KEY,
    order_id uuid NOT NULL REFERENCES orders (id),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    subject text NOT NULL CHECK (subject IN ('order', 'payment', 'deposit', 'fulfilment')),
    from_status text,
    to_status text NOT NULL,
    delivery_id uuid,
    detail jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX order_history_by_order ON order_history (order_id, id);
