"""The one event emitter: JSON Lines to every configured sink.

Events are Cowrie-style flat objects. The emitter adds what a protocol core
cannot know (when, which sensor, which connection).

The write contract: the log is written once per turn of the event loop.
emit() only formats the line and adds it to a pending batch; the first line
of a batch schedules one flush at the end of the loop's turn, which hands the
whole batch to every sink: one write() of whole lines to events.jsonl, one
to stdout, one syslog message per event, a collector's queue (looper.sinks). flush() does it at once: the session
calls it before the 250 that acknowledges a stored message, so the message's
events reach the OS first. Without a running loop every event is written at
once.

A sink that cannot write (disk full, read-only, EIO) never raises into the
caller: what it could not take is counted and dropped (a batch is not kept
in memory while the disk is full), the file is cut back to its last whole
line, and its first successful write afterwards starts with one
`looper.log.dropped` event. `healthy` is False meanwhile, so that the
emulated relay can refuse a message whose events could not be logged.

A kill -9 can still cut the line being written: the kernel stops a write()
that spans a page boundary at that boundary when a fatal signal arrives. The
next open of the log cuts such a fragment off, so that every line of the file
is whole again before anything is appended.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, Union

import orjson

from looper.events import Event

EVENTS_FILE = "events.jsonl"

LOG_DROPPED = "looper.log.dropped"

# The most a batch holds before it is written, even mid-turn: one turn of a
# thousand busy sessions can log megabytes, and holding (then joining) them
# all at once costs the heap more than a few more writes cost the disk.
MAX_BATCH_CHARS = 256 * 1024

log = logging.getLogger("looper.eventlog")

# The standard library's encoder, for what orjson refuses (a lone
# surrogate, an integer over 64 bits); json.dumps with options would build
# one per call.
_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def encode_line(record: dict) -> str:
    """One JSON line (compact, UTF-8 as is, anything else as its str()):
    orjson, a dependency already for reading logs, writes it in about a
    third of the time, which is most of what a busy loop turn spends on
    its events and transcripts."""
    try:
        return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError
        return _json_encode(record)



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


def rfc3339_now(now: float | None = None) -> str:
    """UTC with microseconds, of now or of the time.time() given; the
    seconds part formatted once per second, since every forwarded reply
    may log an event."""
    global _second_formatted
    if now is None:
        now = time.time()
    second = int(now)
    if second != _second_formatted[0]:
        _second_formatted = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_formatted[1]}.{int((now - second) * 1_000_000):06d}Z"


class LinesLost(Exception):
    """A sink could not write a batch: the first `written` lines are out, no
    part of the others is (a sink that wrote part of a line cuts it off)."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(written, cause)
        self.written = written
        self.cause = cause


class Sink:
    """Where the lines go. write() takes a batch of lines (without their
    line ends) and either writes them all or raises LinesLost."""

    # A durable sink's failures make EventLog.healthy False.
    durable = False

    def write(self, lines: list[str]) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Called on the running loop before the first event: a sink that
        talks to a collector starts its connection here."""

    async def stop(self, grace_s: float) -> None:
        """Called on the loop at shutdown, after the last flush: a sink with
        a queue sends what it holds within grace_s."""

    def close(self) -> None:
        pass


@dataclass(slots=True)
class _Outage:
    """Lines one sink could not take since its last good write."""

    dropped: int = 0
    error: str = ""
    since: str = ""


class TurnBatch:
    """Lines written a loop turn at a time: queued, then written together
    (whole lines, one write) once the turn is over; a flood within one turn
    is written in batches of a bounded size. Subclasses write in flush()."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._pending_chars = 0
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # a flush is scheduled on it

    def queue(self, line: str) -> None:
        self._pending.append(line)
        self._pending_chars += len(line)
        if self._pending_chars >= MAX_BATCH_CHARS:
            # A flood of lines in one turn: written now, in batches of a
            # bounded size, rather than held (and joined) all at once.
            self.flush()
            return
        if self._flush_loop is not None and self._flush_loop.is_running():
            return  # this turn's flush is scheduled (and get_running_loop costs a getpid() on Python 3.11)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if loop is not self._flush_loop:
            self._flush_loop = loop
            loop.call_soon(self._end_of_turn)

    def _take(self) -> list[str]:
        lines, self._pending = self._pending, []
        self._pending_chars = 0
        return lines

    def flush(self) -> object:
        raise NotImplementedError

    def _end_of_turn(self) -> None:
        self._flush_loop = None
        self.flush()


class EventLog(TurnBatch):
    """Formats each event as one JSON line; writes them a loop turn at a time."""

    def __init__(self, sensor: str, sinks: list[Union[Sink, logging.Handler]]) -> None:
        super().__init__()
        self.sensor = sensor
        self._sinks: list[Sink] = [s if isinstance(s, Sink) else _HandlerSink(s) for s in sinks]
        self._outages = [_Outage() for _ in self._sinks]
        # Lines each sink has dropped since the start (the outages' counts
        # start again at each recovery): for the metrics.
        self._dropped_totals = [0 for _ in self._sinks]
        self._lock = threading.Lock()  # one batch at a time into the sinks
        # Called with each event's record as it is emitted (the live analysis).
        # A listener may emit events itself: it is then called with those too.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    @property
    def healthy(self) -> bool:
        """False while the last write to a durable sink (events.jsonl)
        failed. It is as fresh as the last write: flush() first."""
        return not any(o.dropped for s, o in zip(self._sinks, self._outages) if s.durable)

    @property
    def dropped(self) -> int:
        """Events not yet accounted for by a looper.log.dropped line, over
        all sinks (each sink counts its own)."""
        return sum(o.dropped for o in self._outages)

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return tuple(self._sinks)

    def dropped_by_sink(self) -> dict[str, int]:
        """Lines each sink has dropped since the start, by the sink's name."""
        totals: dict[str, int] = {}
        for sink, dropped in zip(self._sinks, self._dropped_totals):
            totals[str(sink)] = totals.get(str(sink), 0) + dropped
        return totals

    def start(self) -> None:
        """Start the sinks that talk to a collector (on the running loop)."""
        for sink in self._sinks:
            sink.start()

    async def stop(self, grace_s: float) -> None:
        """Flush, then give each sink with a queue grace_s to send it."""
        self.flush()
        await asyncio.gather(*(sink.stop(grace_s) for sink in self._sinks))

    def emit(self, who: SessionInfo, eventid: str, **fields: Any) -> None:
        self._emit(who, eventid, fields)

    def emit_event(self, who: SessionInfo, event: Event) -> None:
        self._emit(who, event.eventid, event.fields)

    def _emit(self, who: SessionInfo, eventid: str, fields: dict[str, Any]) -> None:
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
        self.queue(encode_line(record))
        # After the line is queued, so what a listener emits comes after it.
        for listener in self.listeners:
            listener(record)

    def flush(self) -> bool:
        """Write what is pending now, whole lines, one write per sink.
        Returns `healthy`: True if it all reached the OS."""
        with self._lock:
            lines = self._take()
            if lines:
                for index, (sink, outage) in enumerate(zip(self._sinks, self._outages)):
                    self._dropped_totals[index] += self._write(sink, outage, lines)
        return self.healthy

    def close(self) -> None:
        self.flush()
        for sink in self._sinks:
            sink.close()

    def _write(self, sink: Sink, outage: _Outage, lines: list[str]) -> int:
        """Write a batch to one sink; the number of its events dropped."""
        recovering = outage.dropped > 0
        batch = [self._dropped_line(outage), *lines] if recovering else lines
        try:
            sink.write(batch)
        except LinesLost as lost:
            unwritten = len(batch) - lost.written
            if recovering:
                if lost.written:  # the looper.log.dropped line is out: a new outage
                    self._recovered(sink, outage)
                else:
                    unwritten -= 1  # not an event: it is made again next time
            if not outage.dropped:
                outage.error, outage.since = describe_os_error(lost.cause), rfc3339_now()
                log.warning("cannot write events to %s (%s): counting the events dropped", sink, outage.error)
            outage.dropped += unwritten
            return unwritten
        except Exception as err:  # a sink's bug must not reach the caller either
            if not outage.dropped:
                outage.error, outage.since = f"{type(err).__name__}: {err}", rfc3339_now()
                log.exception("the event sink %s failed: counting the events dropped", sink)
            outage.dropped += len(lines)
            return len(lines)
        if recovering:
            self._recovered(sink, outage)
        return 0

    def _recovered(self, sink: Sink, outage: _Outage) -> None:
        log.warning("writing events to %s again; %d dropped since %s (%s)", sink, outage.dropped, outage.since, outage.error)
        outage.dropped, outage.error, outage.since = 0, "", ""

    def _dropped_line(self, outage: _Outage) -> str:
        """looper.log.dropped: an event of the trap itself, no connection's."""
        record = {
            "timestamp": rfc3339_now(),
            "eventid": LOG_DROPPED,
            "session": None,
            "sensor": self.sensor,
            "protocol": None,
            "src_ip": None,
            "src_port": None,
            "dst_ip": None,
            "dst_port": None,
            "dropped": outage.dropped,
            "error": outage.error,
            "since": outage.since,
        }
        return encode_line(record)


def describe_os_error(err: OSError) -> str:
    """`ENOSPC: No space left on device`, say."""
    name = errno.errorcode.get(err.errno or 0)
    text = err.strerror or str(err) or type(err).__name__
    return f"{name}: {text}" if name else text


class LogFile(Sink):
    """events.jsonl, rotated by line at max_bytes into .1, .2, ... (backups).

    A raw descriptor opened for appending: a batch is one os.write() (two or
    more only where it rotates). A write that fails after part of a batch is
    cut back to the batch's start; the descriptor is then closed, and the
    next batch opens the file again (and mends it, should the cut fail)."""

    durable = True

    def __init__(self, path: str, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0
        self._open()  # a log that cannot be opened at start is the operator's to fix: it raises

    def __str__(self) -> str:
        return self.path

    def write(self, lines: list[str]) -> None:
        pieces = [f"{line}\n".encode("utf-8") for line in lines]
        done = 0
        try:
            if self._fd is None:
                self._open()
            while done < len(pieces):
                # As many lines as fit before the rotation; one at least, in a fresh file.
                size, end = self._size, done
                while end < len(pieces) and (size == 0 or size + len(pieces[end]) <= self.max_bytes):
                    size += len(pieces[end])
                    end += 1
                if end == done:
                    self._rotate()
                    continue
                self._append(pieces[done] if end == done + 1 else b"".join(pieces[done:end]))
                self._size = size
                done = end
        except OSError as err:
            raise LinesLost(done, err) from err

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def reopen(self) -> None:
        """Go on in a file opened again by its name: after logrotate has
        renamed it, a new one. Every line written so far is in the old file,
        every line from now on in the new one. If the name cannot be opened,
        the old file goes on taking the lines (none lost; a warning)."""
        try:
            fd, size = self._opened()
        except OSError as err:
            log.warning("cannot reopen %s (%s): still writing to the file it was", self.path, describe_os_error(err))
            return
        old, self._fd, self._size = self._fd, fd, size
        if old is not None:
            os.close(old)

    def _open(self) -> None:
        self._fd, self._size = self._opened()
        _log_files.add(self)

    def _opened(self) -> tuple[int, int]:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            return fd, _cut_partial_line(fd, self.path)
        except BaseException:
            os.close(fd)
            raise

    def _append(self, data: bytes) -> None:
        fd = self._fd
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            sent = len(data) - len(view)
            try:
                if sent:
                    os.ftruncate(fd, os.fstat(fd).st_size - sent)
            except OSError:
                pass  # the next open cuts it off
            finally:
                self.close()
            raise

    def _rotate(self) -> None:
        self.close()
        for number in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{number}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{number + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._open()


# Every LogFile of this process (events.jsonl, transcripts.jsonl), for SIGHUP.
_log_files: weakref.WeakSet[LogFile] = weakref.WeakSet()


def reopen_log_files() -> list[str]:
    """Reopen every open LogFile by its name (`looper run` on SIGHUP, after
    logrotate); the paths reopened."""
    reopened = []
    for log_file in list(_log_files):
        if log_file._fd is not None:  # a closed one opens by its name at its next write anyway
            log_file.reopen()
            reopened.append(log_file.path)
    return sorted(reopened)


def _cut_partial_line(fd: int, path: str) -> int:
    """The file's size once a trailing part of a line (left by a crash in
    the middle of a write) is cut off."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, end = 0, size
    while end > 0:
        start = max(0, end - (1 << 16))
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning("%s: cut off %d bytes of a line left unfinished (by a crash?)", path, size - keep)
    return keep


class _Stream(Sink):
    """Standard output: one write and one flush per batch."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __str__(self) -> str:
        return getattr(self.stream, "name", "a stream")

    def write(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except OSError as err:
            raise LinesLost(0, err) from err


class _HandlerSink(Sink):
    """A logging handler (syslog, or a test's collector): one record per line.
    Handlers report their own failures (logging's handleError)."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        handler.setFormatter(logging.Formatter("%(message)s"))

    def __str__(self) -> str:
        return type(self.handler).__name__

    def write(self, lines: list[str]) -> None:
        handle = self.handler.handle
        for line in lines:
            handle(_EventLine(line))

    def close(self) -> None:
        self.handler.close()


class _EventLine(logging.LogRecord):
    """A record that is only its line: LogRecord's own constructor looks up
    thread, process and caller for every record, which events never need."""

    def __init__(self, line: str) -> None:  # noqa: D107 (no super() on purpose)
        self.name = "looper.events"
        self.msg = line
        self.args = None
        self.levelno, self.levelname = logging.INFO, "INFO"
        self.exc_info = self.exc_text = self.stack_info = None


def open_event_log(sensor: str, log_dir: str, *, max_bytes: int, backups: int,
                   stdout: bool = False, collectors: Sequence[Sink] = ()) -> EventLog:
    """The event log of a running trap: <log_dir>/events.jsonl, standard
    output if asked, and the sinks of central collectors (looper.sinks)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    sinks: list[Union[Sink, logging.Handler]] = [
        LogFile(os.path.join(log_dir, EVENTS_FILE), max_bytes=max_bytes, backups=backups)
    ]
    if stdout:
        sinks.append(_Stream(sys.stdout))
    sinks.extend(collectors)
    return EventLog(sensor, sinks)
