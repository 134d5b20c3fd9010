"""What a server machine asks of its adapter: the one vocabulary shared by
the SMTP, IMAP and POP3 machines and the session adapter that drives them.

A machine (`ServerMachine`, at the end) takes bytes in (`receive_data`,
b"" for EOF; a view of a buffer that is reused once the call returns, so the
machine copies what it keeps) and answers with actions, in order; the
adapter carries them out one after the other and reports back the outcome
of those that need one (`tls_started`, `stored`, `store_failed`). While an
action is pending the machine reads nothing more (`paused`): it keeps what
arrives, within its own bounds.

A machine that closes says why (Close.reason): the adapter does not guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from looper.events import Event


class CloseReason(StrEnum):
    """Why a session ended: the values of looper.session.closed's `reason`,
    named once (docs/events.md explains each), for the machines here and
    for every session kind in net/. A StrEnum: logged as the string it is."""

    CLOSED = "closed"  # both directions ended with a FIN
    CLOSED_BY_CLIENT = "closed_by_client"
    CLOSED_BY_SERVER = "closed_by_server"
    RESET_BY_CLIENT = "reset_by_client"
    RESET_BY_SERVER = "reset_by_server"
    MAX_BYTES = "max_bytes"  # splice.max_bytes reached
    MAX_SECONDS = "max_seconds"  # splice.max_seconds or smtp.max_session_seconds reached
    IDLE = "idle"  # splice.idle_seconds of silence
    TIMEOUT = "timeout"  # smtp.idle_timeout of silence
    SHUTDOWN = "shutdown"  # the trap stopped
    TLS_FAILED = "tls_failed"
    LOG_FAILED = "log_failed"  # a stored message's events could not be logged: no 250
    ERROR = "error"  # a bug of ours: looper.session.error says which


@dataclass(frozen=True, slots=True)
class Send:
    """Write `data` `delay_s` seconds after the previous action is done,
    plus up to `spread_s` more (uniformly): a persona's pacing, its error
    sleep or a SASL back end's failure delay. The spread only ever adds: a
    real server never pauses for less than its own minimum, and a pause
    shorter than Postfix's one second would prove the server is not it."""

    data: bytes
    delay_s: float = 0.0
    spread_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Upgrade the connection to TLS (server side) once the sends before it
    are written; then call tls_started(), or close if the handshake fails."""


@dataclass(frozen=True, slots=True)
class Store:
    """Store a message durably, then call stored(path) or store_failed(reason)."""

    content: bytes
    sha256: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection once the sends before it are written; the
    session ends for `reason` (closed_by_server: the machine decided, on a
    QUIT or an error; closed_by_client: after the client's EOF; timeout,
    shutdown, max_seconds: after timed_out() or shutting_down())."""

    reason: CloseReason


Action = Send | StartTLS | Store | Close


class ServerMachine(Protocol):
    """What the adapter (looper/net/session.py) needs of a machine.

    Optionally also `backlog` (bool) and `continue_reading()`: a machine that
    stops making output from a read at a budget keeps the rest of that read
    (paused meanwhile), and the adapter calls continue_reading() whenever the
    client has taken what was written (looper/proto/pop3.py does)."""

    idle_timeout_s: float  # the adapter calls timed_out() after this much silence
    paused: bool  # waiting for the outcome of StartTLS or Store

    def receive_data(self, data: bytes) -> None: ...
    def timed_out(self) -> None: ...  # goodbye, then Close(CloseReason.TIMEOUT)
    def shutting_down(self, reason: CloseReason) -> None: ...  # trap stopping, or session too long: goodbye, then Close(reason)
    def connection_closed(self) -> None: ...  # gone, however it ended: let go of what it holds
    def tls_started(self, version: str, cipher: str) -> None: ...
    def stored(self, path: str) -> None: ...
    def store_failed(self, reason: str) -> None: ...
    def actions(self) -> list[Action]: ...  # drain, in order
    def events(self) -> list[Event]: ...  # drain
