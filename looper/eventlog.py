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
import time
from dataclasses import dataclass
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


_second_formatted: tuple[int, str] = (-1, "")


def rfc3339_now() -> str:
    """UTC with microseconds; the seconds part formatted once per second,
    since every forwarded reply may log an event."""
    global _second_formatted
    now = time.time()
    second = int(now)
    if second != _second_formatted[0]:
        _second_formatted = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_formatted[1]}.{int((now - second) * 1_000_000):06d}Z"


class EventLog:
    """Formats each event as one JSON line and hands it to every sink."""

    def __init__(self, sensor: str, handlers: list[logging.Handler]) -> None:
        self.sensor = sensor
        self._handlers = handlers
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))

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
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        # Straight to the handlers: a Logger would look up its caller's frame.
        entry = _EventLine(line)
        for handler in self._handlers:
            handler.handle(entry)

    def emit_event(self, who: SessionInfo, event: Event) -> None:
        self.emit(who, event.eventid, **event.fields)

    def close(self) -> None:
        for handler in self._handlers:
            handler.close()


class _EventLine(logging.LogRecord):
    """A record that is only its line: LogRecord's own constructor looks up
    thread, process and caller for every record, which events never need."""

    def __init__(self, line: str) -> None:  # noqa: D107 (no super() on purpose)
        self.name = "looper.events"
        self.msg = line
        self.args = None
        self.levelno, self.levelname = logging.INFO, "INFO"
        self.exc_info = self.exc_text = self.stack_info = None


class _JsonLinesFile(logging.handlers.RotatingFileHandler):
    """Rotation by a byte count kept in memory: the stdlib handler stats,
    seeks and formats twice for every record to decide."""

    def __init__(self, path: str, *, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._size = os.path.getsize(path) if os.path.exists(path) else 0

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        size = len(record.msg.encode("utf-8")) + 1
        roll = self._size > 0 and self._size + size > self.maxBytes
        self._size = size if roll else self._size + size
        return roll


def open_event_log(sensor: str, log_dir: str, *, max_bytes: int, backups: int,
                   stdout: bool = False, syslog: bool = False) -> EventLog:
    """The event log of a running trap: <log_dir>/events.jsonl plus extras."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        _JsonLinesFile(os.path.join(log_dir, EVENTS_FILE), max_bytes=max_bytes, backups=backups)
    ]
    if stdout:
        handlers.append(logging.StreamHandler(sys.stdout))
    if syslog:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handlers.append(logging.handlers.SysLogHandler(address=address, facility="mail"))
    return EventLog(sensor, handlers)
