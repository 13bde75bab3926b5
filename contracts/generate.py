"""Write the JSON Schema of every event to ``contracts/schemas``.

Run ``python -m contracts.generate`` after changing a model; a test fails while
the checked-in files differ from what the models produce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import contracts.webhooks  # noqa: F401  (registers the webhook events)
from contracts.envelope import EVENT_TYPES, Envelope

SCHEMA_DIR = Path(__file__).parent / "schemas"


def render_schemas() -> dict[str, str]:
    """File name to file text, for the envelope and each registered event."""
    documents: dict[str, dict[str, Any]] = {
        "envelope.schema.json": Envelope.model_json_schema(),
    }
    for event_type, data_class in sorted(EVENT_TYPES.items()):
        schema = data_class.model_json_schema()
        schema["$id"] = f"https://bitloot.example/schemas/{event_type}.schema.json"
        schema["x-routing-key"] = event_type
        schema["x-version"] = data_class.version
        documents[f"{event_type}.schema.json"] = schema
    return {
        name: json.dumps(document, indent=2, sort_keys=True) + "\n"
        for name, document in documents.items()
    }


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    rendered = render_schemas()
    for stale in SCHEMA_DIR.glob("*.schema.json"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(rendered)} schemas to {SCHEMA_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
