"""The analysis core never raises, whatever a log holds, and its memory
follows relays and open chains, not events."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looper.analysis import core
from looper.analysis.core import Analysis
from looper.analysis.logs import LogError, read_events
from looper.analysis.report import build_report, render_text
from looper.events import COMMON_FIELDS, EVENT_FIELDS

IDS = sorted(EVENT_FIELDS)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                   st.text(max_size=30), st.sampled_from(["250", "554", "ehlo_reply", "2026-12-01T00:00:00Z"]))
value = st.one_of(scalar, st.lists(scalar, max_size=4), st.dictionaries(st.text(max_size=5), scalar, max_size=3))
timestamp = st.builds(
    lambda day, second, micro: f"2026-12-{day:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
                               f".{micro:06d}Z",
    st.integers(1, 28), st.integers(0, 86399), st.integers(0, 999999),
)


@st.composite
def events(draw):
    eventid = draw(st.sampled_from(IDS))
    record = {"timestamp": draw(st.one_of(timestamp, value)), "eventid": eventid,
              "session": draw(st.sampled_from(["a" * 12, "b" * 12, "c" * 12, None])),
              "src_ip": draw(st.sampled_from(["203.0.113.1", "203.0.113.2", None, "x"]))}
    for name in list(COMMON_FIELDS)[4:]:
        if draw(st.booleans()):
            record[name] = draw(value)
    for name, kind in EVENT_FIELDS[eventid].items():
        if draw(st.integers(0, 9)) == 0:
            continue  # a field missing
        if name == "received_hops":
            record[name] = draw(st.one_of(st.integers(-5, 5000), value))
        elif name == "chain":
            record[name] = draw(st.one_of(st.sampled_from(["c1", "c2"]), value))
        elif name == "code":
            record[name] = draw(st.one_of(st.sampled_from([250, 421, 554, None]), value))
        elif name == "reply":
            record[name] = draw(st.one_of(st.sampled_from(["5.4.0 Error: too many hops", "loops back to myself"]),
                                          value))
        else:
            record[name] = draw(value)
    return record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), max_size=60), st.floats(0, 1e6))
def test_any_events_in_any_order_never_raise_and_report(records, later):
    analysis = Analysis(quiet_seconds=5)
    for record in records:
        analysis.feed(record)
    analysis.advance(analysis._now + later)
    analysis.finish()
    report = build_report(analysis)
    json.dumps(report)  # the document is plain data
    render_text(report)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_any_bytes_in_a_log_file_are_skipped_or_read(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("log") / "events.jsonl"
    data = b"\n".join(lines)
    path.write_bytes(data)
    analysis = Analysis()
    try:
        for record in read_events([str(path)], wanted=analysis.wanted):
            analysis.feed(record)
    except LogError as err:
        # Only what starts as gzip is read as gzip: a damaged one is named, not guessed at.
        assert data.startswith(b"\x1f\x8b") and str(path) in str(err)


def test_memory_follows_open_sessions_and_relays_not_events(monkeypatch):
    """A million-event stream of sessions that never close and chains from
    a few relays: what the core holds stays bounded."""
    monkeypatch.setattr(core, "MAX_OPEN_SESSIONS", 1000)
    analysis = Analysis(quiet_seconds=60, keep_ended=100)
    for n in range(20_000):
        second = n // 10
        stamp = f"2026-12-01T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}.{n % 10:06d}Z"
        session, ip = f"{n:012x}", f"203.0.113.{n % 7}"
        analysis.feed({"timestamp": stamp, "eventid": "looper.session.connect", "session": session, "src_ip": ip})
        analysis.feed({"timestamp": stamp, "eventid": "looper.reflect.message", "session": session, "src_ip": ip,
                       "chain": f"chain-{n // 5}", "received_hops": n % 5, "code": 250, "complete": True,
                       "size": 10, "reply": f"2.0.0 Ok: queued as {n}"})
        analysis.feed({"timestamp": stamp, "eventid": "looper.login.failed", "session": session, "src_ip": ip,
                       "username": f"user{n}", "password": f"pw{n}", "mechanism": "PLAIN"})
    assert len(analysis.sessions) <= 1000
    assert len(analysis.relays) == 7
    assert len(analysis.ended_chains) <= 100
    assert len(analysis.open_chains) < 2 * 60 * 10 / 5 + 10  # those within the quiet time
    assert all(len(r.facts.replies) <= 24 and len(r.evidence) <= 6 for r in analysis.relays.values())
    assert len(analysis.credentials["smtp"]) <= 2 * analysis.credentials["smtp"].keep


def test_an_event_without_a_client_address_makes_no_relay():
    """Found by hypothesis: a report sorted relays by an address of None."""
    analysis = Analysis()
    for ip in (None, "203.0.113.1"):
        analysis.feed({"timestamp": "2026-12-01T00:00:00.000000Z", "eventid": "looper.dialback.failed",
                       "session": None, "src_ip": ip, "reason": "refused", "target": "x"})
    assert list(analysis.relays) == ["203.0.113.1"]
    assert [r["ip"] for r in build_report(analysis)["relays"]] == ["203.0.113.1"]


def test_the_live_trap_forgets_the_addresses_it_has_known_longest():
    """Scanners from the whole internet: the live core keeps a bounded
    number of addresses, never one with a loop under way."""
    analysis = Analysis(keep_relays=50)
    looping = {"timestamp": "2026-12-01T00:00:00.000000Z", "eventid": "looper.reflect.message", "session": "s0",
               "src_ip": "198.51.100.1", "chain": "c", "received_hops": 1, "code": 250, "complete": True}
    analysis.feed(looping)
    for n in range(1000):
        analysis.feed({"timestamp": "2026-12-01T00:00:01.000000Z", "eventid": "looper.dialback.failed",
                       "session": f"{n:012x}", "src_ip": f"203.0.{n // 250}.{n % 250}", "reason": "refused",
                       "target": "x"})
    assert len(analysis.relays) == 50
    assert "198.51.100.1" in analysis.relays and "203.0.3.249" in analysis.relays
