"""Loop analysis: chains, verdicts, fingerprints, live and from log files.

Live: loops through simulated relays on real sockets, read back from the
log the trap wrote (the live analysis's own events included). Offline:
`looper report` over files on disk (rotated, gzipped, two sensors).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
from pathlib import Path

import pytest

from looper.analysis.core import Analysis, ChainEnd
from looper.analysis.logs import analyse
from looper.analysis.report import build_report, render_text
from looper.cli import main
from tests.conftest import free_port
from looper.relaysim import RelaySim

HOP_LIMIT = 12
MESSAGE = (
    b"From: <spam@sender.test>\r\n"
    b"To: <user@spamtrap.test>\r\n"
    b"Subject: analysed loop\r\n"
    b"Message-ID: <{tag}@sender.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def message(tag: str) -> bytes:
    return MESSAGE.replace(b"{tag}", tag.encode())


async def loop_through(start_trap, relays: list[RelaySim], trap_options=None, inject=1):
    """Start the relays and a trap, inject `inject` messages into each."""
    for relay in relays:
        await relay.start()
    port = relays[0].port
    assert all(r.port == port for r in relays)
    trap = await start_trap(port, **(trap_options or {}))
    for relay in relays:
        relay.trap = (trap.host, trap.port)
    for n in range(inject):
        for relay in relays:
            await relay.inject("spam@sender.test", "user@spamtrap.test", message(f"{relay.host}-{n}"))
    return trap


async def settle(trap, relays):
    try:
        for relay in relays:
            assert await relay.wait_idle(30), relay
        await trap.quiet()
    finally:
        for relay in relays:
            await relay.stop()
    await trap.trap.stop()  # the live analysis reports what is still settling
    return trap.events.all()


def offline(records) -> Analysis:
    analysis = Analysis()
    for record in records:
        analysis.feed(record)
    analysis.finish()
    return analysis


def ended(records, **match):
    return [r for r in records if r["eventid"] == "looper.chain.ended" and all(r[k] == v for k, v in match.items())]


def verdicts(records) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for r in records:
        if r["eventid"] == "looper.relay.verdict":
            found.setdefault(r["relay_ip"], []).append(r["verdict"])
    return found


async def test_a_hop_limited_loop_is_an_open_relay_and_ends_at_its_limit(start_trap):
    relay = RelaySim("127.0.0.2", 0, trap=("127.0.0.1", 0), hop_limit=HOP_LIMIT)
    trap = await loop_through(start_trap, [relay])
    records = await settle(trap, [relay])

    assert verdicts(records) == {"127.0.0.2": ["open_relay"]}
    verdict = next(r for r in records if r["eventid"] == "looper.relay.verdict")
    first_pass = next(r for r in records if r["eventid"] == "looper.reflect.message")
    # Logged right after the pass that earned it, with that pass's session.
    assert verdict["session"] == first_pass["session"]
    assert records.index(verdict) > records.index(first_pass)
    [chain_end] = ended(records)
    assert chain_end["relay_ip"] == "127.0.0.2" and chain_end["chain"] == first_pass["chain"]
    assert (chain_end["passes"], chain_end["first_hops"], chain_end["last_hops"]) == (HOP_LIMIT + 1, 0, HOP_LIMIT)
    assert (chain_end["end"], chain_end["end_code"], chain_end["end_text"]) == (
        "hop_limit", 554, "5.4.0 Error: too many hops"
    )
    assert chain_end["end_inferred"] is False and chain_end["duration"] > 0

    # The same log read afterwards says the same, with the details.
    report = build_report(offline(records))
    [row] = report["relays"]
    assert (row["ip"], row["verdict"], row["passes"], row["chains"], row["hop_limit"]) == (
        "127.0.0.2", "open_relay", HOP_LIMIT + 1, 1, HOP_LIMIT
    )
    assert row["evidence"][0]["session"] == first_pass["session"]
    [chain] = report["chains"]
    assert (chain["gaps"], chain["repeats"], chain["accepted"]) == (0, 0, HOP_LIMIT)
    assert chain["sessions"] == HOP_LIMIT + 1  # a connection per pass
    assert report["hop_histogram"] == {str(HOP_LIMIT): 1}


async def test_a_relay_that_notices_its_own_name_is_loop_protected(start_trap):
    relay = RelaySim("127.0.0.2", 0, trap=("127.0.0.1", 0), notice_own_name=True)
    trap = await loop_through(start_trap, [relay])
    records = await settle(trap, [relay])

    [detected] = [r for r in records if r["eventid"] == "looper.reflect.self_detected"]
    assert (detected["name"], detected["where"]) == ("relay-127.0.0.2.sim", "ehlo_reply")
    quit_command = next(r for r in records if r["eventid"] == "looper.reflect.command" and r["verb"] == "QUIT")
    assert detected["session"] == quit_command["session"]
    assert verdicts(records) == {"127.0.0.2": ["loop_protected"]}
    assert ended(records) == []
    [row] = build_report(offline(records))["relays"]
    assert row["verdict"] == "loop_protected" and row["self_detected"] == 1
    assert "mask" in row["evidence"][0]["what"]


async def test_a_relay_that_refuses_to_relay(start_trap):
    relay = RelaySim("127.0.0.2", 0, trap=("127.0.0.1", 0), refuse_relay=True)
    trap = await loop_through(start_trap, [relay])
    records = await settle(trap, [relay])
    assert verdicts(records) == {"127.0.0.2": ["refuses_relay"]}
    [row] = build_report(offline(records))["relays"]
    assert "Relay access denied" in row["evidence"][0]["what"]


async def test_an_address_whose_port_25_is_closed_is_unreachable(start_trap):
    trap = await start_trap(free_port("127.0.0.5"))
    reader, writer = await asyncio.open_connection(trap.host, trap.port, local_addr=("127.0.0.5", 0))
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"421 ")  # dialback.on_failure: hangup
    writer.close()
    await trap.events.wait_for("looper.session.closed")
    await trap.trap.stop()
    records = trap.events.all()
    assert verdicts(records) == {"127.0.0.5": ["unreachable"]}
    [verdict] = [r for r in records if r["eventid"] == "looper.relay.verdict"]
    assert "refused" in verdict["evidence"]


async def test_interleaved_relays_and_chains_are_kept_apart_and_a_silent_chain_vanishes(start_trap):
    # Two relays, two messages each; the second relay stops delivering after
    # 3 passes (its queue "holds" the message): that chain falls silent.
    loud = RelaySim("127.0.0.2", 0, trap=("127.0.0.1", 0), hop_limit=HOP_LIMIT)
    await loud.start()
    silent = RelaySim("127.0.0.3", loud.port, trap=("127.0.0.1", 0), hop_limit=HOP_LIMIT, max_passes=3)
    trap = await loop_through(start_trap, [loud, silent], {"analysis": {"quiet_seconds": 0.5}}, inject=2)
    try:
        for relay in (loud, silent):
            assert await relay.wait_idle(30)
        await trap.events.wait_for("looper.chain.ended", count=4, timeout=10)
    finally:
        for relay in (loud, silent):
            await relay.stop()
    await trap.trap.stop()
    records = trap.events.all()
    assert verdicts(records) == {"127.0.0.2": ["open_relay"], "127.0.0.3": ["open_relay"]}
    loud_ends = ended(records, relay_ip="127.0.0.2")
    assert sorted((e["end"], e["passes"]) for e in loud_ends) == [("hop_limit", HOP_LIMIT + 1)] * 2
    silent_ends = ended(records, relay_ip="127.0.0.3")
    assert len(silent_ends) == 2 and {e["end"] for e in silent_ends} == {"vanished"}
    assert sum(e["passes"] for e in silent_ends) == 3
    assert {e["end_inferred"] for e in silent_ends} == {False}
    assert len({e["chain"] for e in ended(records)}) == 4


# -- offline: files on disk -------------------------------------------------------


def _lines(records, sensor: str) -> list[str]:
    return [json.dumps({**r, "sensor": sensor}) for r in records]


async def test_report_reads_rotated_gzipped_logs_of_two_sensors(start_trap, tmp_path, capsys):
    relay = RelaySim("127.0.0.2", 0, trap=("127.0.0.1", 0), hop_limit=HOP_LIMIT)
    trap = await loop_through(start_trap, [relay])
    records = [r for r in await settle(trap, [relay]) if not r["eventid"].startswith(("looper.relay.", "looper.chain."))]

    # Sensor one's log is rotated mid-loop, the older part gzipped; sensor
    # two saw the same relay an hour later (the same events, shifted).
    half = len(records) // 2
    one = tmp_path / "one"
    one.mkdir()
    with gzip.open(one / "events.jsonl.1.gz", "wt") as old:
        old.write("\n".join(_lines(records[:half], "one")) + "\n")
    (one / "events.jsonl").write_text("\n".join(_lines(records[half:], "one")) + "\nnot json\n")
    later = []
    for r in records:
        hour = int(r["timestamp"][11:13]) + 1
        later.append({**r, "timestamp": f"{r['timestamp'][:11]}{hour % 24:02d}{r['timestamp'][13:]}",
                      "session": "b" + r["session"][1:] if r["session"] else None})
    two = tmp_path / "two.jsonl"
    two.write_text("\n".join(_lines(later, "two")) + "\n")

    out = tmp_path / "report.json"
    paths = [str(one / "events.jsonl"), str(one / "events.jsonl.1.gz"), str(two)]
    assert main(["report", *paths, "--format", "json", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["input"]["sensors"] == ["one", "two"] and report["input"]["bad_lines"] == 1
    [row] = report["relays"]
    assert row["verdict"] == "open_relay" and row["sensors"] == ["one", "two"]
    assert row["passes"] == 2 * (HOP_LIMIT + 1) and row["chains"] == 1  # one message: one chain
    assert report["summary"]["chains"] == 1

    # Filters: one sensor; a time window; an address with no events.
    assert main(["report", *paths, "--sensor", "two", "--format", "json", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["relays"][0]["passes"] == HOP_LIMIT + 1
    first = report["input"]["first"]
    assert main(["report", *paths, "--until", first, "--format", "json", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["input"]["events"] == 1
    assert main(["report", *paths, "--ip", "192.0.2.1", "--format", "json", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["relays"] == []

    # Text: the tables a person reads.
    assert main(["report", *paths]) == 0
    text = capsys.readouterr().out
    assert "127.0.0.2  open_relay" in text and "hop_limit" in text and "554 5.4.0 Error: too many hops" in text


def test_report_without_logs_says_where_it_looked(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"log: {{dir: {tmp_path / 'nothing'}}}\n")
    assert main(["report", "-c", str(config)]) == 2
    assert "no event log in" in capsys.readouterr().err


def test_report_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent.jsonl" in err


# -- the core, from made-up event streams --------------------------------------------

SESSION_FIELDS = {"sensor": "s", "protocol": "smtp", "src_port": 1000, "dst_ip": "192.0.2.1", "dst_port": 25}


class Stream:
    """Events as the trap would log them, at made-up times."""

    def __init__(self) -> None:
        self.now = 1_790_000_000.0
        self.records: list[dict] = []
        self.serial = 0

    def at(self, seconds: float) -> None:
        self.now = seconds

    def event(self, session: str, ip: str, eventid: str, **fields) -> dict:
        from looper.analysis.timestamps import format_timestamp

        self.now += 0.001
        record = {"timestamp": format_timestamp(self.now), "eventid": eventid, "session": session,
                  "src_ip": ip, **SESSION_FIELDS, **fields}
        self.records.append(record)
        return record

    def session(self, ip: str, greeting: str, passes: list[tuple[int, int, str]], chain: str = "c1") -> None:
        self.serial += 1
        sid = f"{self.serial:012x}"
        self.event(sid, ip, "looper.session.connect")
        self.event(sid, ip, "looper.dialback.ok", target=f"{ip}:25", connect_ms=0.1)
        self.event(sid, ip, "looper.reflect.greeting", code=220, text=greeting, pregreet_bytes=0)
        for hops, code, reply in passes:
            self.event(sid, ip, "looper.reflect.mail", address="a@b.test", params=[], code=250, reply="OK")
            self.event(sid, ip, "looper.reflect.message", chain=chain, received_hops=hops, code=code, reply=reply,
                       complete=True, size=100, sha256="0" * 64, mail_from="a@b.test", rcpt_to=["u@t.test"],
                       transport="data", headers_truncated=False, message_id="<m@b.test>", subject="s")
        self.event(sid, ip, "looper.session.closed", mode="reflect", reason="closed", duration=0.1, bytes_in=1,
                   bytes_out=1)


def test_exim_falling_silent_at_30_hops_is_an_inferred_hop_limit():
    stream = Stream()
    for hops in range(1, 31):
        stream.session("203.0.113.5", "mx.example ESMTP Exim 4.96 Mon, 30 Nov 2026 10:00:00 +0000",
                       [(hops, 250, "OK id=1abc")])
    analysis = Analysis(quiet_seconds=600)
    for record in stream.records:
        analysis.feed(record)
    assert analysis.advance(stream.now + 599) == []
    [finding] = [f for f in analysis.advance(stream.now + 601 + 5) if f.eventid == "looper.chain.ended"]
    assert finding.fields["end"] == "hop_limit" and finding.fields["end_inferred"] is True
    assert finding.fields["last_hops"] == 30 and "exim" in finding.fields["end_text"]
    relay = analysis.relays["203.0.113.5"]
    assert relay.fingerprint().family == "exim" and relay.fingerprint().version == "4.96"
    assert relay.hop_limit == 30


def test_a_silent_chain_short_of_any_known_limit_vanished():
    stream = Stream()
    for hops in range(1, 8):
        stream.session("203.0.113.5", "mx.example ESMTP Exim 4.96", [(hops, 250, "OK id=1abc")])
    analysis = offline(stream.records)
    [chain] = analysis.chains()
    assert chain.end is None  # within its quiet time at the end of the input: ongoing
    assert build_report(analysis)["chains"][0]["end"] == "ongoing"
    found = analysis.advance(stream.now + 601)
    assert [f.fields["end"] for f in found] == ["vanished"]


def test_passes_logged_out_of_hop_order_still_count_in_the_ended_chain():
    """Postfix commits a pass before its 250: the refused pass can be logged
    before the accepted one just below it."""
    stream = Stream()
    for hops in range(1, 49):
        stream.session("203.0.113.7", "mx ESMTP Postfix (Debian/GNU)", [(hops, 250, "2.0.0 Ok: queued as X")])
    stream.session("203.0.113.7", "mx ESMTP Postfix (Debian/GNU)", [(50, 554, "5.4.0 Error: too many hops")])
    stream.session("203.0.113.7", "mx ESMTP Postfix (Debian/GNU)", [(49, 250, "2.0.0 Ok: queued as Y")])
    analysis = Analysis()
    found = []
    for record in stream.records:
        found += analysis.feed(record)
    found += analysis.finish()
    [end] = [f.fields for f in found if f.eventid == "looper.chain.ended"]
    assert (end["passes"], end["last_hops"], end["end"]) == (50, 50, "hop_limit")
    [chain] = analysis.chains()
    assert (chain.gaps, chain.repeats) == (0, 0)
    assert analysis.relays["203.0.113.7"].fingerprint().family == "postfix"


def test_a_cut_pass_in_a_capped_session_ends_the_chain_as_capped():
    stream = Stream()
    stream.session("203.0.113.9", "mx ESMTP Postfix", [(1, 250, "2.0.0 Ok")])
    stream.event("00000000ffff", "203.0.113.9", "looper.session.connect")
    stream.event("00000000ffff", "203.0.113.9", "looper.dialback.ok", target="x", connect_ms=1.0)
    stream.event("00000000ffff", "203.0.113.9", "looper.reflect.message", chain="c1", received_hops=2, code=None,
                 reply=None, complete=False, size=5, sha256="0" * 64)
    stream.event("00000000ffff", "203.0.113.9", "looper.session.closed", mode="reflect", reason="max_bytes",
                 duration=1.0, bytes_in=1, bytes_out=1)
    [chain] = offline(stream.records).chains()
    assert chain.end is ChainEnd.CAPPED and "max_bytes" in chain.end_text


def test_emulated_side_credentials_and_captured_mail():
    stream = Stream()
    for n in range(3):
        stream.event(f"e{n}", "198.51.100.4", "looper.session.connect")
        stream.event(f"e{n}", "198.51.100.4", "looper.dialback.failed", target="198.51.100.4:25", reason="refused",
                     detail="x")
        stream.event(f"e{n}", "198.51.100.4", "looper.smtp.helo", verb="EHLO", name="spambot", claims_our_name=False,
                     reserved_name=False)
        stream.event(f"e{n}", "198.51.100.4", "looper.login.failed", mechanism="PLAIN", username="admin",
                     password="admin", reason="bad credentials")
        stream.event(f"e{n}", "198.51.100.4", "looper.smtp.message", mail_from="x@spam.test",
                     rcpt_to=["victim@example.org"], size=10, subject="Win", username=None)
        stream.event(f"e{n}", "198.51.100.4", "looper.session.closed", mode="emulate", reason="closed_by_client",
                     duration=1.0, bytes_in=1, bytes_out=1)
    stream.event("e3", "198.51.100.4", "looper.login.failed", mechanism="DIGEST-MD5", username="root",
                 digest="d388dad90d4bbd760a152321f2143af7", realm="mx", nonce="n", cnonce="c", nc="00000001",
                 qop="auth", digest_uri="smtp/mx", reason="bad credentials")
    report = build_report(offline(stream.records))
    assert report["relays"][0]["verdict"] == "unreachable"
    assert report["credentials"]["smtp"]["top"] == [
        {"username": "admin", "password": "admin", "succeeded": False, "count": 3},
        {"username": "root", "password": "digest-md5:d388dad90d4bbd760a152321f2143af7", "succeeded": False, "count": 1},
    ]
    captured = report["captured"]
    assert captured["messages"] == 3 and captured["domains"] == [{"value": "example.org", "count": 3}]
    assert captured["helo_names"] == [{"value": "spambot", "count": 3}]
    assert report["emulated_activity"][0]["ip"] == "198.51.100.4"
    assert "admin" in render_text(report)


# -- fingerprints and loop ends, from the real MTAs (tests/data/mta/) ---------------

MTA_DATA = Path(__file__).parent / "data" / "mta"


def _text(line: str) -> str:
    return line[4:]  # "250-PIPELINING" -> "PIPELINING"


@pytest.mark.parametrize("family", ["postfix", "exim", "sendmail", "opensmtpd"])
def test_each_real_mta_is_fingerprinted_and_its_loop_end_read(family):
    """The relay as the trap would see it: its greeting, EHLO reply and
    relay refusal as recorded from Debian's package, then a loop from 1
    Received: header up to the recorded end (a reply, or silence)."""
    fixture = json.loads((MTA_DATA / f"{family}.json").read_text())
    end = fixture["loop_end"]
    stream = Stream()
    ip = "203.0.113.20"
    greeting = _text(fixture["greeting"])
    ehlo = [_text(line) for line in fixture["ehlo_reply"]]
    for hops in range(1, end["received_hops"] + 1):
        last = hops == end["received_hops"]
        refused = last and end["how"] == "refused"
        stream.serial += 1
        sid = f"{stream.serial:012x}"
        stream.event(sid, ip, "looper.reflect.greeting", code=220, text=greeting, pregreet_bytes=0)
        stream.event(sid, ip, "looper.reflect.helo", verb="EHLO", name="relay.example", code=250, reply="\n".join(ehlo))
        stream.event(sid, ip, "looper.reflect.ehlo_reply", code=250, name=ehlo[0].split()[0], extensions=ehlo[1:],
                     starttls_stripped=False, masked_as="trap.example")
        if hops == 1:
            code, reply = fixture["relay_denied"].split(" ", 1)
            stream.event(sid, ip, "looper.reflect.rcpt", address="rcpt@example.net", params=[], code=int(code),
                         reply=reply)
        stream.event(sid, ip, "looper.reflect.message", chain="c1", received_hops=hops, complete=True, size=100,
                     code=end["code"] if refused else 250, reply=end["text"] if refused else "Ok")
        stream.event(sid, ip, "looper.session.closed", mode="reflect", reason="closed", duration=0.1, bytes_in=1,
                     bytes_out=1)
    analysis = offline(stream.records)
    found = analysis.relays[ip].fingerprint()
    assert found.family == family, found
    if family in ("exim", "sendmail"):
        assert found.version == fixture["version"]
    if family in ("postfix", "sendmail"):
        assert found.distribution == "Debian"
    [chain] = analysis.chains()
    if end["how"] == "refused":
        assert (chain.end, chain.end_code, chain.end_inferred) == (ChainEnd.HOP_LIMIT, end["code"], False)
    else:  # silent: an accepted last pass, then nothing, until the quiet time is over
        assert chain.end is None
        analysis.advance(analysis.last + analysis.quiet_seconds + 10)
        assert (chain.end, chain.end_inferred) == (ChainEnd.HOP_LIMIT, True)
    assert chain.end_hops == end["received_hops"]


def test_a_client_that_quits_on_its_own_name_in_the_greeting_is_self_detected():
    """The name it quit on is one it has used as its own EHLO name before:
    a relay's client that checks the greeting (no EHLO at all)."""
    stream = Stream()
    ip = "203.0.113.30"
    stream.session(ip, "mx.relay.example ESMTP Postfix", [(1, 250, "2.0.0 Ok")])
    stream.event(stream.records[-2]["session"], ip, "looper.reflect.helo", verb="EHLO", name="mx.relay.example",
                 code=250, reply="trap.example")
    for sid, greeting in (("0000000000aa", "other.example ESMTP"), ("0000000000bb", "mx.relay.example ESMTP")):
        stream.event(sid, ip, "looper.reflect.greeting", code=220, text=greeting, pregreet_bytes=0)
        stream.event(sid, ip, "looper.session.closed", mode="reflect", reason="closed", duration=0.1, bytes_in=1,
                     bytes_out=1)
    analysis = Analysis()
    found = [f for record in stream.records for f in analysis.feed(record)]
    detected = [f for f in found if f.eventid == "looper.reflect.self_detected"]
    assert [(f.fields, f.about["session"]) for f in detected] == [
        ({"name": "mx.relay.example", "where": "greeting"}, "0000000000bb")
    ]
    assert analysis.relays[ip].verdict == "open_relay"  # what it proved before stands
    assert analysis.relays[ip].self_detected == 1


def test_a_loop_that_goes_on_through_tls_or_hits_the_dialback_budget_is_over_for_the_trap():
    stream = Stream()
    for ip, chain in (("203.0.113.41", "c-tls"), ("203.0.113.42", "c-budget")):
        stream.session(ip, "mx ESMTP Postfix", [(1, 250, "2.0.0 Ok")], chain=chain)
    stream.event("0000000000cc", "203.0.113.41", "looper.reflect.greeting", code=220, text="mx ESMTP Postfix",
                 pregreet_bytes=0)
    stream.event("0000000000cc", "203.0.113.41", "looper.reflect.tls")
    stream.event("0000000000dd", "203.0.113.42", "looper.dialback.failed", target="203.0.113.42:25",
                 reason="budget", detail="60 dial-backs within the hour")
    analysis = Analysis()
    found = [f for record in stream.records for f in analysis.feed(record)] + analysis.finish()
    ends = {f.fields["chain"]: (f.fields["end"], f.fields["passes"]) for f in found if f.eventid == "looper.chain.ended"}
    assert ends == {"c-tls": ("tls_opaque", 1), "c-budget": ("capped", 1)}
    assert analysis.relays["203.0.113.42"].verdict == "open_relay"  # a budget says nothing of the relay


def test_report_says_which_filter_is_wrong(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    log.write_text("")
    assert main(["report", str(log), "--since", "yesterday"]) == 2
    assert "'yesterday' is not a date or time" in capsys.readouterr().err
    assert main(["report", str(log), "--ip", "300.1.2.3"]) == 2
    assert "300.1.2.3" in capsys.readouterr().err
