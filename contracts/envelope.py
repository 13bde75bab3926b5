"""The envelope every event travels in, and the registry of event types."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXCHANGE = "bitloot.events"


class EventData(BaseModel):
    """The payload of one event type; subclasses name their routing key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    version: ClassVar[int] = 1


class Envelope(BaseModel):
    """What travels on ``bitloot.events``: metadata around an event's data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID = Field(description="Unique per event; consumers dedupe on it.")
    type: str = Field(description="The routing key, e.g. payment.completed.")
    version: int = Field(ge=1, description="Version of the data's schema.")
    occurred_at: datetime = Field(description="When the fact happened, UTC.")
    producer: str = Field(description="The service that recorded the fact.")
    correlation_id: str = Field(
        description="Ties the event to the request or event that caused it."
    )
    data: dict[str, Any] = Field(description="The event's payload, per its type.")


EVENT_TYPES: dict[str, type[EventData]] = {}


def register(data_class: type[EventData]) -> type[EventData]:
    """Add an event type to the registry the schemas are generated from."""
    EVENT_TYPES[data_class.event_type] = data_class
    return data_class


def wrap(
    data: EventData,
    producer: str,
    correlation_id: str,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Put an event's data into a new envelope."""
    return Envelope(
        id=uuid.uuid4(),
        type=data.event_type,
        version=data.version,
        occurred_at=occurred_at or datetime.now(UTC),
        producer=producer,
        correlation_id=correlation_id,
        data=data.model_dump(mode="json"),
    )


def unwrap(envelope: Envelope) -> EventData:
    """Validate an envelope's data against its registered type."""
    data_class = EVENT_TYPES.get(envelope.type)
    if data_class is None:
        raise ValueError(f"unknown event type {envelope.type!r}")
    return data_class.model_validate(envelope.data)


def describe_invalid(error: Exception) -> str:
    """Why data broke its contract, naming the fields but never their values.

    An event may carry an address or a login code, and this reason is logged
    and kept in a dead-lettered message's headers.
    """
    if not isinstance(error, ValidationError):
        return str(error)
    problems = error.errors(include_input=False, include_url=False)
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'data'}: {problem['msg']}"
        for problem in problems
    )
