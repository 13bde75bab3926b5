"""The checked-in JSON Schemas are exactly what the contract models generate."""

from __future__ import annotations

from contracts.envelope import EVENT_TYPES, unwrap, wrap
from contracts.generate import SCHEMA_DIR, render_schemas
from contracts.webhooks import NowPaymentsIpnReceived


def test_the_checked_in_schemas_match_the_models() -> None:
    """Run `python -m contracts.generate` when this fails after a model change."""
    rendered = render_schemas()
    on_disk = {path.name: path.read_text() for path in SCHEMA_DIR.glob("*.json")}
    assert sorted(on_disk) == sorted(rendered)
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} drifted from its model"


def test_every_webhook_event_type_has_a_schema() -> None:
    """Each registered routing key has its file."""
    names = set(render_schemas())
    for event_type in EVENT_TYPES:
        assert f"{event_type}.schema.json" in names


def test_an_envelope_round_trips_through_json() -> None:
    """What a producer wraps, a consumer unwraps to the same data."""
    data = NowPaymentsIpnReceived(
        delivery_id="6f1c1d4e-8a63-4c8e-9d59-3f7b1c1f0a11",  # type: ignore[arg-type]
        received_at="2026-12-03T10:00:00Z",  # type: ignore[arg-type]
        payment_id="1",
        payment_status="waiting",
        body={"payment_id": 1, "payment_status": "waiting"},
    )
    envelope = wrap(data, "webhook-ingest", "corr-1")
    again = type(envelope).model_validate_json(envelope.model_dump_json())
    assert again == envelope
    assert unwrap(again) == data
