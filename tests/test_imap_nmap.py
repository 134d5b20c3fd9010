"""Realism: nmap -sV names the bait IMAP server `Dovecot imapd` and its
implicit-TLS port `ssl/imap Dovecot imapd` (nmap 7.93 named a private
Dovecot 2.3.19.1's IMAP port `Dovecot imapd` too)."""

from __future__ import annotations

from tests.conftest import free_port
from tests.test_realism import nmap  # skips this module without nmap, as there


def service(report: str, port: int) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"{port}/tcp"))
    return line.split()[1:]


async def test_nmap_names_the_imap_ports_dovecot_imapd(start_trap):
    imap, imaps = free_port(), free_port()
    trap = await start_trap(
        free_port(), dialback={"on_failure": "emulate"}, smtp={"hostname": "mail.example.test"},
        listen={"imap": [f"127.0.0.1:{imap}"], "imaps": [f"127.0.0.1:{imaps}"]},
    )
    report = await nmap("-sV", "-p", f"{imap},{imaps}", trap.host)
    assert service(report, imap) == ["open", "imap", "Dovecot", "imapd"], report
    assert service(report, imaps) == ["open", "ssl/imap", "Dovecot", "imapd"], report
