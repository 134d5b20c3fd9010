"""RelaySim: an asyncio open-relay simulator, for `looper demo` and the tests.

A RelaySim is both halves of a small open relay:

* a **server** on ``(host, port)`` that accepts any mail (unless told to
  refuse relaying), counts the Received: headers of what it is given, refuses
  it with ``554 5.4.0 Error: too many hops`` at ``hop_limit``, and otherwise
  queues it with one more Received: header on top;
* a **delivery agent** that sends every queued message to ``trap``, one at a
  time, from the sim's own address (the trap dials back the source address of
  the connection, so the binding matters).

Pointed at the looper trap, the trap reflects the delivery back into the sim's
own server and the message loops, one hop longer each pass. Pointed at another
sim (or at itself), two sims ping-pong a message without any trap, which is how
``tests/test_relaysim.py`` checks the simulator itself.

Everything is bounded: only 127.0.0.0/8 is ever bound or dialed, every await
has a timeout, lines, messages, sessions, queue, stored messages and
deliveries (``max_passes``) have caps, and the background task never raises.

Knobs and what they do on the wire are described on :class:`RelaySim`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import secrets
import socket
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime

__all__ = [
    "RelaySim",
    "Accepted",
    "count_received",
    "dot_stuff",
    "free_port",
    "normalize_crlf",
    "wait_all_idle",
]

# --- limits -----------------------------------------------------------------

#: Longest command or reply line we take, CRLF included (RFC 5321 says 512 for
#: commands and 1000 for text lines; 4 KiB leaves room for long EHLO names).
MAX_LINE_BYTES = 4096
#: Largest message accepted (Postfix's default message_size_limit).
MAX_MESSAGE_BYTES = 10_240_000
#: Lines in one (multi-line) reply the client will read.
MAX_REPLY_LINES = 100
#: Concurrent server sessions; more get a 421 and are closed.
MAX_SESSIONS = 64
#: Commands in one server session, and bad commands before 421.
MAX_COMMANDS_PER_SESSION = 10_000
MAX_BAD_COMMANDS = 20
#: Recipients in one transaction.
MAX_RECIPIENTS = 100
#: Messages waiting for delivery, and accepted messages kept in ``accepted``.
MAX_QUEUE = 1000
MAX_ACCEPTED = 1000
#: Bounded records (transcripts, errors).
MAX_TRANSCRIPT_LINES = 5000
MAX_ERRORS = 1000
#: Read size from the socket.
READ_CHUNK_BYTES = 65536

# --- reply texts (tests compare against these) ------------------------------

GREETING = "220 {name} ESMTP RelaySim"
REPLY_OK = "250 2.0.0 Ok"
REPLY_MAIL_OK = "250 2.1.0 Ok"
REPLY_RCPT_OK = "250 2.1.5 Ok"
REPLY_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
REPLY_BDAT_OK = "250 2.0.0 Ok: {size} octets received"
REPLY_DATA_GO = "354 End data with <CR><LF>.<CR><LF>"
REPLY_BYE = "221 2.0.0 Bye"
REPLY_VRFY = "252 2.0.0 Cannot VRFY user, but will accept message"
REPLY_HELP = "214 2.0.0 RelaySim: see RFC 5321"
REPLY_TOO_MANY_HOPS = "554 5.4.0 Error: too many hops"
REPLY_RELAY_DENIED = "554 5.7.1 <{addr}>: Relay access denied"
REPLY_NO_VALID_RCPT = "554 5.5.1 Error: no valid recipients"
REPLY_TLS_UNAVAILABLE = "454 4.7.0 TLS not available due to local problem"
REPLY_LINE_TOO_LONG = "500 5.5.0 Line too long"
REPLY_BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
REPLY_UNRECOGNIZED = "502 5.5.2 Error: command not recognized"
REPLY_NOT_IMPLEMENTED = "502 5.5.1 Error: command not implemented"
REPLY_NO_AUTH = "503 5.5.1 Error: authentication not enabled"
REPLY_NEED_MAIL = "503 5.5.1 Error: need MAIL command"
REPLY_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
REPLY_NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
REPLY_BDAT_IN_PROGRESS = "503 5.5.1 Error: BDAT transfer in progress"
REPLY_SYNTAX_EHLO = "501 5.5.4 Syntax: EHLO hostname"
REPLY_SYNTAX_HELO = "501 5.5.4 Syntax: HELO hostname"
REPLY_SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address>"
REPLY_SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address>"
REPLY_SYNTAX_DATA = "501 5.5.4 Syntax: DATA"
REPLY_SYNTAX_BDAT = "501 5.5.4 Syntax: BDAT count [LAST]"
REPLY_TOO_MANY_RCPT = "452 4.5.3 Error: too many recipients"
REPLY_STORAGE = "452 4.3.1 Insufficient system storage"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
REPLY_TOO_MANY_SESSIONS = "421 4.7.0 {name} Error: too many connections"
REPLY_TOO_MANY_ERRORS = "421 4.7.0 {name} Error: too many errors"
REPLY_TIMEOUT = "421 4.4.2 {name} Error: timeout exceeded"

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


# --- small helpers ----------------------------------------------------------


def _check_loopback(host: str, what: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{what} must be an IPv4 address in 127.0.0.0/8, got {host!r}") from None
    if address not in LOOPBACK:
        raise ValueError(f"{what} must be in 127.0.0.0/8, got {host}")


def count_received(message: bytes) -> int:
    """Count Received: fields in the top header block of ``message``.

    The field name is compared case-insensitively (obsolete whitespace before
    the colon allowed); continuation lines (starting with SP or HTAB) are part
    of the field above them and not counted. The header block ends at the
    first empty line, or at the first line that is not a header field.
    """
    count = 0
    start = 0
    end_of_all = len(message)
    while start < end_of_all:
        end = message.find(b"\n", start)
        if end < 0:
            end = end_of_all
        line = message[start:end]
        start = end + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, _ = line.partition(b":")
        name = name.rstrip(b" \t")
        if not colon or not name or any(c < 33 or c > 126 for c in name):
            break  # not a header field: the body starts here
        if name.lower() == b"received":
            count += 1
    return count


_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_LINE_START_DOT = re.compile(rb"(?m)^\.")


def normalize_crlf(message: bytes) -> bytes:
    """Line endings to CRLF (as an MTA does when it queues), ending in CRLF."""
    message = _BARE_LF.sub(b"\r\n", _BARE_CR.sub(b"\r\n", message))
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def dot_stuff(message: bytes) -> bytes:
    """DATA transparency (RFC 5321 4.5.2) for a CRLF-normalized message."""
    return _LINE_START_DOT.sub(b"..", message)


def free_port(*hosts: str) -> int:
    """A TCP port that is free on every one of ``hosts`` right now.

    For the shared dial-back port of several sims on 127.0.0.2, 127.0.0.3, ...
    (There is a window between this check and the sims' bind; tests that can
    should rather start the first sim on port 0 and reuse its port.)
    """
    hosts = hosts or ("127.0.0.1",)
    for host in hosts:
        _check_loopback(host, "host")
    for _attempt in range(50):
        socks: list[socket.socket] = []
        try:
            first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(first)
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            for host in hosts[1:]:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no common free port on {hosts}")


async def wait_all_idle(*sims: RelaySim, timeout: float = 10.0, settle: float = 0.2) -> bool:
    """Wait until every sim is idle at once and stays so for ``settle`` seconds.

    A sim queues an accepted message before it sends the 250, and its
    delivery agent is busy until the remote's final reply is read, so while a
    message is anywhere in a loop of sims at least one of them is not idle.
    ``settle`` covers hand-offs through a trap in between. Returns False on
    timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet_since: float | None = None
    while True:
        now = loop.time()
        if all(sim.idle for sim in sims):
            if quiet_since is None:
                quiet_since = now
            if now - quiet_since >= settle:
                return True
        else:
            quiet_since = None
        if now >= deadline:
            return False
        await asyncio.sleep(0.01)


async def _cancel_and_wait(tasks: set[asyncio.Task], timeout: float = 2.0) -> None:
    """Cancel tasks and wait for them, cancelling again if a cancel is lost.

    (In 3.11 a cancellation can be swallowed when it races with a completing
    await; a task also checks the sim's ``_stopping`` flag on each turn.)
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


class _BoundedLog(list):
    """A list that keeps only its newest ``limit`` entries."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0

    def append(self, item) -> None:  # type: ignore[override]
        super().append(item)
        if len(self) > self.limit + self.limit // 10:
            excess = len(self) - self.limit
            del self[:excess]
            self.dropped += excess


class _PeerClosed(Exception):
    """The peer closed the connection (EOF)."""


class _BadReply(Exception):
    """The server sent something that is not an SMTP reply."""


class _Stream:
    """Buffered line/byte reader and writer with a timeout on every await."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout_s: float,
        log: _BoundedLog,
        *,
        incoming: str,
        outgoing: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout_s = timeout_s
        self.buf = bytearray()
        self.log = log
        self.incoming = incoming
        self.outgoing = outgoing

    async def _fill(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            data = await self.reader.read(READ_CHUNK_BYTES)
        if not data:
            raise _PeerClosed()
        self.buf += data

    async def readline(self, limit: int = MAX_LINE_BYTES) -> bytes | None:
        """One line ending in LF (CRLF or bare LF), without its line ending.

        None if the line was longer than ``limit`` bytes: it is read and
        discarded up to its end so that the next line is read in sync.
        """
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                if i + 1 > limit:
                    del self.buf[: i + 1]
                    self.log.append(f"{self.incoming}: <line too long: {i + 1} octets>")
                    return None
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                self.log.append(f"{self.incoming}: {line.decode('utf-8', 'replace')}")
                return line
            if len(self.buf) > limit:
                dropped = len(self.buf)
                self.buf.clear()
                while True:
                    await self._fill()
                    j = self.buf.find(b"\n")
                    if j >= 0:
                        dropped += j + 1
                        del self.buf[: j + 1]
                        self.log.append(f"{self.incoming}: <line too long: {dropped} octets>")
                        return None
                    dropped += len(self.buf)
                    self.buf.clear()
            await self._fill()

    async def read_data(self, max_bytes: int) -> tuple[bytes, bool]:
        """DATA content up to the CRLF.CRLF (only that ends it), dot-unstuffed.

        Returns (content, overflowed). Content beyond ``max_bytes`` is read and
        discarded; lines are not limited except through ``max_bytes``.
        """
        out = bytearray()
        overflow = False
        at_line_start = True

        def keep(piece: bytes) -> None:
            nonlocal overflow
            if overflow:
                return
            if len(out) + len(piece) > max_bytes:
                overflow = True
                out.clear()
                return
            out.extend(piece)

        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                if len(self.buf) > READ_CHUNK_BYTES:
                    # a long line: pass on all but a possible trailing CR
                    piece = bytes(self.buf[:-1])
                    del self.buf[:-1]
                    if at_line_start and piece.startswith(b"."):
                        piece = piece[1:]
                    keep(piece)
                    at_line_start = False
                    continue
                await self._fill()
                continue
            line = bytes(self.buf[:i])
            del self.buf[: i + 2]
            if at_line_start:
                if line == b".":
                    self.log.append(f"{self.incoming}: <{len(out)} octets of DATA> .")
                    return bytes(out), overflow
                if line.startswith(b"."):
                    line = line[1:]
            keep(line + b"\r\n")
            at_line_start = True

    async def read_exact(self, size: int, keep: bool) -> bytes:
        """Exactly ``size`` octets (BDAT chunk); discarded if not ``keep``."""
        out = bytearray()
        remaining = size
        while remaining:
            if not self.buf:
                await self._fill()
            take = min(remaining, len(self.buf))
            if keep:
                out += self.buf[:take]
            del self.buf[:take]
            remaining -= take
        self.log.append(f"{self.incoming}: <{size} octets of BDAT>")
        return bytes(out)

    async def write(self, data: bytes, note: str | None = None) -> None:
        if note is not None:
            self.log.append(f"{self.outgoing}: {note}")
        else:
            for line in data.split(b"\r\n"):
                if line:
                    self.log.append(f"{self.outgoing}: {line.decode('utf-8', 'replace')}")
        self.writer.write(data)
        async with asyncio.timeout(self.timeout_s):
            await self.writer.drain()

    async def send_line(self, text: str) -> None:
        await self.write(text.encode("utf-8") + b"\r\n")

    def write_eof(self) -> None:
        self.log.append(f"{self.outgoing}: <half-close>")
        if self.writer.can_write_eof():
            self.writer.write_eof()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    def close_now(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def close(self, *, abort: bool = False) -> None:
        with contextlib.suppress(Exception):
            if abort:
                self.writer.transport.abort()
            else:
                self.writer.close()
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


# --- records ----------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """One message the sim's server accepted (and queued for delivery)."""

    queue_id: str
    peer: str  # IP address of the SMTP client
    helo: str | None
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes  # as received: dot-unstuffed (DATA) or concatenated chunks (BDAT)
    hops: int  # Received: headers in ``data``
    via: str  # "DATA" or "BDAT"


@dataclass
class _Queued:
    mail_from: str
    rcpts: list[str]
    data: bytes  # CRLF-normalized, ready to send


@dataclass
class _Client:
    """One open delivery connection and what its server offered."""

    stream: _Stream
    extensions: set[str] = field(default_factory=set)
    replies: int = 0  # replies read so far on this connection
    clean: bool = True  # between transactions (safe to send QUIT)


# --- the simulator ----------------------------------------------------------


class RelaySim:
    """An open relay on (host, port) that delivers everything to ``trap``.

    Server side, on the wire:

    * greeting ``220 {name} ESMTP RelaySim``; EHLO answers ``250-{name}``,
      then ``PIPELINING`` (if ``pipelining``), ``SIZE 10240000``,
      ``STARTTLS`` (if ``starttls``; STARTTLS itself gets ``454 4.7.0 TLS not
      available due to local problem``), ``CHUNKING`` (if ``chunking``),
      ``8BITMIME``, and ``250 SMTPUTF8``.
    * ``refuse_relay``: every RCPT gets ``554 5.7.1 <addr>: Relay access
      denied`` (then DATA gets ``554 5.5.1 Error: no valid recipients``).
    * at the end of data, ``hop_limit`` or more Received: headers get ``554
      5.4.0 Error: too many hops``; else ``250 2.0.0 Ok: queued as <id>``
      and the message is queued with a new two-line Received: on top.
    * BDAT (only if ``chunking``; else 502 and the chunk is not consumed).

    Client side (the delivery agent), on the wire, per queued message:

    * connects to ``trap`` from ``(host, 0)``; greeting; ``EHLO {name}``
      (HELO if EHLO is refused).
    * ``notice_own_name``: if the first word of the EHLO reply is ``name``
      (case-insensitive), sends QUIT and drops the message
      (``loops_detected += 1``), like Postfix and sendmail.
    * if the server offered PIPELINING: MAIL, RCPT(s) and DATA in one write
      (Postfix); otherwise one command per round trip.
    * ``chunking`` and the server offered CHUNKING: ``BDAT <n> LAST`` plus
      the message instead of DATA (pipelined with MAIL and RCPT if
      PIPELINING was offered).
    * ``pipeline_quit_and_half_close`` (Exim; needs CHUNKING and PIPELINING
      offered, else a normal transaction): MAIL, RCPT(s), ``BDAT <n> LAST``,
      the message and QUIT in one write, then a half-close (FIN), then every
      reply is read until EOF. Delivered only if the BDAT reply is 250; if the
      connection ends first the message counts as lost and ``requeued += 1``
      (a real Exim would send it again: a duplicate; the sim does not).
    * ``reuse_connection``: the connection stays open for the next message
      (no RSET after a final reply); QUIT after ``reuse_idle_s`` without
      work, or at stop. Ignored with ``pipeline_quit_and_half_close``.
    * deliveries are sequential; after ``max_passes`` delivery attempts the
      rest is dropped (``dropped``).

    Records: ``accepted`` (:class:`Accepted`), ``refused`` ((code, text,
    hops); hops is None for refused RCPTs), ``server_sessions``,
    ``transcript`` (server side, ``"C: ..."``/``"S: ..."``),
    ``client_transcript`` (delivery side, same prefixes from the point of
    view of the SMTP conversation), ``delivery_results`` (code, text) per
    transaction: the final reply, or the first reply that ended it, code None
    if the connection ended before it), ``delivered``, ``deliveries``,
    ``client_connections``, ``loops_detected``, ``requeued``, ``dropped``,
    ``errors`` (strings).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str | None = None,
        trap: tuple[str, int],
        hop_limit: int = 30,
        notice_own_name: bool = False,
        refuse_relay: bool = False,
        chunking: bool = False,
        starttls: bool = False,
        pipelining: bool = True,
        reuse_connection: bool = False,
        pipeline_quit_and_half_close: bool = False,
        max_passes: int = 200,
        timeout_s: float = 5.0,
        server_timeout_s: float = 10.0,
        session_limit_s: float = 60.0,
        reuse_idle_s: float = 0.5,
    ) -> None:
        _check_loopback(host, "host")
        self.host = host
        self.port = port
        self.name = name if name is not None else f"relay-{host}.sim"
        self.trap = trap
        self.hop_limit = hop_limit
        self.notice_own_name = notice_own_name
        self.refuse_relay = refuse_relay
        self.chunking = chunking
        self.starttls = starttls
        self.pipelining = pipelining
        self.reuse_connection = reuse_connection
        self.pipeline_quit_and_half_close = pipeline_quit_and_half_close
        self.max_passes = max_passes
        self.timeout_s = timeout_s
        self.server_timeout_s = server_timeout_s
        self.session_limit_s = session_limit_s
        self.reuse_idle_s = reuse_idle_s

        # records
        self.accepted: list[Accepted] = []
        self.refused: list[tuple[int, str, int | None]] = []
        self.server_sessions = 0
        self.transcript = _BoundedLog(MAX_TRANSCRIPT_LINES)
        self.client_transcript = _BoundedLog(MAX_TRANSCRIPT_LINES)
        self.delivery_results: list[tuple[int | None, str]] = []
        self.delivered = 0
        self.deliveries = 0
        self.client_connections = 0
        self.loops_detected = 0
        self.requeued = 0
        self.dropped = 0
        self.errors = _BoundedLog(MAX_ERRORS)

        # machinery
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task] = set()
        self._queue: deque[_Queued] = deque()
        self._wakeup: asyncio.Event | None = None
        self._agent: asyncio.Task | None = None
        self._busy = False
        self._client: _Client | None = None  # cached (reuse_connection)
        self._current: _Client | None = None  # the connection in use, if any
        self._stopping = False

    # -- public API ---------------------------------------------------------

    @property
    def trap(self) -> tuple[str, int]:
        return self._trap

    @trap.setter
    def trap(self, value: tuple[str, int]) -> None:
        host, port = value
        _check_loopback(host, "trap host")
        self._trap = (host, int(port))

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the server, with the real port after start()."""
        return (self.host, self.port)

    @property
    def idle(self) -> bool:
        """No delivery in progress and nothing queued."""
        return not self._busy and not self._queue

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> RelaySim:
        if self._server is not None:
            return self
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, backlog=64
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._agent = asyncio.create_task(self._delivery_agent(), name=f"relaysim-agent-{self.name}")
        return self

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        busy = self._busy
        if self._agent is not None:
            await _cancel_and_wait({self._agent})
            self._agent = None
        if self._client is not None:
            await self._close_client(graceful=not busy and self._client.clean)
        if self._current is not None:  # cut off in the middle of a delivery
            self._current.stream.abort()
            self._current = None
        if self._server is not None:
            self._server.close()
        await _cancel_and_wait(set(self._sessions))
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None
        self._busy = False

    async def __aenter__(self) -> RelaySim:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def inject(self, mail_from: str, rcpt: str | list[str], message: bytes) -> None:
        """Queue a message for delivery as if a client had submitted it.

        No Received: header is added: ``message`` goes out as given (line
        endings normalized to CRLF).
        """
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        if not self._enqueue(_Queued(mail_from, rcpts, normalize_crlf(message))):
            raise RuntimeError("queue full")

    async def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is queued or being delivered; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.idle:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def __repr__(self) -> str:
        return (
            f"<RelaySim {self.name} on {self.host}:{self.port} -> {self.trap[0]}:{self.trap[1]}"
            f" accepted={len(self.accepted)} refused={len(self.refused)} delivered={self.delivered}>"
        )

    # -- shared -------------------------------------------------------------

    def _error(self, text: str) -> None:
        self.errors.append(text)

    def _enqueue(self, item: _Queued) -> bool:
        if len(self._queue) >= MAX_QUEUE:
            self._error("queue full: message dropped")
            return False
        self._queue.append(item)
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    # -- server side --------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        stream = _Stream(
            reader, writer, self.server_timeout_s, self.transcript, incoming="C", outgoing="S"
        )
        try:
            if len(self._sessions) > MAX_SESSIONS or self._stopping:
                await stream.send_line(REPLY_TOO_MANY_SESSIONS.format(name=self.name))
                return
            self.server_sessions += 1
            self.transcript.append(f"-: session {self.server_sessions} from {peer[0]}:{peer[1]}")
            try:
                async with asyncio.timeout(self.session_limit_s):
                    await _ServerSession(self, stream, peer[0]).run()
            except TimeoutError:
                with contextlib.suppress(Exception):
                    await stream.send_line(REPLY_TIMEOUT.format(name=self.name))
        except _PeerClosed:
            self.transcript.append("-: client closed")
        except ConnectionError as exc:
            self.transcript.append(f"-: connection lost: {exc!r}")
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # never let a session take anything down
            self._error(f"server session from {peer[0]}: {exc!r}")
        finally:
            # no await here: a cancelled session task would make asyncio's
            # client_connected_cb callback log an error (3.11)
            stream.close_now()
            self._sessions.discard(task)

    def _accept(self, helo: str | None, peer: str, mail_from: str, rcpts: list[str], data: bytes, via: str) -> str:
        """End of data: the reply line, and the message queued if accepted."""
        hops = count_received(data)
        if hops >= self.hop_limit:
            code, _, text = REPLY_TOO_MANY_HOPS.partition(" ")
            self.refused.append((int(code), text, hops))
            return REPLY_TOO_MANY_HOPS
        if len(self.accepted) >= MAX_ACCEPTED or len(self._queue) >= MAX_QUEUE:
            self._error("storage full: message refused with 452")
            return REPLY_STORAGE
        queue_id = secrets.token_hex(5).upper()
        self.accepted.append(
            Accepted(queue_id, peer, helo, mail_from, tuple(rcpts), data, hops, via)
        )
        date = format_datetime(datetime.now(timezone.utc))
        received = (
            f"Received: from {helo or 'unknown'} ([{peer}])\r\n"
            f"\tby {self.name} (RelaySim) with ESMTP id {queue_id}; {date}\r\n"
        ).encode("utf-8", "replace")
        self._enqueue(_Queued(mail_from, list(rcpts), normalize_crlf(received + data)))
        return REPLY_QUEUED.format(queue_id=queue_id)

    def _ehlo_lines(self) -> list[str]:
        lines = [self.name]
        if self.pipelining:
            lines.append("PIPELINING")
        lines.append(f"SIZE {MAX_MESSAGE_BYTES}")
        if self.starttls:
            lines.append("STARTTLS")
        if self.chunking:
            lines.append("CHUNKING")
        lines += ["8BITMIME", "SMTPUTF8"]
        return lines

    # -- client side (delivery agent) ---------------------------------------

    async def _delivery_agent(self) -> None:
        assert self._wakeup is not None
        while not self._stopping:
            while not self._queue:
                self._wakeup.clear()
                if self._client is not None:
                    try:
                        async with asyncio.timeout(self.reuse_idle_s):
                            await self._wakeup.wait()
                    except TimeoutError:
                        await self._close_client(graceful=True)
                else:
                    await self._wakeup.wait()
            item = self._queue.popleft()
            self._busy = True
            try:
                if self.deliveries >= self.max_passes:
                    self.dropped += 1
                    if self.dropped == 1:
                        self._error(f"max_passes ({self.max_passes}) reached: dropping messages")
                    continue
                self.deliveries += 1
                await self._deliver(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the agent never dies
                self._error(f"delivery: {exc!r}")
            finally:
                self._busy = False

    async def _deliver(self, item: _Queued) -> None:
        if self.pipeline_quit_and_half_close:
            await self._deliver_exim_style(item)
            return
        retried = False
        while True:
            reused = self._client is not None
            client = self._client or await self._open()
            if client is None:
                return
            if self.reuse_connection:
                self._client = client
            replies_before = client.replies
            try:
                await self._transaction(client, item)
            except (_PeerClosed, _BadReply, OSError, TimeoutError) as exc:
                no_progress = client.replies == replies_before
                await self._close_client(graceful=False, client=client)
                if reused and no_progress and not retried:
                    self._error(f"cached connection failed ({exc!r}): reconnecting")
                    retried = True
                    continue
                self._error(f"delivery to {self.trap[0]}:{self.trap[1]} failed: {exc!r}")
                self.delivery_results.append((None, f"lost: {exc!r}"))
                return
            if not self.reuse_connection:
                await self._close_client(graceful=True, client=client)
            return

    async def _open(self) -> _Client | None:
        """Connect from our own address, read the greeting, EHLO (or HELO)."""
        trap_host, trap_port = self.trap
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(
                    trap_host, trap_port, local_addr=(self.host, 0)
                )
        except (OSError, TimeoutError) as exc:
            self._error(f"connect to {trap_host}:{trap_port} failed: {exc!r}")
            return None
        self.client_connections += 1
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.client_transcript.append(
            f"-: connection {self.client_connections} {local[0]}:{local[1]} -> {trap_host}:{trap_port}"
        )
        client = _Client(
            _Stream(reader, writer, self.timeout_s, self.client_transcript, incoming="S", outgoing="C")
        )
        self._current = client
        try:
            code, text, lines = await self._reply(client)
            if code != 220:
                self._error(f"greeting refused: {code} {text}")
                await self._close_client(graceful=True, client=client)
                return None
            await client.stream.send_line(f"EHLO {self.name}")
            code, text, lines = await self._reply(client)
            if code == 250:
                client.extensions = {
                    line.split()[0].upper() for line in lines[1:] if line.split()
                }
            else:
                await client.stream.send_line(f"HELO {self.name}")
                code, text, lines = await self._reply(client)
                if code != 250:
                    self._error(f"EHLO and HELO refused: {code} {text}")
                    await self._close_client(graceful=True, client=client)
                    return None
            words = lines[0].split()
            if self.notice_own_name and words and words[0].lower() == self.name.lower():
                self.loops_detected += 1
                self.client_transcript.append(f"-: mail for {self.name} loops back to myself")
                await self._close_client(graceful=True, client=client)
                return None
        except (_PeerClosed, _BadReply, OSError, TimeoutError) as exc:
            self._error(f"session setup with {trap_host}:{trap_port} failed: {exc!r}")
            await self._close_client(graceful=False, client=client)
            return None
        return client

    async def _reply(self, client: _Client) -> tuple[int, str, list[str]]:
        """One (multi-line) reply: code, text (lines joined by LF), line texts."""
        raw: list[bytes] = []
        while True:
            line = await client.stream.readline()
            if line is None:
                raise _BadReply("reply line too long")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise _BadReply(f"not an SMTP reply: {line[:80]!r}")
            if raw and line[:3] != raw[0][:3]:
                raise _BadReply(f"reply code changed inside a multi-line reply: {line[:80]!r}")
            raw.append(line)
            if len(raw) > MAX_REPLY_LINES:
                raise _BadReply("reply too long")
            if line[3:4] != b"-":
                break
        client.replies += 1
        texts = [line[4:].decode("utf-8", "replace") for line in raw]
        return int(raw[0][:3]), "\n".join(texts), texts

    def _mail_command(self, client: _Client, item: _Queued) -> str:
        command = f"MAIL FROM:<{item.mail_from}>"
        if "SIZE" in client.extensions:
            command += f" SIZE={len(item.data)}"
        if "8BITMIME" in client.extensions and any(b > 127 for b in item.data):
            command += " BODY=8BITMIME"
        return command

    def _result(self, code: int | None, text: str) -> None:
        self.delivery_results.append((code, text))
        if code == 250:
            self.delivered += 1

    async def _transaction(self, client: _Client, item: _Queued) -> None:
        """MAIL, RCPT(s), DATA or BDAT LAST on an open connection."""
        stream = client.stream
        pipelined = "PIPELINING" in client.extensions
        use_bdat = self.chunking and "CHUNKING" in client.extensions
        mail = self._mail_command(client, item).encode("utf-8")
        rcpts = [f"RCPT TO:<{rcpt}>".encode("utf-8") for rcpt in item.rcpts]
        client.clean = False

        if pipelined:
            batch = b"".join(line + b"\r\n" for line in [mail, *rcpts])
            if use_bdat:
                await stream.write(batch)
                await stream.write(
                    f"BDAT {len(item.data)} LAST\r\n".encode() + item.data,
                    note=f"BDAT {len(item.data)} LAST + <{len(item.data)} octets>",
                )
            else:
                await stream.write(batch + b"DATA\r\n")
            mail_code, mail_text, _ = await self._reply(client)
            rcpt_replies = [await self._reply(client) for _ in rcpts]
            final_code, final_text, _ = await self._reply(client)  # BDAT or DATA
            if use_bdat:
                if mail_code != 250:
                    self._result(mail_code, mail_text)
                elif not any(code // 100 == 2 for code, _, _ in rcpt_replies):
                    self._result(rcpt_replies[-1][0], rcpt_replies[-1][1])
                else:
                    self._result(final_code, final_text)
                if final_code != 250:
                    await self._rset(client)
                client.clean = True
                return
            if final_code == 354:
                ok_rcpt = mail_code == 250 and any(code // 100 == 2 for code, _, _ in rcpt_replies)
                payload = dot_stuff(item.data) if ok_rcpt else b""
                await stream.write(payload + b".\r\n", note=f"<{len(payload)} octets of DATA> .")
                code, text, _ = await self._reply(client)
                if ok_rcpt:
                    self._result(code, text)
                elif mail_code != 250:
                    self._result(mail_code, mail_text)
                else:
                    self._result(rcpt_replies[-1][0], rcpt_replies[-1][1])
            elif mail_code != 250:
                self._result(mail_code, mail_text)
            elif not any(code // 100 == 2 for code, _, _ in rcpt_replies):
                self._result(rcpt_replies[-1][0], rcpt_replies[-1][1])
            else:
                self._result(final_code, final_text)
            if self.delivery_results[-1][0] != 250:
                await self._rset(client)
            client.clean = True
            return

        # one command per round trip
        await stream.write(mail + b"\r\n")
        code, text, _ = await self._reply(client)
        if code != 250:
            self._result(code, text)
            client.clean = True
            return
        accepted_rcpts = 0
        last = (0, "")
        for rcpt in rcpts:
            await stream.write(rcpt + b"\r\n")
            code, text, _ = await self._reply(client)
            last = (code, text)
            if code // 100 == 2:
                accepted_rcpts += 1
        if not accepted_rcpts:
            self._result(*last)
            await self._rset(client)
            client.clean = True
            return
        if use_bdat:
            await stream.write(
                f"BDAT {len(item.data)} LAST\r\n".encode() + item.data,
                note=f"BDAT {len(item.data)} LAST + <{len(item.data)} octets>",
            )
            code, text, _ = await self._reply(client)
        else:
            await stream.write(b"DATA\r\n")
            code, text, _ = await self._reply(client)
            if code == 354:
                payload = dot_stuff(item.data)
                await stream.write(payload + b".\r\n", note=f"<{len(payload)} octets of DATA> .")
                code, text, _ = await self._reply(client)
        self._result(code, text)
        if code != 250:
            await self._rset(client)
        client.clean = True

    async def _rset(self, client: _Client) -> None:
        await client.stream.send_line("RSET")
        await self._reply(client)

    async def _deliver_exim_style(self, item: _Queued) -> None:
        """MAIL, RCPT, BDAT LAST + data and QUIT in one write, FIN, read to EOF."""
        client = await self._open()
        if client is None:
            return
        try:
            if not {"CHUNKING", "PIPELINING"} <= client.extensions:
                self.client_transcript.append("-: no CHUNKING/PIPELINING offered: plain transaction")
                await self._transaction(client, item)
                await self._close_client(graceful=True, client=client)
                return
            lines = [self._mail_command(client, item)] + [f"RCPT TO:<{r}>" for r in item.rcpts]
            head = "".join(line + "\r\n" for line in lines).encode("utf-8")
            client.clean = False
            replies: list[tuple[int, str]] = []
            expected = len(lines) + 2  # MAIL, RCPTs, BDAT, QUIT
            try:
                # one write, noted line by line in the transcript
                for line in lines:
                    client.stream.log.append(f"C: {line}")
                await client.stream.write(
                    head + f"BDAT {len(item.data)} LAST\r\n".encode() + item.data + b"QUIT\r\n",
                    note=f"BDAT {len(item.data)} LAST + <{len(item.data)} octets> + QUIT",
                )
                client.stream.write_eof()
                while len(replies) < expected:
                    code, text, _ = await self._reply(client)
                    replies.append((code, text))
                # then the server closes: wait for that EOF
                with contextlib.suppress(_PeerClosed, TimeoutError):
                    await client.stream.readline()
            except (_PeerClosed, _BadReply, OSError, TimeoutError) as exc:
                self.client_transcript.append(f"-: connection ended after {len(replies)} replies: {exc!r}")
            bdat_index = len(lines)
            if len(replies) > bdat_index:
                code, text = replies[bdat_index]
                if replies[0][0] != 250:
                    self._result(*replies[0])
                elif not any(c // 100 == 2 for c, _ in replies[1:bdat_index]):
                    self._result(*replies[bdat_index - 1])
                else:
                    self._result(code, text)
            else:
                self.delivery_results.append((None, "lost: connection ended before the BDAT reply"))
                self.requeued += 1
        finally:
            self._release(client)
            await client.stream.close()

    def _release(self, client: _Client) -> None:
        """Forget a connection that is being closed."""
        if client is self._client:
            self._client = None
        if client is self._current:
            self._current = None

    async def _close_client(self, *, graceful: bool, client: _Client | None = None) -> None:
        """QUIT (if graceful) and close; forgets the cached connection."""
        client = client or self._client
        if client is None:
            return
        self._release(client)
        try:
            if graceful:
                with contextlib.suppress(Exception):
                    await client.stream.send_line("QUIT")
                    async with asyncio.timeout(min(self.timeout_s, 2.0)):
                        await self._reply(client)
        finally:
            await client.stream.close(abort=not graceful)


class _ServerSession:
    """One SMTP server conversation of a RelaySim."""

    _BDAT = re.compile(r"^(\d{1,12})(?:\s+(LAST))?\s*$", re.IGNORECASE)
    _MAIL = re.compile(r"^FROM:\s*(?:<([^<>]*)>|([^\s<>]+))(.*)$", re.IGNORECASE)
    _RCPT = re.compile(r"^TO:\s*(?:<([^<>]*)>|([^\s<>]+))(.*)$", re.IGNORECASE)

    def __init__(self, sim: RelaySim, stream: _Stream, peer: str) -> None:
        self.sim = sim
        self.stream = stream
        self.peer = peer
        self.helo: str | None = None
        self.bad_commands = 0
        self._reset()

    def _reset(self) -> None:
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.rcpt_refused = False
        self.chunks = bytearray()
        self.in_bdat = False
        self.bdat_overflow = False

    async def reply(self, *lines: str) -> None:
        """Send a reply; several lines make a multi-line reply (code-, code )."""
        if len(lines) == 1:
            await self.stream.send_line(lines[0])
            return
        code = lines[0][:3]
        texts = [lines[0][4:], *lines[1:]]
        out = "".join(
            f"{code}{'-' if i < len(texts) - 1 else ' '}{text}\r\n" for i, text in enumerate(texts)
        )
        await self.stream.write(out.encode("utf-8"))

    async def bad(self, text: str) -> bool:
        """A bad command: reply; False when the error budget is spent (closed)."""
        self.bad_commands += 1
        if self.bad_commands > MAX_BAD_COMMANDS:
            await self.reply(REPLY_TOO_MANY_ERRORS.format(name=self.sim.name))
            return False
        await self.reply(text)
        return True

    async def run(self) -> None:
        sim = self.sim
        await self.reply(GREETING.format(name=sim.name))
        for _ in range(MAX_COMMANDS_PER_SESSION):
            if sim._stopping:
                return
            line = await self.stream.readline()
            if line is None:
                if not await self.bad(REPLY_LINE_TOO_LONG):
                    return
                continue
            text = line.decode("utf-8", "replace")
            verb, _, arg = text.strip().partition(" ")
            verb = verb.upper()
            arg = arg.strip()
            if self.in_bdat and verb not in ("BDAT", "RSET", "QUIT", "NOOP"):
                # a BDAT transfer is open: only BDAT (or abandon it) goes
                if not await self.bad(REPLY_BDAT_IN_PROGRESS):
                    return
                continue
            handler = getattr(self, f"cmd_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                if not await self.bad(REPLY_BAD_SYNTAX if not verb else REPLY_UNRECOGNIZED):
                    return
                continue
            if await handler(arg) is False:
                return
        await self.reply(REPLY_TOO_MANY_ERRORS.format(name=sim.name))

    # each cmd_* returns False to end the session

    async def cmd_ehlo(self, arg: str):
        if not arg:
            return await self.bad(REPLY_SYNTAX_EHLO)
        self.helo = arg.split()[0]
        self._reset()
        await self.reply(*(f"250 {line}" if i == 0 else line for i, line in enumerate(self.sim._ehlo_lines())))

    async def cmd_helo(self, arg: str):
        if not arg:
            return await self.bad(REPLY_SYNTAX_HELO)
        self.helo = arg.split()[0]
        self._reset()
        await self.reply(f"250 {self.sim.name}")

    async def cmd_mail(self, arg: str):
        if self.mail_from is not None:
            return await self.bad(REPLY_NESTED_MAIL)
        m = self._MAIL.match(arg)
        if not m:
            return await self.bad(REPLY_SYNTAX_MAIL)
        params = m.group(3).upper().split()
        for param in params:
            key, _, value = param.partition("=")
            if key == "SIZE" and value.isdigit() and int(value) > MAX_MESSAGE_BYTES:
                await self.reply(REPLY_TOO_BIG)
                return None
        self.mail_from = m.group(1) if m.group(1) is not None else m.group(2)
        await self.reply(REPLY_MAIL_OK)

    async def cmd_rcpt(self, arg: str):
        if self.mail_from is None:
            return await self.bad(REPLY_NEED_MAIL)
        m = self._RCPT.match(arg)
        if not m:
            return await self.bad(REPLY_SYNTAX_RCPT)
        addr = m.group(1) if m.group(1) is not None else m.group(2)
        if self.sim.refuse_relay:
            reply = REPLY_RELAY_DENIED.format(addr=addr)
            self.sim.refused.append((554, reply[4:], None))
            self.rcpt_refused = True
            await self.reply(reply)
            return None
        if len(self.rcpts) >= MAX_RECIPIENTS:
            await self.reply(REPLY_TOO_MANY_RCPT)
            return None
        self.rcpts.append(addr)
        await self.reply(REPLY_RCPT_OK)

    def _no_transaction_reply(self) -> str | None:
        if self.mail_from is None:
            return REPLY_NEED_MAIL
        if not self.rcpts:
            return REPLY_NO_VALID_RCPT if self.rcpt_refused else REPLY_NEED_RCPT
        return None

    async def cmd_data(self, arg: str):
        if arg:
            return await self.bad(REPLY_SYNTAX_DATA)
        refusal = self._no_transaction_reply()
        if refusal is not None:
            await self.reply(refusal)
            return None
        await self.reply(REPLY_DATA_GO)
        data, overflow = await self.stream.read_data(MAX_MESSAGE_BYTES)
        await self._end_of_data(data, overflow, "DATA")

    async def cmd_bdat(self, arg: str):
        if not self.sim.chunking:
            return await self.bad(REPLY_NOT_IMPLEMENTED)
        m = self._BDAT.match(arg)
        if not m:
            return await self.bad(REPLY_SYNTAX_BDAT)
        size, last = int(m.group(1)), m.group(2) is not None
        refusal = self._no_transaction_reply()
        keep = refusal is None and not self.bdat_overflow and len(self.chunks) + size <= MAX_MESSAGE_BYTES
        if refusal is None and not keep:
            self.bdat_overflow = True
            self.chunks.clear()
        chunk = await self.stream.read_exact(size, keep)  # RFC 3030: always consume
        if refusal is not None:
            self._reset()
            await self.reply(refusal)
            return None
        self.chunks += chunk
        self.in_bdat = not last
        if not last:
            await self.reply(REPLY_BDAT_OK.format(size=size))
            return None
        await self._end_of_data(bytes(self.chunks), self.bdat_overflow, "BDAT")

    async def _end_of_data(self, data: bytes, overflow: bool, via: str) -> None:
        if overflow:
            reply = REPLY_TOO_BIG
        else:
            assert self.mail_from is not None
            reply = self.sim._accept(self.helo, self.peer, self.mail_from, self.rcpts, data, via)
        self._reset()
        await self.reply(reply)

    async def cmd_rset(self, arg: str):
        self._reset()
        await self.reply(REPLY_OK)

    async def cmd_noop(self, arg: str):
        await self.reply(REPLY_OK)

    async def cmd_quit(self, arg: str):
        await self.reply(REPLY_BYE)
        return False

    async def cmd_starttls(self, arg: str):
        if not self.sim.starttls:
            return await self.bad(REPLY_NOT_IMPLEMENTED)
        await self.reply(REPLY_TLS_UNAVAILABLE)

    async def cmd_vrfy(self, arg: str):
        await self.reply(REPLY_VRFY)

    async def cmd_help(self, arg: str):
        await self.reply(REPLY_HELP)

    async def cmd_auth(self, arg: str):
        return await self.bad(REPLY_NO_AUTH)
