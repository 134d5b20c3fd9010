"""The bait mail servers' sessions: a client of listen.pop3 or listen.pop3s
meets a Pop3Server (looper/proto/pop3.py) on the trap's bait INBOX, driven
by the same ServerSession as the emulated relay, with the relay's TLS
context, and the trap's one memory of failed logins."""

from __future__ import annotations

import asyncio
from typing import Callable

from looper.config import Config
from looper.eventlog import SessionInfo
from looper.net.context import TrapContext
from looper.net.session import ServerSession
from looper.proto.login import LoginPolicy
from looper.proto.pop3 import Pop3Client, Pop3Server, Pop3Settings
from looper.transcripts import Transcript


def pop3_settings(config: Config, *, tls_available: bool = True) -> Pop3Settings:
    """The POP3 machine's settings, as the configuration says (logins as
    SMTP AUTH's: credentials, accept_after, and none in harvester mode)."""
    return Pop3Settings(
        login_policy=LoginPolicy(
            frozenset((c.user, c.password) for c in config.credentials),
            config.smtp.accept_after,
            admits=config.smtp.mode == "open_relay",
        ),
        auth_mechanisms=tuple(m for m in config.mail_access.auth_mechanisms if m in ("PLAIN", "LOGIN")),
        plaintext_login=config.mail_access.plaintext_login,
        tls_available=tls_available,
    )


def serve_pop3(
    context: TrapContext,
    transport: asyncio.Transport,
    info: SessionInfo,
    *,
    implicit_tls: bool,
    on_closed: Callable[[str, int, int], None],
    transcript: Transcript | None = None,
) -> ServerSession:
    """Take over `transport`: the client meets the bait POP3 server."""
    relay = context.emulated  # its TLS context is the one every emulated server shows
    ip = info.src_ip
    machine = Pop3Server(
        pop3_settings(context.config),
        Pop3Client(ip=ip, tls=implicit_tls, earlier_auth_failures=context.login_failures.of(ip), local_ip=info.dst_ip),
        context.bait.inbox,
    )

    def closed(reason: str, bytes_in: int, bytes_out: int) -> None:
        context.login_failures.remember(ip, machine.auth_failures)
        on_closed(reason, bytes_in, bytes_out)

    session = ServerSession(
        machine,
        info=info,
        eventlog=context.eventlog,
        store=None,
        tls_context=None if implicit_tls else relay.tls_context,
        on_closed=closed,
        max_session_s=context.config.smtp.max_session_seconds,
        transcript=transcript,
    )
    session.attach(transport)
    return session
