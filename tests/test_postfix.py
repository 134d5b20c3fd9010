"""A real open relay: Debian's Postfix on 127.0.0.2:25, looped for real.

Postfix relays spamtrap.test to the trap on 127.0.0.1:25; the trap dials
127.0.0.2:25 back, so Postfix's delivery agent talks to Postfix's own
smtpd. Debian's TLS defaults are on: its smtpd offers STARTTLS and its
client uses it whenever offered, which the trap's strip prevents.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from looper.analysis.logs import analyse
from looper.analysis.report import build_report
from tests.postfix import PrivatePostfix, postfix_available

if not postfix_available():
    if os.environ.get("LOOPER_REQUIRE_POSTFIX") == "1":
        raise RuntimeError("LOOPER_REQUIRE_POSTFIX=1 but Postfix (or root, or iproute2) is missing")
    pytest.skip("needs root and Debian's Postfix (sudo make test-tools)", allow_module_level=True)

MESSAGE = (
    b"From: <spam@sender.test>\r\n"
    b"To: <user@spamtrap.test>\r\n"
    b"Subject: real relay loop\r\n"
    b"Message-ID: <postfix-loop@sender.test>\r\n"
    b"\r\n"
    b"Looping through a real Postfix.\r\n"
)


@pytest.fixture
async def postfix(tmp_path):
    instance = PrivatePostfix(tmp_path, trap_host="127.0.0.1", trap_port=25)
    await asyncio.to_thread(instance.start)
    try:
        yield instance
    finally:
        await asyncio.to_thread(instance.stop)


async def test_postfix_notices_its_own_name_and_gives_up(start_trap, postfix):
    trap = await start_trap(25, listen_port=25)
    reply = await asyncio.to_thread(postfix.inject, "spam@sender.test", "user@spamtrap.test", MESSAGE)
    assert reply[0] == 250
    await asyncio.to_thread(postfix.wait_log, r"loops back to myself", 30)
    await trap.events.wait_for("looper.session.closed")

    greeting = trap.events.of("looper.reflect.greeting")[0]
    assert greeting["text"] == "relay.looper.test ESMTP Postfix (Debian/GNU)"
    assert greeting["src_ip"] == "127.0.0.2"
    assert [(h["verb"], h["name"]) for h in trap.events.of("looper.reflect.helo")] == [("EHLO", "relay.looper.test")]
    ehlo = trap.events.of("looper.reflect.ehlo_reply")[0]
    assert ehlo["name"] == "relay.looper.test"
    assert "STARTTLS" in ehlo["extensions"] and ehlo["starttls_stripped"] is True
    assert trap.events.of("looper.reflect.mail") == []  # it gave up before MAIL
    assert trap.events.of("looper.reflect.tls") == [] and trap.events.of("looper.reflect.unparsed") == []
    assert trap.events.of("looper.dialback.ok")[0]["target"] == "127.0.0.2:25"

    # The live analysis says it in so many words.
    [detected] = await trap.events.wait_for("looper.reflect.self_detected")
    assert (detected["name"], detected["where"]) == ("relay.looper.test", "ehlo_reply")
    [verdict] = trap.events.of("looper.relay.verdict")
    assert (verdict["relay_ip"], verdict["verdict"]) == ("127.0.0.2", "loop_protected")
    assert "mask" in verdict["evidence"]


async def test_masked_name_loops_postfix_to_its_hop_limit(start_trap, postfix):
    trap = await start_trap(25, listen_port=25, splice={"ehlo_name": "mask"})
    await asyncio.to_thread(postfix.inject, "spam@sender.test", "user@spamtrap.test", MESSAGE)
    await asyncio.to_thread(postfix.wait_log, r"too many hops", 60)
    refused = await trap.events.wait_for("looper.reflect.message", code=554, timeout=30)
    assert refused, "the trap never saw Postfix refuse the message"

    # Postfix's smtpd added one Received: when it took the message from us:
    # each pass one hop more, each hop once. They are logged at the reply,
    # and a pass can be answered after the next ones: Postfix's cleanup
    # commits the message before its smtpd writes the 250, and its queue
    # manager may deliver the next pass over another connection at once.
    messages = sorted(trap.events.of("looper.reflect.message"), key=lambda m: m["received_hops"])
    hops = [m["received_hops"] for m in messages]
    assert hops == list(range(1, len(hops) + 1)), [(m["received_hops"], m["session"], m["code"]) for m in messages]
    assert len(hops) >= 45  # hopcount_limit is 50
    assert [m["code"] for m in messages] == [250] * (len(hops) - 1) + [554]
    assert messages[-1]["reply"] == "5.4.0 Error: too many hops"
    assert len({m["chain"] for m in messages}) == 1
    assert {m["message_id"] for m in messages} == {"<postfix-loop@sender.test>"}
    # Every pass was readable although Postfix uses TLS whenever offered.
    assert trap.events.of("looper.reflect.tls") == [] and trap.events.of("looper.reflect.unparsed") == []
    replies = trap.events.of("looper.reflect.ehlo_reply")
    assert {(r["name"], r["masked_as"], r["starttls_stripped"]) for r in replies} == {
        ("relay.looper.test", "trap.looper.test", True)
    }
    # The greeting was masked too: Postfix's own log never says it met itself.
    greetings = trap.events.of("looper.reflect.greeting")
    assert {(g["text"].split()[0], g["masked_as"]) for g in greetings} == {("relay.looper.test", "trap.looper.test")}
    assert not [line for line in postfix.log_lines() if "greeted me with my own hostname" in line]

    # The live analysis: an open relay, whose loop ended at Postfix's limit.
    [verdict] = trap.events.of("looper.relay.verdict")
    assert (verdict["relay_ip"], verdict["verdict"]) == ("127.0.0.2", "open_relay")
    [ended] = await trap.events.wait_for("looper.chain.ended", timeout=15)
    assert (ended["end"], ended["end_code"], ended["end_text"]) == ("hop_limit", 554, "5.4.0 Error: too many hops")
    assert (ended["passes"], ended["first_hops"], ended["last_hops"]) == (len(hops), 1, hops[-1])
    assert ended["chain"] == messages[0]["chain"] and ended["end_inferred"] is False
    # And the report, from the log: Postfix, fingerprinted from its own words.
    report = build_report(analyse([str(trap.events.path)], quiet_seconds=600)[0])
    [relay] = report["relays"]
    assert (relay["verdict"], relay["hop_limit"], relay["mta"]["family"]) == ("open_relay", hops[-1], "postfix")
    assert relay["mta"]["distribution"] == "Debian"
