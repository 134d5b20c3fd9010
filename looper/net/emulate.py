"""The emulated relay: what a client that cannot be reflected is served.

One per trap: the machine settings, the message store, the TLS context and
the clock-and-randomness the SMTP machine may not have itself; each client
gets its own SmtpServer driven by a ServerSession.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Callable

from looper.config import Config
from looper.eventlog import EventLog, SessionInfo
from looper.net.capture import MessageStore
from looper.net.session import ServerSession
from looper.net.tls import EximSelfSigned, server_context, snakeoil_host_name
from looper.proto.budget import MessageMemory
from looper.proto.imap import ImapServer, ImapSettings
from looper.proto.login import FailureMemory, LoginPolicy
from looper.proto.mailbox import BaitStore
from looper.proto.pop3 import Pop3Client, Pop3Server, Pop3Settings
from looper.proto.personas import PERSONAS
from looper.proto.smtpd import ClientInfo, SmtpServer, SmtpSettings
from looper.transcripts import Transcript


class SystemEnvironment:
    """The clock, counters and randomness the SMTP machine may not have itself."""

    def __init__(self, hostname: str) -> None:
        self._short_name = hostname.split(".")[0]
        # A queue file's inode number (Postfix's queue ids end in it); ours counts up.
        self._inode = 0x100000 + secrets.randbelow(0xE00000)
        self._date: tuple[int, str] = (-1, "")

    def now_s(self) -> float:
        return time.time()

    def serial(self) -> int:
        self._inode += 1
        return self._inode

    def cram_challenge(self) -> str:
        return f"<{secrets.randbelow(10**16):016d}.{int(time.time())}@{self._short_name}>"

    def random_bytes(self, count: int) -> bytes:
        return secrets.token_bytes(count)

    def date(self) -> str:
        # Formatted once a second: every stored message's Received: line has one.
        second = int(time.time())
        if second != self._date[0]:
            self._date = (second, format_datetime(datetime.fromtimestamp(second, timezone.utc)))
        return self._date[1]


def smtp_settings(config: Config, hostname: str, message_memory: MessageMemory | None = None) -> SmtpSettings:
    """The SMTP machine's settings, as the configuration says."""
    smtp = config.smtp
    persona = PERSONAS[smtp.persona]
    return SmtpSettings(
        hostname=hostname,
        persona=persona,
        mode=smtp.mode,
        relay=smtp.relay,
        credentials=frozenset((c.user, c.password) for c in config.credentials),
        accept_after=smtp.accept_after,
        auth_mechanisms=smtp.auth_mechanisms,
        max_message_bytes=smtp.max_message_bytes or persona.default_max_message_bytes,
        size_limit_configured=smtp.max_message_bytes is not None,
        max_recipients=persona.default_max_recipients,
        # sendmail offers STARTTLS only once a certificate is configured
        tls_available=persona.offers_starttls_by_default or smtp.tls_cert is not None,
        idle_timeout_s=smtp.idle_timeout,
        greet_delay_s=smtp.greet_delay,
        reply_overrides=dict(smtp.replies),
        message_memory=message_memory,
    )


def login_policy(config: Config) -> LoginPolicy:
    """The one login policy of the bait IMAP and POP3 servers, as SMTP
    AUTH's: credentials, accept_after, nobody in harvester mode."""
    return LoginPolicy(
        frozenset((c.user, c.password) for c in config.credentials),
        config.smtp.accept_after,
        admits=config.smtp.mode == "open_relay",
    )


def imap_settings(config: Config) -> ImapSettings:
    """The bait IMAP server's settings: the login policy and mail_access."""
    return ImapSettings(
        policy=login_policy(config),
        plaintext_login=config.mail_access.plaintext_login,
        auth_mechanisms=config.mail_access.auth_mechanisms,
    )


def pop3_settings(config: Config) -> Pop3Settings:
    """The bait POP3 server's settings: the login policy and mail_access
    (Dovecot's POP3 offers PLAIN and LOGIN of its mechanisms)."""
    return Pop3Settings(
        login_policy=login_policy(config),
        auth_mechanisms=tuple(m for m in config.mail_access.auth_mechanisms if m in ("PLAIN", "LOGIN")),
        plaintext_login=config.mail_access.plaintext_login,
    )


class EmulatedRelay:
    def __init__(self, config: Config, eventlog: EventLog, hostname: str, *, store: MessageStore,
                 message_memory: MessageMemory, login_failures: FailureMemory) -> None:
        smtp = config.smtp
        self.hostname = hostname
        self.eventlog = eventlog
        self.settings = smtp_settings(config, hostname, message_memory)
        self.store = store
        if smtp.persona == "exim" and smtp.tls_cert is None and smtp.tls_key is None:
            # Debian's Exim has no certificate of its own: it makes one per session, for its mail name.
            self.tls_context = EximSelfSigned(hostname, config.log.dir).context
        else:
            # Debian's Postfix (and sendmail) serve the snakeoil, made for the machine's name.
            self.tls_context = server_context(smtp.tls_cert, smtp.tls_key, hostname=snakeoil_host_name(),
                                              folder=config.log.dir)
        self.environment = SystemEnvironment(hostname)
        self.max_session_s = smtp.max_session_seconds
        self.login_failures = login_failures  # the trap's: shared with IMAP and POP3
        self.imap_settings = imap_settings(config)
        self.pop3_settings = pop3_settings(config)

    def serve(
        self,
        transport: asyncio.Transport,
        info: SessionInfo,
        *,
        early_bytes: bytes = b"",
        early_eof: bool = False,
        client_name: str | None = None,
        implicit_tls: bool = False,
        protocol: str = "smtp",
        bait: BaitStore | None = None,
        on_closed: Callable[[str, int, int], None],
        transcript: Transcript | None = None,
    ) -> ServerSession:
        """Take over `transport`: the client meets the emulated server of
        `protocol` (IMAP and POP3: over `bait`, the trap's store as it is now)."""
        ip = info.src_ip
        machine: SmtpServer | ImapServer | Pop3Server
        if protocol == "imap":
            machine = ImapServer(self.imap_settings, bait or BaitStore(), self.environment, ip=ip, tls=implicit_tls,
                                 earlier_failures=self.login_failures.of(ip))
        elif protocol == "pop3":
            client = Pop3Client(ip=ip, tls=implicit_tls, earlier_auth_failures=self.login_failures.of(ip),
                                local_ip=info.dst_ip)
            machine = Pop3Server(self.pop3_settings, client, (bait or BaitStore()).inbox)
        else:
            machine = self._smtp_machine(info, early_bytes, client_name, implicit_tls)

        session = ServerSession(
            machine,
            info=info,
            eventlog=self.eventlog,
            store=self.store,
            tls_context=None if implicit_tls else self.tls_context,
            on_closed=_Closed(self.login_failures, ip, machine, on_closed),
            max_session_s=self.max_session_s,
            transcript=transcript,
        )
        session.attach(transport, early_bytes, early_eof=early_eof)
        return session

    def _smtp_machine(self, info: SessionInfo, early_bytes: bytes, client_name: str | None,
                      implicit_tls: bool) -> SmtpServer:
        ip = info.src_ip
        client = ClientInfo(
            ip=ip,
            name=client_name,
            earlier_auth_failures=self.login_failures.of(ip),
            tls=implicit_tls,
            pregreet_bytes=len(early_bytes),
            local_ip=info.dst_ip,
        )
        return SmtpServer(self.settings, client, self.environment)

    def close(self) -> None:
        pass  # the store is the trap's: it closes it


class _Closed:
    """A session's end: its failed logins are remembered for its address,
    then its owner is told. (A slotted object, not a closure: 10,000 idle
    sessions each keep one.)"""

    __slots__ = ("login_failures", "ip", "machine", "on_closed")

    def __init__(self, login_failures: FailureMemory, ip: str, machine: SmtpServer | ImapServer | Pop3Server,
                 on_closed: Callable[[str, int, int], None]) -> None:
        self.login_failures, self.ip, self.machine, self.on_closed = login_failures, ip, machine, on_closed

    def __call__(self, reason: str, bytes_in: int, bytes_out: int) -> None:
        self.login_failures.remember(self.ip, self.machine.auth_failures)
        self.on_closed(reason, bytes_in, bytes_out)
