"""Checks of the relay simulator itself, without the trap.

Two sims pointed at each other (or one at itself) play the loop that the trap
would otherwise make: every delivery goes from one sim's own address to the
other's server, one Received: header longer each pass.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.relaysim import (
    RelaySim,
    count_received,
    dot_stuff,
    free_port,
    normalize_crlf,
    wait_all_idle,
)

A_HOST, B_HOST = "127.0.0.2", "127.0.0.3"
NOWHERE = ("127.0.0.1", 9)  # placeholder trap, replaced before anything is sent
MESSAGE = b"From: a@example.org\r\nTo: b@spamtrap.example\r\nSubject: loop\r\n\r\nhello\r\n.dot\r\n"
TOO_MANY_HOPS = (554, "5.4.0 Error: too many hops")
SETTLE = 0.05  # sims queue before they answer 250: no hand-off gap without a trap
RECEIVED_RE = re.compile(
    rb"^Received: from (?P<helo>\S+) \(\[(?P<ip>[0-9.]+)\]\)\r\n"
    rb"\tby (?P<by>\S+) \(RelaySim\) with ESMTP id (?P<id>[0-9A-F]{10}); (?P<date>[^\r\n]+)\r\n"
)


async def pair(**options) -> tuple[RelaySim, RelaySim]:
    """Two started sims, each one's trap being the other's server."""
    a = await RelaySim(A_HOST, 0, trap=NOWHERE, **options).start()
    b = await RelaySim(B_HOST, 0, trap=NOWHERE, **options).start()
    a.trap, b.trap = b.address, a.address
    return a, b


async def closed_port_trap() -> tuple[str, int]:
    """An address on 127.0.0.0/8 where nothing listens (connection refused)."""
    return ("127.0.0.9", free_port("127.0.0.9"))


async def converse(address: tuple[str, int], script: bytes, *, source: str = "127.0.0.1") -> list[bytes]:
    """Send a whole script in one write, half-close, read every reply line to EOF."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*address, local_addr=(source, 0)), 5
    )
    try:
        writer.write(script)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return data.split(b"\r\n")[:-1]


# --- loops between two sims ------------------------------------------------------


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
@pytest.mark.parametrize("reuse", [False, True], ids=["connect-each", "reuse"])
async def test_ping_pong_until_hop_limit(chunking, pipelining, reuse):
    a, b = await pair(chunking=chunking, pipelining=pipelining, reuse_connection=reuse)
    try:
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=8, settle=SETTLE)

        # hops 0..29 accepted (B the even ones, A the odd ones); B refuses hop 30
        assert [m.hops for m in b.accepted] == list(range(0, 30, 2))
        assert [m.hops for m in a.accepted] == list(range(1, 30, 2))
        assert len(a.accepted) + len(b.accepted) == 30
        assert b.refused == [(554, "5.4.0 Error: too many hops", 30)]
        assert a.refused == []
        assert a.delivery_results[-1] == TOO_MANY_HOPS
        assert a.delivery_results[:-1] == [(250, r[1]) for r in a.delivery_results[:-1]]
        assert len(a.delivery_results) == 16 and len(b.delivery_results) == 15
        assert (a.delivered, b.delivered) == (15, 15)
        assert {m.via for m in a.accepted + b.accepted} == {"BDAT" if chunking else "DATA"}
        # deliveries come from each sim's own address
        assert {m.peer for m in b.accepted} == {A_HOST}
        assert {m.peer for m in a.accepted} == {B_HOST}
        assert a.errors == [] and b.errors == []

        # one connection per message, or one in all
        if reuse:
            assert (a.client_connections, b.client_connections) == (1, 1)
            assert (a.server_sessions, b.server_sessions) == (1, 1)
        else:
            assert (a.client_connections, b.client_connections) == (16, 15)
            assert (a.server_sessions, b.server_sessions) == (15, 16)

        # the body survives 30 passes, dot-stuffing included
        last = b.accepted[-1].data
        assert last.endswith(b"\r\n\r\nhello\r\n.dot\r\n")
        assert count_received(last) == 28

        # the newest Received: is on top, folded over two lines
        top = RECEIVED_RE.match(a.accepted[0].data)
        assert top is not None
        assert top["helo"] == b"relay-127.0.0.2.sim" and top["ip"] == b"127.0.0.2"
        assert top["by"] == b"relay-127.0.0.3.sim"
        assert top["id"].decode() == b.accepted[0].queue_id
        assert parsedate_to_datetime(top["date"].decode()).tzinfo is not None

        # what went over the wire
        client_lines = [line for line in a.client_transcript if not line.startswith("-:")]
        first_mail = next(i for i, line in enumerate(client_lines) if line.startswith("C: MAIL"))
        after_mail = client_lines[first_mail + 1]
        if pipelining:
            assert after_mail.startswith("C: RCPT")  # no reply waited for
            assert client_lines[first_mail + 2].startswith("C: BDAT" if chunking else "C: DATA")
        else:
            assert after_mail.startswith("S: 250")
        command = "C: BDAT" if chunking else "C: DATA"
        assert any(line.startswith(command) for line in b.transcript)
    finally:
        await a.stop()
        await b.stop()


async def test_exim_style_pipelined_quit_and_half_close():
    a, b = await pair(chunking=True, pipeline_quit_and_half_close=True)
    try:
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=8, settle=SETTLE)
        assert len(a.accepted) + len(b.accepted) == 30
        assert a.delivery_results[-1] == TOO_MANY_HOPS
        assert all(code == 250 for code, _ in a.delivery_results[:-1] + b.delivery_results)
        assert a.requeued == b.requeued == 0
        assert a.errors == [] and b.errors == []
        # MAIL, RCPT, BDAT+data and QUIT in one write, then FIN, then the replies
        lines = [line for line in a.client_transcript if not line.startswith("-:")]
        i = next(i for i, line in enumerate(lines) if line.startswith("C: BDAT"))
        assert lines[i].endswith("+ QUIT") and lines[i + 1] == "C: <half-close>"
        assert [line[:6] for line in lines[i + 2 : i + 6]] == ["S: 250", "S: 250", "S: 250", "S: 221"]
        # the server side saw the QUIT after the chunk and answered everything
        assert any(line.startswith("C: <") and "BDAT" in line for line in b.transcript)
        assert "C: QUIT" in b.transcript
    finally:
        await a.stop()
        await b.stop()


async def test_exim_style_without_chunking_falls_back_to_data():
    a, b = await pair(chunking=False, pipeline_quit_and_half_close=True, hop_limit=4)
    try:
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=5, settle=SETTLE)
        assert len(a.accepted) + len(b.accepted) == 4
        assert {m.via for m in a.accepted + b.accepted} == {"DATA"}
        assert "C: <half-close>" not in a.client_transcript
    finally:
        await a.stop()
        await b.stop()


async def test_exim_style_reply_lost_counts_as_requeued():
    """A server that takes the whole batch and closes without replying to it."""
    seen = bytearray()

    async def swallow(reader, writer):
        writer.write(b"220 swallow ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-swallow\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
        seen.extend(await asyncio.wait_for(reader.read(), 5))  # up to the client's FIN
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.4", 0)
    sim = RelaySim(A_HOST, 0, trap=("127.0.0.4", server.sockets[0].getsockname()[1]),
                   chunking=True, pipeline_quit_and_half_close=True)
    try:
        async with sim:
            await sim.inject("a@example.org", "b@spamtrap.example", MESSAGE)
            assert await sim.wait_idle(5)
            assert sim.requeued == 1
            assert sim.delivered == 0
            assert sim.delivery_results == [(None, "lost: connection ended before the BDAT reply")]
        assert seen.startswith(b"MAIL FROM:<a@example.org>")
        assert seen.endswith(MESSAGE + b"QUIT\r\n")
        assert f"BDAT {len(MESSAGE)} LAST\r\n".encode() + MESSAGE in seen
    finally:
        server.close()
        await server.wait_closed()


async def test_notice_own_name_when_trap_is_itself():
    sim = await RelaySim(A_HOST, 0, trap=NOWHERE, notice_own_name=True).start()
    sim.trap = sim.address
    try:
        await sim.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await sim.wait_idle(5)
        assert sim.loops_detected == 1
        assert sim.accepted == [] and sim.delivery_results == []
        assert sim.server_sessions == 1 and sim.client_connections == 1
        client = [line for line in sim.client_transcript if not line.startswith("-:")]
        assert client[:2] == ["S: 220 relay-127.0.0.2.sim ESMTP RelaySim", "C: EHLO relay-127.0.0.2.sim"]
        assert "C: QUIT" in client and not any(line.startswith("C: MAIL") for line in client)
    finally:
        await sim.stop()


async def test_self_loop_without_noticing_runs_to_hop_limit():
    sim = await RelaySim(A_HOST, 0, trap=NOWHERE, hop_limit=5).start()
    sim.trap = sim.address
    try:
        await sim.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await sim.wait_idle(5)
        assert [m.hops for m in sim.accepted] == [0, 1, 2, 3, 4]
        assert sim.refused == [(554, "5.4.0 Error: too many hops", 5)]
        assert sim.delivery_results[-1] == TOO_MANY_HOPS
        assert sim.loops_detected == 0
    finally:
        await sim.stop()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_refuse_relay(pipelining):
    a, b = await pair(pipelining=pipelining)
    b.refuse_relay = True
    try:
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=5, settle=SETTLE)
        assert a.delivery_results == [(554, "5.7.1 <b@spamtrap.example>: Relay access denied")]
        assert b.refused == [(554, "5.7.1 <b@spamtrap.example>: Relay access denied", None)]
        assert b.accepted == []
        if pipelining:  # the pipelined DATA is refused too, and nothing is sent after it
            assert "S: 554 5.5.1 Error: no valid recipients" in b.transcript
        assert "C: RSET" in b.transcript
    finally:
        await a.stop()
        await b.stop()


async def test_max_passes_bounds_an_endless_loop():
    a, b = await pair(hop_limit=1000, max_passes=5)
    try:
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=5, settle=SETTLE)
        assert (a.deliveries, b.deliveries) == (5, 5)
        assert (len(a.accepted), len(b.accepted)) == (5, 5)
        assert (a.dropped, b.dropped) == (1, 0)
        assert any("max_passes" in e for e in a.errors)
    finally:
        await a.stop()
        await b.stop()


async def test_reuse_connection_quits_when_idle_and_reconnects():
    a, b = await pair(reuse_connection=True, hop_limit=2)
    try:
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=5, settle=SETTLE)
        await asyncio.sleep(0.8)  # > reuse_idle_s: both send QUIT
        assert a.client_transcript[-1] == "S: 221 2.0.0 Bye"
        assert b.transcript.count("C: QUIT") == 1
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=5, settle=SETTLE)
        assert a.client_connections == 2
        assert len(b.accepted) == 2
    finally:
        await a.stop()
        await b.stop()


async def test_unreachable_trap_is_logged_not_raised():
    sim = await RelaySim(A_HOST, 0, trap=await closed_port_trap()).start()
    try:
        for _ in range(3):
            await sim.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await sim.wait_idle(5)
        assert len(sim.errors) == 3 and all("connect to 127.0.0.9" in e for e in sim.errors)
        assert sim.client_connections == 0 and sim.deliveries == 3
    finally:
        await sim.stop()


async def test_stop_in_the_middle_of_an_endless_loop():
    a, b = await pair(hop_limit=10_000, max_passes=10_000)
    await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
    await asyncio.sleep(0.2)
    assert len(a.accepted) + len(b.accepted) > 2
    await asyncio.wait_for(asyncio.gather(a.stop(), b.stop()), 5)
    count = len(a.accepted) + len(b.accepted)
    await asyncio.sleep(0.1)
    assert len(a.accepted) + len(b.accepted) == count


async def test_same_port_on_two_addresses():
    port = free_port(A_HOST, B_HOST)
    async with RelaySim(A_HOST, port, trap=(B_HOST, port), hop_limit=3) as a, \
               RelaySim(B_HOST, port, trap=(A_HOST, port), hop_limit=3) as b:
        assert a.port == b.port == port
        await a.inject("a@example.org", "b@spamtrap.example", MESSAGE)
        assert await wait_all_idle(a, b, timeout=5, settle=SETTLE)
        assert len(a.accepted) + len(b.accepted) == 3


def test_only_loopback():
    with pytest.raises(ValueError):
        RelaySim("192.0.2.1", 25, trap=("127.0.0.1", 25))
    with pytest.raises(ValueError):
        RelaySim("127.0.0.2", 25, trap=("192.0.2.1", 25))
    sim = RelaySim("127.0.0.2", 25, trap=("127.0.0.1", 25))
    with pytest.raises(ValueError):
        sim.trap = ("localhost", 25)
    assert sim.name == "relay-127.0.0.2.sim"


# --- the server side, driven by raw clients ------------------------------------------


@pytest.fixture
async def server():
    sim = await RelaySim(A_HOST, 0, trap=await closed_port_trap(), chunking=True, starttls=True).start()
    yield sim
    await sim.stop()


async def test_greeting_and_ehlo_exact_bytes(server):
    lines = await converse(server.address, b"EHLO client.example\r\nQUIT\r\n")
    assert lines == [
        b"220 relay-127.0.0.2.sim ESMTP RelaySim",
        b"250-relay-127.0.0.2.sim",
        b"250-PIPELINING",
        b"250-SIZE 10240000",
        b"250-STARTTLS",
        b"250-CHUNKING",
        b"250-8BITMIME",
        b"250 SMTPUTF8",
        b"221 2.0.0 Bye",
    ]


async def test_ehlo_without_options():
    async with RelaySim(A_HOST, 0, trap=NOWHERE, pipelining=False, name="mx.example") as sim:
        lines = await converse(sim.address, b"EHLO c\r\nHELO c\r\nSTARTTLS\r\nBDAT 3 LAST\r\nQUIT\r\n")
    assert lines == [
        b"220 mx.example ESMTP RelaySim",
        b"250-mx.example",
        b"250-SIZE 10240000",
        b"250-8BITMIME",
        b"250 SMTPUTF8",
        b"250 mx.example",
        b"502 5.5.1 Error: command not implemented",
        b"502 5.5.1 Error: command not implemented",
        b"221 2.0.0 Bye",
    ]


async def test_starttls_offered_but_not_available(server):
    lines = await converse(server.address, b"EHLO c\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
    assert lines[-3:] == [b"454 4.7.0 TLS not available due to local problem", b"250 2.0.0 Ok", b"221 2.0.0 Bye"]


async def test_line_too_long(server):
    lines = await converse(server.address, b"EHLO c\r\nNOOP " + b"x" * 5000 + b"\r\nNOOP\r\nQUIT\r\n")
    assert lines[-3:] == [b"500 5.5.0 Line too long", b"250 2.0.0 Ok", b"221 2.0.0 Bye"]


async def test_data_ends_only_at_crlf_dot_crlf_and_is_unstuffed(server):
    body = b"Subject: s\r\n\r\nbare\n.\nstill data\r\n..stuffed\r\n"
    script = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n" + body + b".\r\nQUIT\r\n"
    lines = await converse(server.address, script)
    assert lines[-4:-1] == [b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>",
                            b"250 2.0.0 Ok: queued as " + server.accepted[0].queue_id.encode()]
    assert server.accepted[0].data == b"Subject: s\r\n\r\nbare\n.\nstill data\r\n.stuffed\r\n"
    assert server.accepted[0].helo == "c" and server.accepted[0].rcpts == ("b@y",)


async def test_bdat_chunks(server):
    script = (b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"
              b"BDAT 12\r\nSubject: s\r\nBDAT 0\r\nBDAT 11 LAST\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    lines = await converse(server.address, script)
    assert lines[-4:] == [b"250 2.0.0 Ok: 12 octets received", b"250 2.0.0 Ok: 0 octets received",
                          b"250 2.0.0 Ok: queued as " + server.accepted[0].queue_id.encode(),
                          b"221 2.0.0 Bye"]
    assert server.accepted[0].data == b"Subject: s\r\n\r\nbody\r\n.\r\n"
    assert server.accepted[0].via == "BDAT"


async def test_bdat_without_recipient_still_consumes_the_chunk(server):
    lines = await converse(server.address, b"EHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\nQUIT\r\n")
    assert lines[-3:] == [b"503 5.5.1 Error: need MAIL command", b"250 2.0.0 Ok", b"221 2.0.0 Bye"]


@pytest.mark.parametrize("hops, reply", [(29, b"250 2.0.0 Ok: queued as "), (30, b"554 5.4.0 Error: too many hops")])
async def test_hop_limit_counts_received_fields(server, hops, reply):
    names = [b"Received", b"RECEIVED", b"received", b"Received "]
    headers = b"".join(names[i % 4] + b": from h%d\r\n\tby x; date\r\n" % i for i in range(hops))
    body = headers + b"Subject: s\r\n\r\nReceived: in the body\r\n"
    script = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n" + body + b".\r\nQUIT\r\n"
    lines = await converse(server.address, script)
    assert lines[-2].startswith(reply)
    if hops < 30:
        assert server.accepted[0].hops == hops
    else:
        assert server.refused == [(554, "5.4.0 Error: too many hops", 30)]


async def test_command_order_and_errors(server):
    script = (b"MAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\nRSET\r\nRCPT TO:<b@y>\r\nDATA\r\n"
              b"MAIL FROM:<a@x>\r\nDATA\r\nbogus\r\nEHLO\r\nQUIT\r\n")
    lines = await converse(server.address, script)
    assert lines[1:] == [
        b"250 2.1.0 Ok",
        b"503 5.5.1 Error: nested MAIL command",
        b"250 2.0.0 Ok",
        b"503 5.5.1 Error: need MAIL command",
        b"503 5.5.1 Error: need MAIL command",
        b"250 2.1.0 Ok",
        b"503 5.5.1 Error: need RCPT command",
        b"502 5.5.2 Error: command not recognized",
        b"501 5.5.4 Syntax: EHLO hostname",
        b"221 2.0.0 Bye",
    ]


async def test_too_many_bad_commands_closes(server):
    lines = await converse(server.address, b"bogus\r\n" * 30)
    assert lines[-1].startswith(b"421 4.7.0") and len(lines) == 1 + 21


async def test_size_limits(server):
    lines = await converse(server.address, b"EHLO c\r\nMAIL FROM:<a@x> SIZE=10240001\r\nQUIT\r\n")
    assert lines[-2:] == [b"552 5.3.4 Message size exceeds fixed limit", b"221 2.0.0 Bye"]
    big = b"x" * 998 + b"\r\n"
    chunk = big * (10_240_000 // len(big) + 1)
    script = (b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT %d LAST\r\n" % len(chunk)
              + chunk + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n" + chunk + b".\r\nQUIT\r\n")
    lines = await converse(server.address, script)
    assert lines[-6:] == [b"552 5.3.4 Message size exceeds fixed limit", b"250 2.1.0 Ok", b"250 2.1.5 Ok",
                          b"354 End data with <CR><LF>.<CR><LF>",
                          b"552 5.3.4 Message size exceeds fixed limit", b"221 2.0.0 Bye"]
    assert server.accepted == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"EHLO x\r\n", b"MAIL FROM:<a@x>\r\n", b"RCPT TO:<b@y>\r\n", b"DATA\r\n",
                     b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"\r\n.\r\n", b"RSET\r\n", b"STARTTLS\r\n"]),
), max_size=30))
def test_hostile_input_never_breaks_the_server(pieces):
    """Random and hostile bytes: the server answers, ends cleanly, logs no error."""

    async def run():
        async with RelaySim(A_HOST, 0, trap=await closed_port_trap(), chunking=True, starttls=True,
                            server_timeout_s=0.5) as sim:
            reader, writer = await asyncio.open_connection(*sim.address)
            for piece in pieces:  # one write per piece: splits at random points
                writer.write(piece)
                await writer.drain()
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert data.startswith(b"220 ")
            assert all(len(line) < 600 for line in data.split(b"\r\n"))
            for _ in range(100):  # the session ends on its own
                if not sim._sessions:
                    break
                await asyncio.sleep(0.01)
            assert not sim._sessions
            assert [e for e in sim.errors if "connect to" not in e] == []

    asyncio.run(run())


async def test_smtplib_client_delivers_through_two_sims():
    """A real client submits to A; A relays to B (B's trap is nowhere)."""
    async with RelaySim(B_HOST, 0, trap=await closed_port_trap()) as b, \
               RelaySim(A_HOST, 0, trap=b.address) as a:

        def submit():
            with smtplib.SMTP(a.host, a.port, source_address=("127.0.0.5", 0), timeout=5) as client:
                client.ehlo("submitter.example")
                return client.sendmail("a@example.org", ["b@spamtrap.example"], MESSAGE)

        assert await asyncio.to_thread(submit) == {}
        assert await wait_all_idle(a, b, timeout=5, settle=SETTLE)
        assert a.accepted[0].peer == "127.0.0.5" and a.accepted[0].hops == 0
        assert b.accepted[0].peer == A_HOST and b.accepted[0].hops == 1
        top = RECEIVED_RE.match(b.accepted[0].data)
        assert top and top["helo"] == b"submitter.example" and top["ip"] == b"127.0.0.5"
        assert b.accepted[0].data.endswith(MESSAGE)


# --- pure helpers ---------------------------------------------------------------


def test_count_received_basics():
    assert count_received(b"") == 0
    assert count_received(b"Received: a\r\n\tReceived: not a field\r\nX: y\r\n\r\nReceived: body\r\n") == 1
    assert count_received(b"received : a\nRECEIVED:b\n") == 2
    assert count_received(b"Subject: x\r\nnot a header line\r\nReceived: x\r\n") == 0
    assert count_received(b"X-Received: a\r\nReceivedX: b\r\n") == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=40))
def test_count_received_prepending_adds_one_each(body, hops):
    received = b"Received: from h ([127.0.0.2])\r\n\tby x (RelaySim) with ESMTP id X; date\r\n"
    assert count_received(received * hops + body) == hops + count_received(body)
    assert count_received(received * hops + b"\r\n" + body) == hops


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_dot_stuffing_round_trip(body):
    normalized = normalize_crlf(body)
    stuffed = dot_stuff(normalized)
    # every line of the stuffed text that starts with a dot has one more dot
    unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in stuffed.split(b"\r\n"))
    assert unstuffed == normalized
    assert b"\r\n.\r\n" not in b"\r\n" + stuffed
