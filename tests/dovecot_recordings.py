"""Dovecot's recorded conversations (tests/data/dovecot/, README.md there),
loaded for replay tests against looper's IMAP and POP3 machines (helpers,
not tests).

    for recording in load_recordings(protocol="imap"):
        store = recording.store()          # the bait as Dovecot served it
        for exchange in recording.exchanges:
            if exchange.tls is not None:   # the handshake: the machine is now in TLS
                ...
            got = feed(machine, exchange.send)
            assert mask(got) == mask(exchange.recv)
            assert closed(machine) == exchange.closed
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from looper.bait import load_bait
from looper.config import parse_config
from looper.proto.mailbox import BaitStore

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "dovecot"

# Dovecot's command timing in tagged replies after login: "(0.001 + 0.000 secs)",
# "(0.010 + 0.051 + 0.008 secs)". It differs per run: both sides get one token.
TIMING = re.compile(rb" \(\d+\.\d{3} \+ \d+\.\d{3}(?: \+ \d+\.\d{3})? secs\)")


def mask(data: bytes) -> bytes:
    """What may differ between Dovecot's run and any other, made equal."""
    return TIMING.sub(b" (T secs)", data)


@dataclass(frozen=True)
class Exchange:
    send: bytes  # what the client sent ("" for the greeting, and for a TLS handshake)
    recv: bytes  # what Dovecot sent back, byte for byte
    closed: bool  # Dovecot had closed the connection by the end of it
    ms: float
    tls: str | None = None  # a TLS handshake here ("TLSv1.3 TLS_AES_256_GCM_SHA384"), nothing sent


@dataclass(frozen=True)
class Recording:
    name: str  # "<conversation>.<variant>"
    conversation: str
    variant: str  # "plaintext" (disable_plaintext_auth = no) or "stock" (yes)
    protocol: str  # "imap" or "pop3"
    port: str  # "imap", "imaps", "pop3", "pop3s"
    implicit_tls: bool
    user: str
    password: str
    bait_now: float  # the start time the bait was dated from
    description: str
    exchanges: tuple[Exchange, ...]

    @property
    def plaintext_login(self) -> bool:
        """looper's mail_access.plaintext_login that matches the recording."""
        return self.variant == "plaintext"

    def store(self) -> BaitStore:
        """The bait exactly as Dovecot served it: same dates, UIDVALIDITY, UIDs, bytes."""
        return load_bait(shipped_bait_config(), self.bait_now)


def shipped_bait_config():
    """The default configuration, with this repository's bait folder whatever the cwd."""
    return parse_config(f"bait: {{folder: '{REPO / 'config' / 'bait'}'}}\n", "tests/dovecot_recordings.py")


def load_recording(path: Path) -> Recording:
    doc = json.loads(path.read_text())
    return Recording(
        name=path.name.removesuffix(".json"),
        conversation=doc["conversation"], variant=doc["variant"], protocol=doc["protocol"], port=doc["port"],
        implicit_tls=doc["implicit_tls"], user=doc["user"], password=doc["password"], bait_now=doc["bait_now"],
        description=doc["description"],
        exchanges=tuple(
            Exchange(e["send"].encode("latin-1"), e["recv"].encode("latin-1"), e["closed"], e["ms"], e.get("tls"))
            for e in doc["exchanges"]
        ),
    )


def load_recordings(protocol: str | None = None, variant: str | None = None) -> list[Recording]:
    """Every recording, in name order; only one protocol's or variant's if given."""
    recordings = [load_recording(path) for path in sorted(DATA.glob("*.json"))]
    return [r for r in recordings if protocol in (None, r.protocol) and variant in (None, r.variant)]


def replay(recording: Recording, machine) -> list[tuple[bytes, bytes, bool, bool]]:
    """Play `recording`'s client side into `machine` (an IMAP or POP3
    server machine, made for the recording's store and settings); per
    exchange (what it sent, what Dovecot sent, it closed, Dovecot closed),
    up to the first close."""
    state = {"closed": False, "tls_due": False}
    results = []
    for exchange in recording.exchanges:
        if exchange.tls is not None:
            if not state["tls_due"]:  # implicit TLS: the handshake comes before the greeting
                results.append((b"", exchange.recv, state["closed"], exchange.closed))
                continue
            state["tls_due"] = False
            version, _, cipher = exchange.tls.partition(" ")
            machine.tls_started(version, cipher)
            got = _drain(machine, state)
        elif state["tls_due"] and exchange.send:
            # After STARTTLS's OK the server's TLS layer takes the next bytes
            # as a ClientHello: plain text is no handshake, and the
            # connection ends without a word (the machine never sees them).
            machine.connection_closed()
            got, state["closed"] = b"", True
        else:
            if exchange.send:
                machine.receive_data(exchange.send)
            got = _drain(machine, state)
        results.append((got, exchange.recv, state["closed"], exchange.closed))
        if state["closed"]:
            break
    return results


def _drain(machine, state: dict) -> bytes:
    """What the machine sends now, its pauses left out (the adapter's)."""
    from looper.proto.actions import Close, Send, StartTLS, Store

    out = b""
    while True:
        actions = machine.actions()
        if not actions:
            if getattr(machine, "_backlog", b""):  # its output budget held the rest: the writes drained
                machine.continue_reading()
                continue
            return out
        for action in actions:
            if isinstance(action, Send):
                out += action.data
            elif isinstance(action, Store):
                machine.stored("/logs/messages/appended.eml")
            elif isinstance(action, StartTLS):
                state["tls_due"] = True
            elif isinstance(action, Close):
                state["closed"] = True
