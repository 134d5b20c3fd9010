"""The golden rule, proven on a running trap: every connection it makes goes
to the address that connected to it, on the dial-back port, and nowhere
else; and the budgets hold against a client that reconnects as fast as it
can. Every connect of the trap process is recorded by Python's own audit
hook (tests/trapproc.py), so none can be missed. (The reverse-DNS lookups
of c-ares are not Python connects; they are made for global addresses only,
and a test never has one.)"""

from __future__ import annotations

import asyncio

from tests.conftest import free_port
from tests.netutil import connect_from
from tests.trapproc import TrapProcess

REFLECTED = ["127.0.0.2", "127.0.0.12"]  # their port 25 (the dial-back port) answers
EMULATED = "127.0.0.3"  # nothing listens there: the emulated relay
BLOCKED = "127.0.0.9"  # limits.block: nothing at all
CROWD = "127.0.0.7"  # limits.per_ip 2: the third at once is hung up on
HASTY = "127.0.0.5"  # reconnects as fast as it can: dialback.per_ip_hourly 4


async def _relay(host: str, port: int) -> asyncio.Server:
    async def greet(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            writer.write(b"250 ok\r\n")
        writer.close()

    return await asyncio.start_server(greet, host, port)


async def _converse(src: str, trap: TrapProcess, commands: bytes = b"EHLO x.example\r\nQUIT\r\n") -> bytes:
    reader, writer = await connect_from(src, trap.host, trap.port)
    try:
        writer.write(commands)
        async with asyncio.timeout(10):
            return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_every_connection_goes_back_to_the_client_on_the_dialback_port(tmp_path):
    dialback_port = free_port(REFLECTED[0])
    relays = [await _relay(host, dialback_port) for host in REFLECTED + [HASTY]]
    settings = dict(
        dialback={"port": dialback_port, "per_ip_hourly": 4},
        limits={"per_ip": 2, "block": [f"{BLOCKED}/32"]},
        smtp={"idle_timeout": 5},
    )
    try:
        with TrapProcess(tmp_path, audit_connects=True, **settings) as trap:
            # Reflected, emulated, refused, hung up on, in one mixed run.
            replies = await asyncio.gather(
                *(_converse(host, trap) for host in REFLECTED),
                _converse(EMULATED, trap),
                _converse(BLOCKED, trap),
            )
            assert replies[0].startswith(b"220 relay.sim ESMTP") and replies[2].startswith(b"220 mx.proc.test ESMTP")
            assert replies[3] == b""
            held = [await connect_from(CROWD, trap.host, trap.port) for _ in range(3)]
            assert await asyncio.wait_for(held[2][0].read(), 10) == (
                b"421 4.3.2 Service not available, closing transmission channel\r\n"
            )
            for _, writer in held:
                writer.close()
            # As fast as it can, one after the other: 12 times.
            hasty = [await _converse(HASTY, trap) for _ in range(12)]
            await asyncio.sleep(0.3)
            assert trap.stop() == 0
    finally:
        for relay in relays:
            relay.close()

    sessions = trap.events.of("looper.session.connect")
    clients = {e["src_ip"] for e in sessions}
    assert {*REFLECTED, EMULATED, BLOCKED, CROWD, HASTY} <= clients
    connects = trap.connects()
    # The rule itself: back to a client that connected, on the dial-back port.
    assert connects and all(port == dialback_port and host in clients for host, port in connects), connects
    dialed = [host for host, _ in connects]
    # ... and only to those that policy allows, as often as it allows.
    assert BLOCKED not in dialed
    assert dialed.count(HASTY) == 4 and sum(r.startswith(b"220 relay.sim") for r in hasty) == 4
    assert all(r.startswith(b"220 mx.proc.test ESMTP") for r in hasty[4:])
    assert dialed.count(CROWD) == 2  # the third was over limits.per_ip: no dial-back
    assert sorted(dialed) == sorted(
        e["target"].rpartition(":")[0]
        for e in trap.events.all()
        if e["eventid"] == "looper.dialback.ok"
        or (e["eventid"] == "looper.dialback.failed" and e["reason"] in ("refused", "timeout", "unreachable"))
    )
