"""Write the JSON Schemas and the AsyncAPI document to ``contracts/schemas``.

Run ``python -m contracts.generate`` after changing a model; a test fails while
the checked-in files differ from what the models produce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Importing the contract modules registers their events.
import contracts.email
import contracts.otp
import contracts.payments
import contracts.webhooks  # noqa: F401  (imported for registration only)
from contracts.envelope import EVENT_TYPES, EXCHANGE, Envelope

SCHEMA_DIR = Path(__file__).parent / "schemas"


def render_schemas() -> dict[str, str]:
    """File name to file text, for the envelope and each registered event."""
    documents: dict[str, dict[str, Any]] = {
        "envelope.schema.json": Envelope.model_json_schema(mode="serialization"),
    }
    for event_type, data_class in sorted(EVENT_TYPES.items()):
        schema = data_class.model_json_schema(mode="serialization")
        schema["$id"] = f"https://bitloot.example/schemas/{event_type}.schema.json"
        schema["x-routing-key"] = event_type
        schema["x-version"] = data_class.version
        documents[f"{event_type}.schema.json"] = schema
    documents["asyncapi.json"] = _asyncapi(documents)
    return {
        name: json.dumps(document, indent=2, sort_keys=True) + "\n"
        for name, document in documents.items()
    }


def _asyncapi(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One channel per routing key on the topic exchange, payload = envelope."""
    envelope = schemas["envelope.schema.json"]
    channels = {}
    for event_type, data_class in sorted(EVENT_TYPES.items()):
        payload = json.loads(json.dumps(envelope))
        payload["properties"]["type"] = {"const": event_type, "type": "string"}
        payload["properties"]["data"] = schemas[f"{event_type}.schema.json"]
        channels[event_type] = {
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": EXCHANGE, "type": "topic", "durable": True},
                }
            },
            "subscribe": {
                "summary": (data_class.__doc__ or "").strip().splitlines()[0],
                "message": {
                    "name": event_type,
                    "contentType": "application/json",
                    "payload": payload,
                },
            },
        }
    return {
        "asyncapi": "2.6.0",
        "info": {"title": "BitLoot events", "version": "1.0.0"},
        "defaultContentType": "application/json",
        "servers": {
            "local": {"url": "amqp://127.0.0.1:5672", "protocol": "amqp"},
        },
        "channels": channels,
    }


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    rendered = render_schemas()
    for stale in SCHEMA_DIR.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(rendered)} schemas to {SCHEMA_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
