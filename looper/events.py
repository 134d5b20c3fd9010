"""The one event type that every protocol core emits.

A core knows what it saw, never who it saw it from or when: the emitter in
eventlog.py adds the timestamp and the session's common fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """A fact seen by a protocol core: a dotted id and its own fields."""

    eventid: str
    fields: dict[str, Any] = field(default_factory=dict)
