"""Why a session ended, and how it was served: the values of
looper.session.closed's `reason` and `mode`, named once (docs/events.md
explains each). StrEnums: they are logged as the strings they are."""

from __future__ import annotations

from enum import StrEnum


class SessionMode(StrEnum):
    REFLECT = "reflect"  # spliced to the client's own server
    EMULATE = "emulate"  # served by the emulated relay
    HANGUP = "hangup"  # 421 and close
    REFUSED = "refused"  # blocked or over the rate: closed unanswered


class CloseReason(StrEnum):
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
