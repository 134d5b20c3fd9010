"""Session transcripts: what each spliced or emulated session said, both
directions, with timing, in `<log.dir>/transcripts.jsonl` (the format is
in docs/transcripts.md; `looper replay` reads it).

One JSON line per chunk as it was read or written, `t` seconds after the
session's connect. A session keeps at most `transcripts.session_bytes` of
content: past it only the counts go on (one addition per chunk, the cost
a 2.5 GB/s splice can bear), and its last line says how much was cut. TLS
that passes through a splice is counted, never kept.

The write contract is the event log's (looper/eventlog.py): lines are
formatted at once (nothing keeps a view of a read buffer), batched, and
written a loop turn at a time, whole lines, one write per turn, to a
LogFile rotated at `transcripts.max_bytes`. A write that fails is counted
and dropped, never raised into a session; the next good write starts with
one line saying how many were lost.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from pathlib import Path

from looper.eventlog import LinesLost, LogFile, SessionInfo, TurnBatch, encode_line, rfc3339_now

TRANSCRIPTS_FILE = "transcripts.jsonl"

CLIENT, SERVER = "client", "server"

# The first byte of a TLS record that carries a handshake (RFC 8446 5.1):
# what a client sends first once a STARTTLS has gone through.
TLS_HANDSHAKE_RECORD = b"\x16"

log = logging.getLogger("looper.transcripts")


class Transcript:
    """One session's conversation, as the trap saw it pass."""

    __slots__ = (
        "book", "info", "started", "room", "client_bytes", "server_bytes", "tls_bytes", "tls", "begun", "ended",
    )

    def __init__(self, book: TranscriptLog, info: SessionInfo, started: float) -> None:
        self.book = book
        self.info = info
        self.started = started  # time.monotonic() of the connect
        self.room = book.session_bytes  # of content still to be kept
        self.client_bytes = 0
        self.server_bytes = 0
        self.tls_bytes = 0
        self.tls: bool | None = None  # decided by the first chunk the splice passes unread
        self.begun = False
        self.ended = False

    def begin(self, mode: str) -> None:
        """The session is spliced (reflect) or served (emulate): its first line."""
        if self.begun or self.ended:
            return
        self.begun = True
        info = self.info
        t = self._t()
        self.book.add(encode_line({
            "session": info.session, "t": t, "start": rfc3339_now(time.time() - t), "sensor": self.book.sensor,
            "mode": mode, "protocol": info.protocol, "src_ip": info.src_ip, "src_port": info.src_port,
            "dst_ip": info.dst_ip, "dst_port": info.dst_port,
        }))

    def client(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the client sent (not empty)."""
        self.client_bytes += len(data)
        if self.room > 0:
            self._keep(CLIENT, data)

    def server(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the client was sent (not empty)."""
        self.server_bytes += len(data)
        if self.room > 0:
            self._keep(SERVER, data)

    def client_eof(self) -> None:
        """The client has finished sending (a half-close, or its close)."""
        self._eof(CLIENT)

    def server_eof(self) -> None:
        self._eof(SERVER)

    def client_unread(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes of the client's that a splice passes without reading them
        (its observer went opaque). TLS is counted, not kept. The first
        such chunk tells: a client's TLS handshake record means a STARTTLS
        went through; anything else is the observer giving up on what it
        cannot follow, and that is kept like any other chunk."""
        if self.tls is None:
            self._went_opaque(data[:1] == TLS_HANDSHAKE_RECORD)
        if self.tls:
            self.client_bytes += len(data)
            self.tls_bytes += len(data)
        else:
            self.client(data)

    def server_unread(self, data: bytes | bytearray | memoryview) -> None:
        """As client_unread: a server never speaks first in TLS."""
        if self.tls is None:
            self._went_opaque(False)
        if self.tls:
            self.server_bytes += len(data)
            self.tls_bytes += len(data)
        else:
            self.server(data)

    def end(self, reason: str) -> None:
        """The session is over: its last line, with the counts."""
        if self.ended:
            return
        self.ended = True
        if not self.begun:
            return  # never spliced nor served (refused, hung up): nothing was said
        kept = self.book.session_bytes - self.room
        self.book.add(encode_line({
            "session": self.info.session, "t": self._t(), "end": reason,
            "bytes": {CLIENT: self.client_bytes, SERVER: self.server_bytes},
            "cut": self.client_bytes + self.server_bytes - self.tls_bytes - kept, "tls_bytes": self.tls_bytes,
        }))

    def _eof(self, direction: str) -> None:
        if self.begun and not self.ended:
            self.book.add(encode_line({"session": self.info.session, "t": self._t(), "dir": direction, "eof": True}))

    def _went_opaque(self, tls: bool) -> None:
        self.tls = tls
        if tls and self.begun and not self.ended:
            self.book.add(encode_line({"session": self.info.session, "t": self._t(), "tls": True}))

    def _keep(self, direction: str, data: bytes | bytearray | memoryview) -> None:
        if not self.begun or self.ended:
            return
        room = self.room
        piece = data if len(data) <= room else data[:room]  # str() and b64encode copy this much, no more
        self.room = room - len(piece)
        record = {"session": self.info.session, "t": self._t(), "dir": direction}
        try:
            record["text"] = str(piece, "utf-8")
        except UnicodeDecodeError:
            record["b64"] = base64.b64encode(piece).decode("ascii")
        self.book.add(encode_line(record))

    def _t(self) -> float:
        return round(time.monotonic() - self.started, 6)


class TranscriptLog(TurnBatch):
    """transcripts.jsonl: the lines of every session, a loop turn at a time."""

    def __init__(self, path: str, *, sensor: str, session_bytes: int, max_bytes: int, backups: int) -> None:
        super().__init__()
        self.sensor = sensor
        self.session_bytes = session_bytes
        self._file = LogFile(path, max_bytes=max_bytes, backups=backups)  # raises: the operator's to fix
        self._closed = False
        self.dropped = 0  # lines lost since the last good write
        self._error = ""
        self._since = ""

    def __str__(self) -> str:
        return str(self._file)

    def transcript(self, info: SessionInfo, started: float) -> Transcript:
        """A new session's transcript; nothing is written before begin()."""
        return Transcript(self, info, started)

    def add(self, line: str) -> None:
        if self._closed:
            # A session that ends after the trap stopped (an abort's last
            # callbacks): its line is written now, and the file closed again.
            self._pending.append(line)
            self.flush()
            self._file.close()
        else:
            self.queue(line)

    def flush(self) -> None:
        """Write what is pending now: whole lines, one write."""
        lines = self._take()
        if not lines:
            return
        recovering = self.dropped > 0
        batch = [self._dropped_line(), *lines] if recovering else lines
        try:
            self._file.write(batch)
        except LinesLost as lost:
            written = lost.written
            if recovering and written:  # the note is out; what follows it is a new outage
                self._recovered()
                written -= 1
            self._lost(len(lines) - written, f"{type(lost.cause).__name__}: {lost.cause}")
        except Exception as err:  # a bug of the sink must not reach a session either
            self._lost(len(lines), f"{type(err).__name__}: {err}")
        else:
            if recovering:
                self._recovered()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._file.close()

    def _lost(self, count: int, error: str) -> None:
        if not self.dropped:
            self._error, self._since = error, rfc3339_now()
            log.warning("cannot write transcripts to %s (%s): counting the lines dropped", self, error)
        self.dropped += count

    def _recovered(self) -> None:
        log.warning("writing transcripts to %s again; %d lines dropped since %s", self, self.dropped, self._since)
        self.dropped, self._error, self._since = 0, "", ""

    def _dropped_line(self) -> str:
        return encode_line({"dropped": self.dropped, "since": self._since, "error": self._error})


def open_transcript_log(log_dir: str, *, sensor: str, session_bytes: int, max_bytes: int,
                        backups: int) -> TranscriptLog:
    """<log_dir>/transcripts.jsonl of a running trap."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return TranscriptLog(os.path.join(log_dir, TRANSCRIPTS_FILE), sensor=sensor, session_bytes=session_bytes,
                         max_bytes=max_bytes, backups=backups)
