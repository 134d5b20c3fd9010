"""Realism: nmap -sV names the bait POP3 server `Dovecot pop3d` and its
implicit-TLS port `ssl/pop3 Dovecot pop3d`, as nmap 7.93 names Dovecot
2.3.19.1 on 110 and 995 (with Debian's ssl_dh: without it Dovecot fails
nmap's DHE handshake, and 995 reads `pop3s?`)."""

from __future__ import annotations

from tests.conftest import free_port
from tests.test_realism import nmap  # skips this module without nmap, as there


def service(report: str, port: int) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"{port}/tcp"))
    return line.split()[1:]


async def test_nmap_names_the_pop3_port_dovecot_pop3d(start_trap):
    pop3, pop3s = free_port(), free_port()
    trap = await start_trap(
        free_port(), dialback={"on_failure": "emulate"}, smtp={"hostname": "mail.example.test"},
        listen={"pop3": [f"127.0.0.1:{pop3}"], "pop3s": [f"127.0.0.1:{pop3s}"]},
    )
    report = await nmap("-sV", "-p", f"{pop3},{pop3s}", trap.host)
    assert service(report, pop3) == ["open", "pop3", "Dovecot", "pop3d"], report
    assert service(report, pop3s) == ["open", "ssl/pop3", "Dovecot", "pop3d"], report
