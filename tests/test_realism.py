"""Realism: nmap -sV names the postfix persona as Postfix smtpd, as it names
the real Postfix (tests/data/postfix/nmap.txt)."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from looper.net.tls import snakeoil_host_name
from tests.conftest import free_port

if shutil.which("nmap") is None:
    if os.environ.get("LOOPER_REQUIRE_NMAP") == "1":
        raise RuntimeError("LOOPER_REQUIRE_NMAP=1 but nmap is missing (sudo make test-tools)")
    pytest.skip("needs Debian's nmap (sudo make test-tools)", allow_module_level=True)


async def nmap(*arguments: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "nmap", "-n", "-Pn", *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_nmap_takes_the_postfix_persona_for_postfix(start_trap):
    # nmap connects from 127.0.0.1; its dial-back port is closed: emulated.
    trap = await start_trap(
        free_port(), dialback={"on_failure": "emulate"}, smtp={"hostname": "mail.example.test"}
    )
    report = await nmap("-sV", "-p", str(trap.port), trap.host)
    service = next(line for line in report.splitlines() if line.startswith(f"{trap.port}/tcp"))
    assert service.split()[1:] == ["open", "smtp", "Postfix", "smtpd"], report
    assert "Service Info: Host:  mail.example.test" in report
    report = await nmap("-sV", "-sC", "-p", str(trap.port), trap.host)
    assert (
        "smtp-commands: mail.example.test, PIPELINING, SIZE 10240000, VRFY, ETRN, STARTTLS, AUTH PLAIN LOGIN CRAM-MD5, "
        "ENHANCEDSTATUSCODES, 8BITMIME, DSN, SMTPUTF8, CHUNKING" in report
    ), report
    # Debian's snakeoil, which Postfix serves by default: the machine's name.
    assert f"ssl-cert: Subject: commonName={snakeoil_host_name()}" in report, report


@pytest.mark.parametrize(
    "persona, service",
    [
        ("exim", ["Exim", "smtpd", "4.96"]),
        ("sendmail", ["Sendmail", "8.17.1.9/8.17.1.9/Debian-2+deb12u2"]),
        ("exchange", ["Microsoft", "Exchange", "smtpd"]),
    ],
)
async def test_nmap_names_the_other_personas(start_trap, persona, service):
    trap = await start_trap(
        free_port(), dialback={"on_failure": "emulate"}, smtp={"hostname": "mail.example.test", "persona": persona}
    )
    report = await nmap("-sV", "-p", str(trap.port), trap.host)
    line = next(line for line in report.splitlines() if line.startswith(f"{trap.port}/tcp"))
    assert line.split()[3:3 + len(service)] == service, report


async def test_the_exim_persona_makes_its_certificate_per_session_as_exim_does(start_trap):
    """Debian's Exim has no certificate file: it makes one when a TLS session
    starts, valid from then for two hours (tests/data/exim/nmap.txt)."""
    from datetime import datetime, timedelta, timezone

    trap = await start_trap(
        free_port(), dialback={"on_failure": "emulate"}, smtp={"hostname": "mail.example.test", "persona": "exim"}
    )
    before = datetime.now(timezone.utc).replace(microsecond=0)
    report = await nmap("-sV", "-sC", "-p", str(trap.port), trap.host)
    assert "ssl-cert: Subject: commonName=mail.example.test/organizationName=Exim Developers/countryName=UK" in report
    line = next(line for line in report.splitlines() if "Not valid before:" in line)
    start = datetime.fromisoformat(line.split("before:")[1].strip()).replace(tzinfo=timezone.utc)
    assert before - timedelta(seconds=2) <= start <= datetime.now(timezone.utc)
    line = next(line for line in report.splitlines() if "Not valid after:" in line)
    assert datetime.fromisoformat(line.split("after:")[1].strip()).replace(tzinfo=timezone.utc) - start == timedelta(hours=2)
