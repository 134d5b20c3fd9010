"""The public honeypot detectors against a real trap, with the default
credentials and accept_after: in open_relay mode only the open-relay check
fires, in harvester mode nothing does (README, "Honeypot detectors").

- potsnitch's SMTP detector (vendored unchanged, tests/data/detectors/), run
  whole (passive and active), its sockets bound to a client address of ours.
- nuclei's mail template of network/honeypot/ (mailoney), run by the small
  runner below: connect, for each input write its data and read up to `read`
  bytes, then read up to read-size bytes; a word matcher is checked against
  everything read (a superset of what nuclei matches on, so a template that
  does not match here does not match under nuclei either).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from looper.proto.personas import POSTFIX
from tests.conftest import EMULATED_CLIENT

DETECTORS = Path(__file__).parent / "data" / "detectors"
NUCLEI_TEMPLATES = sorted((DETECTORS / "nuclei").glob("*.yaml"))


def _potsnitch():
    sys.path.insert(0, str(DETECTORS / "potsnitch"))
    try:
        from potsnitch.detectors import smtp
        from potsnitch.probes import timing
    finally:
        sys.path.remove(str(DETECTORS / "potsnitch"))
    return smtp, timing


def _socket_module_from(client: str) -> types.SimpleNamespace:
    """The socket module, except that new sockets are bound to `client`."""

    def bound_socket(*args, **kwargs):
        sock = socket.socket(*args, **kwargs)
        sock.bind((client, 0))
        return sock

    names = {name: getattr(socket, name) for name in dir(socket) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, "socket": bound_socket})


# potsnitch's smtp_instant_banner fires when the banner comes within 5 ms of
# connect(): on loopback real Debian Postfix does that too (greeting after
# 0.02-5.07 ms in tests/data/postfix/*.json); over a network the handshake's
# round trip and the trap's own dial-back come first. Not a tell of ours.
LOOPBACK_ONLY = {"smtp_instant_banner"}


def run_potsnitch(host: str, port: int, client: str, monkeypatch) -> dict[str, str]:
    smtp, timing = _potsnitch()
    shim = _socket_module_from(client)
    monkeypatch.setattr(smtp, "socket", shim)
    monkeypatch.setattr(timing, "socket", shim)
    result = smtp.SMTPDetector(timeout=5.0).detect(host, port)
    return {indicator.name: indicator.severity.value for indicator in result.indicators
            if indicator.name not in LOOPBACK_ONLY}


def run_nuclei_template(path: Path, host: str, port: int, client: str) -> bool:
    """True if the template's tcp request matches (port: the trap's, for its 25)."""
    template = yaml.safe_load(path.read_text())
    matched = False
    for request in template["tcp"]:
        with socket.create_connection((host, port), timeout=5, source_address=(client, 0)) as sock:
            received = b""
            for step in request.get("inputs", []):
                data = step["data"]
                sock.sendall(bytes.fromhex(data) if step.get("type") == "hex" else data.encode())
                if step.get("read"):
                    received += _read(sock, step["read"])
            received += _read(sock, request.get("read-size", 1024))
        text = received.decode("latin-1")
        for matcher in request["matchers"]:
            assert matcher["type"] == "word", matcher  # the only kind our templates use
            hits = [word in text for word in matcher["words"]]
            hit = all(hits) if matcher.get("condition") == "and" else any(hits)
            matched |= hit != bool(matcher.get("negative"))
    return matched


def _read(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(2)
    try:
        return sock.recv(size)
    except (TimeoutError, OSError):
        return b""


def test_the_vendored_templates_are_the_mail_ones():
    assert [p.name for p in NUCLEI_TEMPLATES] == ["mailoney-honeypot-detect.yaml"]


def _fast_auth_failures(trap) -> None:
    # The detectors' verdicts do not depend on the pause, only on the answer:
    # Dovecot's pauses, made short so that potsnitch's 5 s timeout never hides
    # an answer (test_smtpd_postfix.py holds the real ones).
    emulated = trap.trap.emulated
    emulated.settings = replace(
        emulated.settings,
        persona=replace(POSTFIX, auth_failure_delay_s=0.01, auth_failure_spread_s=0.0,
                        auth_repeat_failure_delay_s=0.01, auth_repeat_failure_spread_s=0.0,
                        auth_penalty_first_s=0.0, auth_penalty_max_s=0.0),
    )


@pytest.mark.parametrize("mode, expected", [
    ("open_relay", {"smtp_open_relay": "definite"}),
    ("harvester", {}),
])
async def test_public_detectors_see_only_what_the_mode_shows(relay, monkeypatch, mode, expected):
    trap = await relay(smtp={"mode": mode})  # every other setting at its default
    _fast_auth_failures(trap)
    fired = await asyncio.to_thread(run_potsnitch, trap.host, trap.port, EMULATED_CLIENT, monkeypatch)
    assert fired == expected
    for template in NUCLEI_TEMPLATES:
        assert not await asyncio.to_thread(run_nuclei_template, template, trap.host, trap.port, "127.0.0.4")


async def test_a_brute_forcer_with_a_wordlist_still_gets_in(relay):
    trap = await relay()
    _fast_auth_failures(trap)
    accept_after = trap.trap.config.smtp.accept_after
    assert accept_after is not None

    def brute_force() -> int:
        import smtplib
        for attempt, password in enumerate(["123456", "password", "admin", "qwerty"] * 10, 1):
            with smtplib.SMTP(trap.host, trap.port, source_address=("127.0.0.5", 0), timeout=10) as client:
                client.ehlo("bot.example.org")
                client.user, client.password = "info", password
                try:
                    client.auth("LOGIN", client.auth_login, initial_response_ok=False)
                    return attempt
                except smtplib.SMTPAuthenticationError:
                    continue
        return 0

    assert await asyncio.to_thread(brute_force) == accept_after + 1


async def test_the_checks_do_fire_on_what_they_look_for(relay, monkeypatch):
    # The old default: a common pair accepted at the first try.
    trap = await relay(credentials=["admin:admin"])
    _fast_auth_failures(trap)
    fired = await asyncio.to_thread(run_potsnitch, trap.host, trap.port, EMULATED_CLIENT, monkeypatch)
    assert fired["smtp_default_cred_accepted"] == "high"
    # Mailoney's answer to HELP, from a stand-in server.
    async def mailoney(reader, writer):
        writer.write(b"220 mail.example.com ESMTP\r\n")
        await reader.readline()
        writer.write(b'502 Error: command "HELP" not implemented\r\n')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(mailoney, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        for template in NUCLEI_TEMPLATES:
            assert await asyncio.to_thread(run_nuclei_template, template, "127.0.0.1", port, "127.0.0.4")
