"""Replaying recorded conversations of a real server against the SMTP machine.

A recording (tests/data/<persona>/*.json) lists what a client sent and the
exact bytes the real server answered. The replay feeds the same bytes to
SmtpServer configured like the recorded server and collects what it would
have written, carrying out its actions as an adapter would (TLS and storage
succeed at once).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from looper.proto.actions import Close, Send, StartTLS, Store
from looper.proto.personas import PERSONAS
from looper.proto.smtpd import ClientInfo, SmtpServer, SmtpSettings

DATA = Path(__file__).parent / "data"
HOSTNAME = "mail.example.test"
CREDENTIALS = frozenset({("user@example.test", "secret")})


class FixedEnvironment:
    def __init__(self, cram_challenge: str = "<1234567890123456.1795000000@mail.example.test>") -> None:
        self.challenge = cram_challenge
        self.issued = 0

    def now_s(self) -> float:
        return 1_795_000_000.043981  # 0x0ABCD microseconds: Postfix queue ids 0ABCDE00001, ...

    def serial(self) -> int:
        self.issued += 1
        return 0xE00000 + self.issued

    def cram_challenge(self) -> str:
        return self.challenge

    def random_bytes(self, count: int) -> bytes:
        """The same bytes in every run (DIGEST-MD5's nonce and stand-in rspauth)."""
        return bytes(range(count))

    def date(self) -> str:
        return "Sun, 22 Nov 2026 10:00:00 +0000"


@dataclass
class Exchange:
    send: bytes
    expected: bytes
    expected_ms: float
    expected_closed: bool
    got: bytes = b""
    delays_s: list[float] = field(default_factory=list)
    closed: bool = False
    timed_out: bool = False  # the machine was told the client went quiet


def settings_for(recorded: dict, persona: str = "postfix") -> SmtpSettings:
    """Machine settings equivalent to the recorded server's configuration."""
    config = recorded["settings"]
    settings = SmtpSettings(
        hostname=HOSTNAME,
        persona=PERSONAS[persona],
        credentials=CREDENTIALS,
        auth_mechanisms=(),
        local_domains=None if "mydestination" in config else (),
    )
    if "message_size_limit" in config:
        settings = replace(settings, max_message_bytes=int(config["message_size_limit"]))
    if config.get("mynetworks") == "127.0.0.99/32":  # the client may not relay
        settings = replace(settings, mode="harvester")
        if "reject_unauth_destination" in config["smtpd_relay_restrictions"]:
            settings = replace(settings, reply_overrides={"relay_denied": "554 5.7.1 <{address}>: Relay access denied"})
    if config.get("smtpd_sasl_auth_enable") == "yes":
        mechanisms = recorded.get("dovecot", {}).get("auth_mechanisms", "plain login cram-md5")
        settings = replace(settings, mode="open_relay", auth_mechanisms=tuple(mechanisms.upper().split()))
    if config.get("smtpd_tls_auth_only") == "yes":
        settings = replace(settings, auth_tls_only=True)
    return settings


def cram_challenge_in(recorded: dict) -> str | None:
    for before, after in zip(recorded["exchanges"], recorded["exchanges"][1:]):
        if before["send"].upper().startswith("AUTH CRAM-MD5") and before["recv"].startswith("334 "):
            return base64.b64decode(before["recv"][4:].strip()).decode()
    return None


def replay(recorded: dict, settings: SmtpSettings | None = None, client: ClientInfo | None = None) -> list[Exchange]:
    """Feed the recorded client bytes; what the machine writes is matched
    to the recorded exchanges. A reply the machine delays (error sleep)
    that the recorder only caught in its next exchange moves there."""
    settings = settings or settings_for(recorded)
    environment = FixedEnvironment(cram_challenge_in(recorded) or "<1.2@h>")
    machine = SmtpServer(settings, client or ClientInfo("127.0.0.1"), environment)
    steps = recorded["exchanges"]
    exchanges: list[Exchange] = []
    pending: list[Send | Close] = []
    held_ms = 0.0  # how long the recorder waited, in earlier exchanges, for a reply held back
    for number, step in enumerate(steps):
        exchange = Exchange(step["send"].encode("latin-1"), step["recv"].encode("latin-1"), step["ms"], step["closed"])
        exchanges.append(exchange)
        if "tls" in step:
            if step["tls"].startswith("handshake failed"):
                # the client's handshake met no TLS server, and it hung up
                machine.receive_data(b"")
                exchange.closed = any(isinstance(a, Close) for a in _carry_out(machine))
            continue  # the handshake: done when StartTLS was carried out
        silent = number > 0 and not exchange.send
        # A silence in which the server neither spoke nor closed was no idle timeout.
        went_quiet = exchange.expected or exchange.expected_closed
        if silent and went_quiet and not pending and not exchange.closed and not _closed(exchanges):
            machine.timed_out()
            exchange.timed_out = True
        elif exchange.send:
            machine.receive_data(exchange.send)
        pending += _carry_out(machine)
        has_next = number + 1 < len(steps) and "tls" not in steps[number + 1]
        while pending:
            action = pending[0]
            if isinstance(action, Send) and action.delay_s:
                if has_next and len(exchange.got) >= len(exchange.expected):
                    held_ms += exchange.expected_ms
                    break  # written later than the recorder waited: it saw it in its next exchange
                if held_ms + exchange.expected_ms < action.delay_s * 1000 - 700:  # the timing tests' tolerance
                    break  # later than the recording went on: never seen
                held_ms = 0.0
            pending.pop(0)
            if isinstance(action, Send):
                exchange.got += action.data
                exchange.delays_s.append(action.delay_s + action.spread_s / 2)  # the pause's mean
            else:
                exchange.closed = True
    return exchanges


def _closed(exchanges: list[Exchange]) -> bool:
    return any(exchange.closed for exchange in exchanges)


def _carry_out(machine: SmtpServer) -> list[Send | Close]:
    """The machine's actions, with TLS and storage done at once."""
    visible: list[Send | Close] = []
    while actions := machine.actions():
        for action in actions:
            if isinstance(action, (Send, Close)):
                visible.append(action)
            elif isinstance(action, StartTLS):
                machine.tls_started("TLSv1.3", "TLS_AES_256_GCM_SHA384")
            elif isinstance(action, Store):
                machine.stored(f"messages/{action.sha256}.eml")
    return visible


QUEUE_ID = re.compile(rb"queued as [0-9A-F]{10,12}")


def normalised(reply: bytes) -> bytes:
    """Queue ids differ from run to run; nothing else may."""
    return QUEUE_ID.sub(b"queued as QUEUEID", reply)


def recordings(persona: str = "postfix") -> dict[str, dict]:
    """The conversations (files with exchanges; not e.g. measured timings)."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted((DATA / persona).glob("*.json"))}
    return {name: doc for name, doc in found.items() if "exchanges" in doc}
