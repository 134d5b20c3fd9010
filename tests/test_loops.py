"""Loops through simulated open relays, end to end on real sockets.

The relay (tests/relaysim.py) listens on 127.0.0.2 at the dial-back port and
delivers what it accepts to the trap on 127.0.0.1, from 127.0.0.2. The trap
dials 127.0.0.2 back and splices: the relay delivers to itself, one
Received: header more each pass, until its hop limit refuses the message.
"""

from __future__ import annotations

import base64
import pytest

from looper.net import hashing
from looper.relaysim import RelaySim

RELAY = "127.0.0.2"
HOP_LIMIT = 30

# As the relay's first client handed it over: one Received: already on top.
MESSAGE = (
    b"Received: from spammer.example ([192.0.2.9])\r\n"
    b"\tby relay-127.0.0.2.sim with ESMTP id 0000000001; Sun, 22 Nov 2026 09:00:00 +0000\r\n"
    b"From: <spam@sender.test>\r\n"
    b"To: <user@spamtrap.test>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from the loop\r\n"
    b"Message-ID: <loop-1@sender.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".A line that starts with a dot.\r\n"
    b"\r\n"
)


async def run_loop(start_trap, trap_options=None, message=MESSAGE, **relay_options):
    """Inject `message` into a relay and let it loop through the trap."""
    port = 0
    relay = RelaySim(RELAY, port, trap=("127.0.0.1", 0), hop_limit=HOP_LIMIT, **relay_options)
    await relay.start()
    try:
        trap = await start_trap(relay.port, **(trap_options or {}))
        relay.trap = (trap.host, trap.port)
        await relay.inject("spam@sender.test", "user@spamtrap.test", message)
        assert await relay.wait_idle(30), relay
        await trap.quiet()
    finally:
        await relay.stop()
    await trap.quiet()
    assert relay.errors == [], relay.errors
    return trap, relay


def assert_full_loop(trap, relay):
    messages = trap.events.of("looper.reflect.message")
    assert [m["received_hops"] for m in messages] == list(range(1, HOP_LIMIT + 1))
    assert [m["code"] for m in messages] == [250] * (HOP_LIMIT - 1) + [554]
    assert messages[-1]["reply"] == "5.4.0 Error: too many hops"
    assert len({m["chain"] for m in messages}) == 1
    assert {m["message_id"] for m in messages} == {"<loop-1@sender.test>"}
    assert {m["subject"] for m in messages} == {"Grüße from the loop"}
    assert {m["mail_from"] for m in messages} == {"spam@sender.test"}
    assert {tuple(m["rcpt_to"]) for m in messages} == {("user@spamtrap.test",)}
    assert all(m["complete"] for m in messages)
    # Each pass is the relay's own message plus one Received: header.
    assert [m["size"] for m in messages] == sorted(m["size"] for m in messages)
    assert len(relay.accepted) == HOP_LIMIT - 1
    assert [r[0] for r in relay.refused] == [554]
    closed = trap.events.of("looper.session.closed")
    assert closed and {c["mode"] for c in closed} == {"reflect"}
    assert len(trap.events.of("looper.session.connect")) == len(closed)
    assert trap.events.of("looper.reflect.unparsed") == []


async def test_loop_until_the_hop_limit(start_trap):
    trap, relay = await run_loop(start_trap)
    assert_full_loop(trap, relay)
    assert len(trap.events.of("looper.session.closed")) == HOP_LIMIT  # a connection per pass
    greetings = trap.events.of("looper.reflect.greeting")
    assert {g["text"] for g in greetings} == {"relay-127.0.0.2.sim ESMTP RelaySim"}
    helos = trap.events.of("looper.reflect.helo")
    assert {(h["verb"], h["name"], h["code"]) for h in helos} == {("EHLO", "relay-127.0.0.2.sim", 250)}
    rcpts = trap.events.of("looper.reflect.rcpt")
    assert len(rcpts) == HOP_LIMIT and {(r["address"], r["code"]) for r in rcpts} == {("user@spamtrap.test", 250)}


async def test_loop_over_one_reused_connection(start_trap):
    trap, relay = await run_loop(start_trap, reuse_connection=True)
    assert_full_loop(trap, relay)
    assert relay.client_connections == 1
    assert len(trap.events.of("looper.session.closed")) == 1
    assert len({m["session"] for m in trap.events.of("looper.reflect.message")}) == 1


async def test_loop_without_pipelining(start_trap):
    trap, relay = await run_loop(start_trap, pipelining=False)
    assert_full_loop(trap, relay)


async def test_loop_with_bdat(start_trap):
    trap, relay = await run_loop(start_trap, chunking=True)
    assert_full_loop(trap, relay)
    assert {m["transport"] for m in trap.events.of("looper.reflect.message")} == {"bdat"}


async def test_exim_style_pipelined_quit_and_half_close_loses_nothing(start_trap):
    """MAIL, RCPT, BDAT LAST and QUIT in one write, then a half-close: every
    pass must still get its 250, else the relay re-queues (duplicates)."""
    trap, relay = await run_loop(start_trap, chunking=True, pipeline_quit_and_half_close=True)
    assert_full_loop(trap, relay)
    assert relay.requeued == 0
    assert [code for code, _ in relay.delivery_results] == [250] * (HOP_LIMIT - 1) + [554]
    assert {c["reason"] for c in trap.events.of("looper.session.closed")} == {"closed"}


async def test_a_relay_that_notices_its_own_name_stops_at_once(start_trap):
    trap, relay = await run_loop(start_trap, notice_own_name=True)
    assert relay.loops_detected == 1
    assert trap.events.of("looper.reflect.message") == []
    assert trap.events.of("looper.reflect.mail") == []
    assert len(trap.events.of("looper.reflect.greeting")) == 1
    assert trap.events.of("looper.reflect.helo")[0]["name"] == "relay-127.0.0.2.sim"
    reply = trap.events.of("looper.reflect.ehlo_reply")[0]
    assert reply["name"] == "relay-127.0.0.2.sim" and reply["masked_as"] is None
    assert [c["verb"] for c in trap.events.of("looper.reflect.command")] == ["QUIT"]


async def test_masking_the_ehlo_name_lets_it_loop_to_its_limit(start_trap):
    trap, relay = await run_loop(start_trap, {"splice": {"ehlo_name": "mask"}}, notice_own_name=True)
    assert relay.loops_detected == 0
    assert_full_loop(trap, relay)
    replies = trap.events.of("looper.reflect.ehlo_reply")
    assert {(r["name"], r["masked_as"]) for r in replies} == {("relay-127.0.0.2.sim", "trap.looper.test")}


async def test_refused_relaying(start_trap):
    trap, relay = await run_loop(start_trap, refuse_relay=True)
    rcpt = trap.events.of("looper.reflect.rcpt")
    assert [(r["address"], r["code"]) for r in rcpt] == [("user@spamtrap.test", 554)]
    assert rcpt[0]["reply"] == "5.7.1 <user@spamtrap.test>: Relay access denied"
    assert trap.events.of("looper.reflect.message") == []
    assert relay.accepted == []


@pytest.mark.parametrize("strip", [True, False])
async def test_starttls_is_stripped_from_the_ehlo_reply(start_trap, strip):
    trap, relay = await run_loop(start_trap, {"splice": {"strip_starttls": strip}}, starttls=True)
    server_saw = [line for line in relay.transcript if "STARTTLS" in line]
    client_saw = [line for line in relay.client_transcript if "STARTTLS" in line]
    assert server_saw  # the relay's server offered it on every pass
    assert bool(client_saw) is not strip  # its client saw it only without the strip
    replies = trap.events.of("looper.reflect.ehlo_reply")
    assert {r["starttls_stripped"] for r in replies} == {strip}
    assert all("STARTTLS" in r["extensions"] for r in replies)
    assert_full_loop(trap, relay)


# -- reflected mail kept as evidence (capture.reflected) -----------------------------

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402


def kept_files(trap) -> dict[str, bytes]:
    folder = Path(trap.trap.config.log.dir) / "messages"
    return {p.name: p.read_bytes() for p in folder.glob("*.eml")} if folder.exists() else {}


@pytest.mark.parametrize("mode", ["first", "all", "none"])
async def test_reflected_mail_is_kept_as_evidence(start_trap, mode):
    trap, relay = await run_loop(start_trap, {"capture": {"reflected": mode}})
    await trap.trap.stop()  # the writes are done
    messages = trap.events.of("looper.reflect.message")
    assert len(messages) == HOP_LIMIT
    files = kept_files(trap)
    paths = [m["path"] for m in messages]
    if mode == "none":
        assert paths == [None] * HOP_LIMIT and files == {}
        return
    kept = [m for m in messages if m["path"] is not None]
    if mode == "first":
        assert kept == [messages[0]] and kept[0]["received_hops"] == 1
    else:
        assert kept == messages
    for m in kept:
        content = Path(m["path"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == m["sha256"] and len(content) == m["size"]
        assert Path(m["path"]).name == f"{m['sha256']}.eml"
    assert len(files) == len(kept)
    # The first pass is the message as the relay's own client sent it: ours
    # plus the relay's Received: header, dot-unstuffed.
    first = Path(kept[0]["path"]).read_bytes()
    assert first.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1]) and b"Message-ID: <loop-1@sender.test>" in first


async def test_reflected_mail_is_not_kept_past_the_message_memory(start_trap):
    trap, relay = await run_loop(start_trap, {"limits": {"message_memory_bytes": 200}})
    await trap.trap.stop()
    assert [m["path"] for m in trap.events.of("looper.reflect.message")] == [None] * HOP_LIMIT
    assert kept_files(trap) == {}
    assert trap.trap.context.message_memory.held_bytes == 0  # everything held was given back


async def test_reflected_mail_that_cannot_be_kept_is_logged_and_the_loop_goes_on(start_trap, tmp_path):
    relay = RelaySim(RELAY, 0, trap=("127.0.0.1", 0), hop_limit=HOP_LIMIT)
    await relay.start()
    try:
        trap = await start_trap(relay.port)
        messages = Path(trap.trap.config.log.dir) / "messages"
        messages.rmdir()
        messages.write_text("not a folder")  # every write into it now fails
        relay.trap = (trap.host, trap.port)
        await relay.inject("spam@sender.test", "user@spamtrap.test", MESSAGE)
        assert await relay.wait_idle(30)
        await trap.quiet()
    finally:
        await relay.stop()
    [failed] = await trap.events.wait_for("looper.smtp.store_failed")
    first = trap.events.of("looper.reflect.message")[0]
    assert failed["sha256"] == first["sha256"] and failed["session"] == first["session"] and failed["reason"]
    assert_full_loop(trap, relay)  # the splice never waited for the store


async def test_a_big_message_is_hashed_right_off_the_forwarding_thread(start_trap, monkeypatch):
    """Reads of 64 KiB and more are hashed on a worker thread (looper/net/hashing.py):
    every pass's sha256 and chain (no Message-ID: the chain hashes the content
    too) must still be the content's."""
    body = base64.encodebytes(bytes(range(256)) * 6000).replace(b"\n", b"\r\n")  # ~2 MiB of lines
    message = MESSAGE.replace(b"Message-ID: <loop-1@sender.test>\r\n", b"").split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
    offloaded = []
    submit = hashing._worker.submit
    monkeypatch.setattr(hashing._worker, "submit", lambda owner, batch: (offloaded.append(len(batch)), submit(owner, batch)))
    trap, relay = await run_loop(start_trap, {"capture": {"reflected": "all"}}, message=message)
    await trap.trap.stop()
    assert sum(offloaded) > HOP_LIMIT * len(body)  # most of it went to the worker, twice (sha256 and chain)
    messages = trap.events.of("looper.reflect.message")
    assert len(messages) == HOP_LIMIT and len({m["chain"] for m in messages}) == 1
    for m in messages:
        content = Path(m["path"]).read_bytes()
        assert len(content) == m["size"] > len(body) and content.endswith(body)
        assert hashlib.sha256(content).hexdigest() == m["sha256"]
