"""The one event emitter: JSON Lines to every configured sink.

Events are Cowrie-style flat objects. The emitter adds what a protocol core
cannot know (when, which sensor, which connection); the sinks are stdlib
logging handlers, so rotation, syslog and stdout are not ours to get wrong.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from looper.events import Event

EVENTS_FILE = "events.jsonl"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The common fields of every event of one connection."""

    session: str
    protocol: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int


def new_session_id() -> str:
    return secrets.token_hex(6)


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventLog:
    """Formats each event as one JSON line and hands it to every sink."""

    def __init__(self, sensor: str, handlers: list[logging.Handler]) -> None:
        self.sensor = sensor
        self._handlers = handlers
        # A private logger: nothing propagates to (or from) the root logger.
        self._logger = logging.Logger("looper.events", logging.INFO)
        self._logger.propagate = False
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)

    def emit(self, who: SessionInfo, eventid: str, **fields: Any) -> None:
        record = {
            "timestamp": rfc3339_now(),
            "eventid": eventid,
            "session": who.session,
            "sensor": self.sensor,
            "protocol": who.protocol,
            "src_ip": who.src_ip,
            "src_port": who.src_port,
            "dst_ip": who.dst_ip,
            "dst_port": who.dst_port,
        }
        record.update(fields)
        self._logger.info(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))

    def emit_event(self, who: SessionInfo, event: Event) -> None:
        self.emit(who, event.eventid, **event.fields)

    def close(self) -> None:
        for handler in self._handlers:
            self._logger.removeHandler(handler)
            handler.close()


def open_event_log(sensor: str, log_dir: str, *, max_bytes: int, backups: int,
                   stdout: bool = False, syslog: bool = False) -> EventLog:
    """The event log of a running trap: <log_dir>/events.jsonl plus extras."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            os.path.join(log_dir, EVENTS_FILE), maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    ]
    if stdout:
        handlers.append(logging.StreamHandler(sys.stdout))
    if syslog:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handlers.append(logging.handlers.SysLogHandler(address=address, facility="mail"))
    return EventLog(sensor, handlers)
