"""Realism: nmap -sV names the bait IMAP and POP3 servers as it names
Dovecot 2.3.19.1 (tests/data/dovecot/nmap.txt): `Dovecot imapd` and
`Dovecot pop3d`, on their implicit-TLS ports `ssl/imap` and `ssl/pop3`
(with Debian's ssl_dh: without it Dovecot fails nmap's DHE handshake, and
995 reads `pop3s?`)."""

from __future__ import annotations

from tests.conftest import free_port
from tests.test_realism import nmap  # skips this module without nmap, as there


def service(report: str, port: int) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"{port}/tcp"))
    return line.split()[1:]


async def test_nmap_names_the_bait_ports_as_dovecot(start_trap):
    ports = {kind: free_port() for kind in ("imap", "imaps", "pop3", "pop3s")}
    trap = await start_trap(
        free_port(), dialback={"on_failure": "emulate"}, smtp={"hostname": "mail.example.test"},
        listen={kind: [f"127.0.0.1:{port}"] for kind, port in ports.items()},
    )
    report = await nmap("-sV", "-p", ",".join(map(str, ports.values())), trap.host)
    assert service(report, ports["imap"]) == ["open", "imap", "Dovecot", "imapd"], report
    assert service(report, ports["imaps"]) == ["open", "ssl/imap", "Dovecot", "imapd"], report
    assert service(report, ports["pop3"]) == ["open", "pop3", "Dovecot", "pop3d"], report
    assert service(report, ports["pop3s"]) == ["open", "ssl/pop3", "Dovecot", "pop3d"], report
