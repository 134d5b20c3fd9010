"""What a server machine asks of its adapter: the one vocabulary shared by
the SMTP, IMAP and POP3 machines and the session adapter that drives them.

A machine (`ServerMachine`, at the end) takes bytes in (`receive_data`,
b"" for EOF; a view of a buffer that is reused once the call returns, so the
machine copies what it keeps) and answers with actions, in order; the
adapter carries them out one after the other and reports back the outcome
of those that need one (`tls_started`, `stored`, `store_failed`). While an
action is pending the machine reads nothing more (`paused`): it keeps what
arrives, within its own bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from looper.events import Event


@dataclass(frozen=True, slots=True)
class Send:
    """Write `data`, `delay_s` seconds after the previous action is done
    (a persona's pacing: error sleep, a SASL back end's failure delay)."""

    data: bytes
    delay_s: float = 0.0


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
    """Close the connection once the sends before it are written."""


Action = Send | StartTLS | Store | Close


class ServerMachine(Protocol):
    """What the adapter (looper/net/session.py) needs of a machine."""

    idle_timeout_s: float  # the adapter calls timed_out() after this much silence
    paused: bool  # waiting for the outcome of StartTLS or Store

    def receive_data(self, data: bytes) -> None: ...
    def timed_out(self) -> None: ...
    def shutting_down(self, reason: str) -> None: ...  # trap stopping, or session too long: goodbye, then Close
    def connection_closed(self) -> None: ...  # gone, however it ended: let go of what it holds
    def tls_started(self, version: str, cipher: str) -> None: ...
    def stored(self, path: str) -> None: ...
    def store_failed(self, reason: str) -> None: ...
    def actions(self) -> list[Action]: ...  # drain, in order
    def events(self) -> list[Event]: ...  # drain
