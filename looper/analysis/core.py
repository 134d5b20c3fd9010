"""The analysis core: loop chains, relay verdicts and fingerprints, and what
the emulated servers caught, from events fed one at a time.

Sans-IO like the protocol machines: `feed(record)` takes one event as the
log holds it (a dict) and returns the findings it led to (a relay earned a
verdict, a chain ended, a relay recognised itself); `advance(now)` moves
the clock (the event times when reading logs, the wall clock when live) and
returns the chains that ended in silence. `looper run` logs the findings as
events; `looper report` reads the state at the end (analysis/report.py).

Memory grows with the relays and the open chains, never with the events:
a session's state lives until its `looper.session.closed`; an ended chain
is kept for the report, up to `keep_ended` of them (None: all of them, for
a report; the live trap keeps a bounded number); every list of evidence or
texts is capped, and the tallies of what the emulated servers caught keep
their heaviest keys (analysis/tally.py).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from looper.analysis.fingerprint import SILENT_HOP_LIMITS, Fingerprint, ServerFacts, identify
from looper.analysis.tally import Tally
from looper.analysis.timestamps import epoch_seconds

QUIET_SECONDS = 600.0  # analysis.quiet_seconds: no pass for this long and a chain has ended
# An explicit end (a refusal) is held this long before it is reported: a relay
# like Postfix commits a pass before its 250, so under load the pass before the
# refused one can be logged just after it.
SETTLE_SECONDS = 5.0
MAX_EVIDENCE = 6  # per relay: the first three and the latest three
MAX_OPEN_SESSIONS = 100_000  # a log cut short leaves sessions without their closed event
MAX_HOPS_TRACKED = 4096  # received_hops beyond this are counted, not mapped
LIVE_ENDED_KEPT = 10_000
# The live trap meets every scanner on the internet: it forgets the addresses
# it has known longest beyond this many (one that comes back starts afresh,
# and its verdict is logged again).
LIVE_RELAYS_KEPT = 100_000


class Verdict(StrEnum):
    """Per address, the strongest thing it has shown (RANK orders them)."""

    OPEN_RELAY = "open_relay"  # its own server took a message for relaying (a loop pass)
    REFUSES_RELAY = "refuses_relay"  # its own server refused the recipient
    LOOP_PROTECTED = "loop_protected"  # its client quit on its own name before any MAIL
    PROBE_ONLY = "probe_only"  # it was reflected but started no transaction
    UNREACHABLE = "unreachable"  # the dial-back failed: it met the emulated servers


RANK = {v: i for i, v in enumerate(reversed(list(Verdict)))}


class ChainEnd(StrEnum):
    HOP_LIMIT = "hop_limit"  # the relay refused it with a hop or loop reply (or, inferred, fell silent at its known limit)
    SELF_DETECTED = "self_detected"  # the relay saw its own name, or refused a loop by name
    REFUSED = "refused"  # the relay's server refused a pass for another reason (5xx)
    TLS_OPAQUE = "tls_opaque"  # its next pass went through TLS, unread
    CAPPED = "capped"  # the trap's own caps cut it (splice caps, dial-back budget, shutdown)
    VANISHED = "vanished"  # no pass for quiet_seconds
    ONGOING = "ongoing"  # still within quiet_seconds at the end of the input


_LOOP_BY_NAME = re.compile(r"loops? back to (me|myself)", re.IGNORECASE)
_HOP_REPLY = re.compile(
    r"too many hops|too many \"?received\"? (headers|lines)|loop(ing)? detected|mail loop|hop count",
    re.IGNORECASE,
)
_CAP_REASONS = frozenset({"max_bytes", "max_seconds", "idle", "shutdown"})
_DIAL_FAILED = frozenset({"refused", "timeout", "unreachable"})


@dataclass(frozen=True, slots=True)
class Finding:
    """A derived event: `eventid` and its own fields; `about` is the event
    whose session it concerns (its common fields are copied), or None for
    the trap's own (a chain that ended in silence, a verdict)."""

    eventid: str
    fields: dict[str, Any]
    about: dict[str, Any] | None = None


@dataclass(slots=True)
class Chain:
    chain: str
    relay_ip: str
    started: float
    last_pass: float
    passes: int = 0
    accepted: int = 0
    bytes: int = 0
    sessions: int = 0
    first_hops: int | None = None
    last_hops: int | None = None  # received_hops of the latest pass (in log order)
    max_hops: int = 0
    min_hops: int | None = None
    hops_seen: int = 0  # a bitset: bit n set when a pass had n hops
    repeats: int = 0  # passes whose hop count an earlier pass already had
    last_session: str = ""
    last_accepted: bool = False
    subject: str | None = None
    message_id: str | None = None
    end: ChainEnd | None = None
    end_code: int | None = None
    end_text: str | None = None
    end_inferred: bool = False
    ended: float | None = None
    end_hops: int | None = None  # received_hops of the pass that ended it

    @property
    def gaps(self) -> int:
        """Hop counts missing between the lowest and highest seen."""
        if self.min_hops is None:
            return 0
        low, top = max(self.min_hops, 0), min(self.max_hops, MAX_HOPS_TRACKED)
        return max(0, top - low + 1 - bin(self.hops_seen >> low).count("1"))


@dataclass(slots=True)
class Relay:
    """Everything known about one address that connected."""

    ip: str
    first_seen: float
    last_seen: float
    days: set[str] = field(default_factory=set)
    last_day: str = ""
    sensors: set[str] = field(default_factory=set)
    verdict: Verdict | None = None
    sessions: int = 0  # reflected sessions
    emulated_sessions: int = 0
    passes: int = 0
    accepted: int = 0
    chains: int = 0
    hop_limit: int | None = None  # received_hops at which its loops ended by its limit
    self_detected: int = 0
    logins: int = 0
    messages: int = 0
    facts: ServerFacts = field(default_factory=ServerFacts)
    helo_names: list[str] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)
    open_chains: set[str] = field(default_factory=set)
    dns: dict | None = None  # what DNS said of it (looper.dns.client), latest answers first: see merge_dns

    _fingerprint: Fingerprint | None = None

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = identify(self.facts)
        return self._fingerprint

    def learnt(self) -> None:
        self._fingerprint = None


@dataclass(slots=True)
class _Session:
    src_ip: str
    reflected: bool = False
    greeting_name: str | None = None
    helo_name: str | None = None  # the name the client gave (to its server, or to the emulated relay)
    ehlo_name: str | None = None
    masked: bool = False
    saw_mail: bool = False
    self_checked: bool = False
    cut_chain: str | None = None  # a pass cut off in this session


class Analysis:
    """Feed it events in time order (per relay, order matters little: passes
    logged out of hop order are sorted out by their received_hops)."""

    def __init__(self, quiet_seconds: float = QUIET_SECONDS, keep_ended: int | None = None,
                 keep_relays: int | None = None) -> None:
        self.quiet_seconds = quiet_seconds
        self.keep_ended = keep_ended
        self.keep_relays = keep_relays
        self.relays: dict[str, Relay] = {}
        self.open_chains: OrderedDict[str, Chain] = OrderedDict()  # least recent pass first
        self.settling: OrderedDict[str, Chain] = OrderedDict()  # ended, not yet reported
        self.ended_chains: OrderedDict[str, Chain] = OrderedDict()
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.hop_histogram: dict[int, int] = {}
        self.credentials: dict[str, Tally] = {}
        self.captured = {name: Tally() for name in ("senders", "recipients", "domains", "helo_names", "subjects")}
        self.captured_messages = 0
        self.captured_bytes = 0
        self.events = 0
        self.first: float | None = None
        self.sensors: set[str] = set()
        self._now = 0.0
        self._next_check = 0.0  # no chain can end by time before this
        self._findings: list[Finding] = []
        self._handlers = {
            "looper.session.connect": self._connect,
            "looper.session.closed": self._closed,
            "looper.dialback.ok": self._dialback_ok,
            "looper.dialback.failed": self._dialback_failed,
            "looper.reflect.greeting": self._greeting,
            "looper.reflect.helo": self._helo,
            "looper.reflect.ehlo_reply": self._ehlo_reply,
            "looper.reflect.mail": self._mail,
            "looper.reflect.rcpt": self._rcpt,
            "looper.reflect.message": self._message,
            "looper.reflect.command": self._command,
            "looper.reflect.tls": self._tls,
            "looper.smtp.helo": self._smtp_helo,
            "looper.smtp.message": self._smtp_message,
            "looper.login.success": self._login,
            "looper.login.failed": self._login,
            "looper.dns.client": self._dns_client,
        }

    @property
    def wanted(self) -> frozenset[str]:
        """The event ids the core reads: a reader may skip the others unparsed."""
        return frozenset(self._handlers)

    # -- input ------------------------------------------------------------------

    def feed(self, record: dict[str, Any]) -> list[Finding]:
        """One event; returns the findings it led to (and any chain whose
        quiet time passed before it)."""
        handler = self._handlers.get(record.get("eventid"))
        if handler is None:
            return []
        try:
            when = epoch_seconds(record["timestamp"])
        except (KeyError, TypeError, ValueError):
            return []
        self.events += 1
        if when > self._now:
            self._now = when
            if self.first is None:
                self.first = when
            if when >= self._next_check:
                self._expire(when)
        elif self.first is None or when < self.first:
            self.first = when
        try:
            handler(record, when)
        except (KeyError, TypeError, AttributeError, ValueError, ArithmeticError):
            pass  # an event without the fields its id promises: a damaged line, skipped
        if self._findings:
            return self._take()
        return []

    @property
    def last(self) -> float | None:
        return self._now if self.first is not None else None

    def advance(self, now: float) -> list[Finding]:
        """Time has passed with no event (the live trap's timer)."""
        if now > self._now:
            self._expire(now)
        return self._take()

    def finish(self) -> list[Finding]:
        """The input is over: chains still settling are reported; chains
        within their quiet time are `ongoing` (left open)."""
        for chain in list(self.settling.values()):
            self._report_end(chain)
        return self._take()

    # -- what the report reads ----------------------------------------------------

    def chains(self) -> list[Chain]:
        """Every chain known, ended ones first, each in order of its start."""
        return sorted([*self.ended_chains.values(), *self.settling.values(), *self.open_chains.values()],
                      key=lambda c: c.started)

    def relay_list(self) -> list[Relay]:
        return [r for r in self.relays.values() if r.verdict is not None]

    # -- sessions ------------------------------------------------------------------

    def _relay(self, record: dict, when: float) -> Relay:
        """The record of the event's address, which it updates: when it was
        seen, on which day, by which sensor."""
        ip = record["src_ip"]
        relay = self.relays.get(ip)
        if relay is None:
            if not isinstance(ip, str):
                raise TypeError("an event without a client address")  # skipped by feed()
            if self.keep_relays is not None and len(self.relays) >= self.keep_relays:
                self._forget_a_relay()
            relay = self.relays[ip] = Relay(ip, when, when)
        if when > relay.last_seen:
            relay.last_seen = when
            day = record["timestamp"][:10]
            if day != relay.last_day:
                relay.last_day = day
                relay.days.add(day)
        elif when < relay.first_seen:
            relay.first_seen = when
            relay.days.add(record["timestamp"][:10])
        sensor = record.get("sensor")
        if sensor and sensor not in relay.sensors and len(relay.sensors) < 64:
            relay.sensors.add(sensor)
            if len(self.sensors) < 1024:
                self.sensors.add(sensor)
        return relay

    def _forget_a_relay(self) -> None:
        """The address known longest, unless a loop through it is open."""
        for ip, relay in self.relays.items():
            if not relay.open_chains:
                del self.relays[ip]
                return

    def _known(self, record: dict, when: float) -> Relay:
        """The record of an address seen at its connect: within a session
        only the time moves."""
        relay = self.relays.get(record["src_ip"])
        if relay is None or relay.last_day != record["timestamp"][:10] or record.get("sensor") not in relay.sensors:
            return self._relay(record, when)
        if when > relay.last_seen:
            relay.last_seen = when
        return relay

    def _connect(self, record: dict, when: float) -> None:
        if record.get("src_ip") is None or record.get("session") is None:
            return
        self._relay(record, when)
        self._open(record)

    def _open(self, record: dict) -> _Session:
        session = self.sessions[record["session"]] = _Session(record["src_ip"])
        if len(self.sessions) > MAX_OPEN_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def _session(self, record: dict) -> _Session | None:
        """The state of the event's session, opened at its first event: a
        reader may skip the connect events (analysis/logs.py does)."""
        session = self.sessions.get(record.get("session"))
        if session is None and record.get("session") is not None and record.get("src_ip") is not None:
            session = self._open(record)
        return session

    def _closed(self, record: dict, when: float) -> None:
        session = self.sessions.pop(record.get("session"), None)
        if session is None:
            return
        relay = self._known(record, when)
        mode = record.get("mode")
        if mode == "emulate":
            relay.emulated_sessions += 1
        if not session.reflected:
            return
        relay.sessions += 1
        self._check_self_detected(session, record)
        if session.cut_chain and record.get("reason") in _CAP_REASONS:
            chain = self.open_chains.get(session.cut_chain)
            if chain is not None:
                self._end(chain, ChainEnd.CAPPED, when, None, f"the trap's cap: {record['reason']}", record)
        if not session.saw_mail and session.greeting_name is not None and not relay.self_detected:
            self._earn(relay, Verdict.PROBE_ONLY, record, "reflected, but no MAIL in the session")

    def _dialback_ok(self, record: dict, when: float) -> None:
        session = self._session(record)
        if session is not None:
            session.reflected = True

    def _dialback_failed(self, record: dict, when: float) -> None:
        relay = self._known(record, when)
        reason = record.get("reason")
        if reason in _DIAL_FAILED:
            self._earn(relay, Verdict.UNREACHABLE, record, f"dial-back to {record.get('target')} failed: {reason}")
        elif reason == "budget":
            for chain_id in list(relay.open_chains):
                chain = self.open_chains.get(chain_id)
                if chain is not None:
                    self._end(chain, ChainEnd.CAPPED, when, None, f"the trap's budget: {record.get('detail')}", record)

    # -- what the relay's server said ------------------------------------------------

    def _greeting(self, record: dict, when: float) -> None:
        session = self._session(record)
        text = _text(record.get("text")) or ""
        if session is not None:
            session.reflected = True
            session.greeting_name = text.split(" ", 1)[0] if text else ""
        relay = self._known(record, when)
        if text and relay.facts.greeting != text:
            relay.facts.greeting = text
            relay.learnt()

    def _helo(self, record: dict, when: float) -> None:
        session = self._session(record)
        name = _text(record.get("name"))
        if session is not None:
            session.helo_name = name
        relay = self._known(record, when)
        if name and name not in relay.helo_names and len(relay.helo_names) < 8:
            relay.helo_names.append(name)
        if record.get("verb") == "EHLO" and record.get("code") == 250 and record.get("reply"):
            first = (_text(record["reply"]) or "").split("\n", 1)[0]
            if relay.facts.ehlo != first:
                relay.facts.ehlo = first
                relay.learnt()

    def _ehlo_reply(self, record: dict, when: float) -> None:
        session = self._session(record)
        if session is not None:
            session.ehlo_name = _text(record.get("name"))
            session.masked = record.get("masked_as") is not None
        relay = self._known(record, when)
        extensions = " ".join(map(str, record.get("extensions") or []))
        if relay.facts.extensions != extensions:
            relay.facts.extensions = extensions
            relay.learnt()

    def _mail(self, record: dict, when: float) -> None:
        session = self._session(record)
        if session is not None:
            session.saw_mail = True
        self._server_reply(record, when)

    def _rcpt(self, record: dict, when: float) -> None:
        relay = self._server_reply(record, when)
        code = record.get("code")
        if code is not None and code >= 400:
            self._earn(relay, Verdict.REFUSES_RELAY, record,
                       f"RCPT TO:<{record.get('address')}> refused: {code} {record.get('reply')}")

    def _server_reply(self, record: dict, when: float) -> Relay:
        relay = self._known(record, when)
        if record.get("reply"):
            before = len(relay.facts.replies)
            relay.facts.add_reply((_text(record["reply"]) or "").split("\n", 1)[0])
            if len(relay.facts.replies) != before:
                relay.learnt()
        return relay

    def _command(self, record: dict, when: float) -> None:
        session = self._session(record)
        if session is not None and record.get("verb") == "QUIT":
            self._check_self_detected(session, record)

    def _tls(self, record: dict, when: float) -> None:
        relay = self._known(record, when)
        for chain_id in list(relay.open_chains):
            chain = self.open_chains.get(chain_id)
            if chain is not None:
                self._end(chain, ChainEnd.TLS_OPAQUE, when, None, "the relay's next pass went through TLS", record)

    def _check_self_detected(self, session: _Session, record: dict) -> None:
        """A relay's client that quits, before any MAIL, right after the
        server named itself with the client's own name: loop protection."""
        if session.self_checked or session.saw_mail or not session.reflected:
            return
        where = name = None
        if session.helo_name is not None and session.ehlo_name is not None:
            if not session.masked and session.helo_name.lower() == session.ehlo_name.lower():
                where, name = "ehlo_reply", session.ehlo_name
        elif session.helo_name is None and session.greeting_name:
            relay = self.relays.get(session.src_ip)
            if relay is not None and session.greeting_name.lower() in (n.lower() for n in relay.helo_names):
                where, name = "greeting", session.greeting_name
        if where is None:
            return
        session.self_checked = True
        relay = self.relays[session.src_ip]
        relay.self_detected += 1
        self._findings.append(Finding("looper.reflect.self_detected", {"name": name, "where": where}, record))
        for chain_id in list(relay.open_chains):
            chain = self.open_chains.get(chain_id)
            if chain is not None and chain.last_accepted:
                self._end(chain, ChainEnd.SELF_DETECTED, self._now, None, f"the relay saw its own name ({where})",
                          record)
        self._earn(relay, Verdict.LOOP_PROTECTED, record,
                   f"quit after seeing its own name {name!r} in the {where.replace('_', ' ')}, before any MAIL "
                   "(splice.ehlo_name: mask would show whether it relays)")

    # -- passes and chains -------------------------------------------------------------

    def _message(self, record: dict, when: float) -> None:
        chain_id = record["chain"]
        relay = self._known(record, when)
        hops = int(record.get("received_hops") or 0)
        code = record.get("code")
        session_id = record.get("session") or ""
        chain = self.open_chains.get(chain_id) or self.settling.get(chain_id)
        if chain is None:
            chain = self.ended_chains.pop(chain_id, None)
            if chain is not None:  # it came back after it was thought over
                relay.open_chains.add(chain_id)
                chain.end = chain.end_code = chain.end_text = chain.ended = chain.end_hops = None
                chain.end_inferred = False
                self.open_chains[chain_id] = chain
        if chain is None:
            chain = Chain(chain_id, relay.ip, when, when, subject=_text(record.get("subject")),
                          message_id=_text(record.get("message_id")))
            self.open_chains[chain_id] = chain
            relay.open_chains.add(chain_id)
            relay.chains += 1
        elif chain.end is None:
            self.open_chains.move_to_end(chain_id)
        chain.passes += 1
        relay.passes += 1
        chain.bytes += int(record.get("size") or 0)
        if when > chain.last_pass:
            chain.last_pass = when
        if when < chain.started:
            chain.started = when
        if session_id != chain.last_session:
            chain.sessions += 1
            chain.last_session = session_id
        if chain.first_hops is None:
            chain.first_hops = hops
        if 0 <= hops <= MAX_HOPS_TRACKED:
            bit = 1 << hops
            if chain.hops_seen & bit:
                chain.repeats += 1
            chain.hops_seen |= bit
        chain.min_hops = hops if chain.min_hops is None else min(chain.min_hops, hops)
        chain.max_hops = max(chain.max_hops, hops)
        chain.last_hops = hops
        session = self._session(record)
        if not record.get("complete", True):
            if session is not None:
                session.cut_chain = chain_id
            return
        if code is not None and 200 <= code < 300:
            chain.accepted += 1
            relay.accepted += 1
            chain.last_accepted = True
            self._earn(relay, Verdict.OPEN_RELAY, record,
                       f"its server took a message for relaying: {code} at the end of data, "
                       f"received_hops {hops}, chain {chain_id}")
            return
        chain.last_accepted = False
        if code is None or code < 500 or chain.end is not None:
            return  # temporary: the relay will try again
        reply = _text(record.get("reply")) or ""
        relay.facts.add_end(reply)
        relay.learnt()
        if _LOOP_BY_NAME.search(reply):
            end = ChainEnd.SELF_DETECTED
        elif _HOP_REPLY.search(reply):
            end = ChainEnd.HOP_LIMIT
        else:
            end = ChainEnd.REFUSED
        self._end(chain, end, when, code, reply, record, hops=hops)

    def _end(self, chain: Chain, end: ChainEnd, when: float, code: int | None, text: str | None,
             record: dict | None, *, hops: int | None = None, inferred: bool = False) -> None:
        if chain.end is not None:
            return
        self.open_chains.pop(chain.chain, None)
        relay = self.relays.get(chain.relay_ip)
        if relay is not None:
            relay.open_chains.discard(chain.chain)
        chain.end, chain.end_code, chain.end_text, chain.end_inferred = end, code, text, inferred
        chain.ended = max(when, chain.last_pass)
        chain.end_hops = hops if hops is not None else chain.max_hops
        self.settling[chain.chain] = chain

    def _report_end(self, chain: Chain) -> None:
        self.settling.pop(chain.chain, None)
        relay = self.relays.get(chain.relay_ip)
        if chain.end is ChainEnd.HOP_LIMIT:
            # Passes logged late may have raised the highest hop count seen.
            chain.end_hops = max(chain.end_hops or 0, chain.max_hops)
            self.hop_histogram[chain.end_hops] = self.hop_histogram.get(chain.end_hops, 0) + 1
            if relay is not None:
                relay.hop_limit = max(relay.hop_limit or 0, chain.end_hops)
        self.ended_chains[chain.chain] = chain
        if self.keep_ended is not None:
            while len(self.ended_chains) > self.keep_ended:
                self.ended_chains.popitem(last=False)
        self._findings.append(Finding("looper.chain.ended", chain_summary(chain), None))

    def _expire(self, now: float) -> None:
        self._now = max(self._now, now)
        while self.settling:
            chain = next(iter(self.settling.values()))
            if chain.ended is None or chain.ended + SETTLE_SECONDS > now:
                break
            self._report_end(chain)
        while self.open_chains:
            chain = next(iter(self.open_chains.values()))
            if chain.last_pass + self.quiet_seconds > now:
                break
            self._quiet_end(chain)
            self._report_end(chain)
        # The fronts only move later (a pass moves its chain to the back), so
        # until this time no check can find anything: feed() skips them.
        deadlines = [now + min(SETTLE_SECONDS, self.quiet_seconds)]
        if self.settling:
            first = next(iter(self.settling.values()))
            deadlines.append((first.ended or now) + SETTLE_SECONDS)
        if self.open_chains:
            deadlines.append(next(iter(self.open_chains.values())).last_pass + self.quiet_seconds)
        self._next_check = min(deadlines)

    def _quiet_end(self, chain: Chain) -> None:
        relay = self.relays.get(chain.relay_ip)
        family = relay.fingerprint().family if relay is not None else None
        top = chain.max_hops
        limit = next((n for n in SILENT_HOP_LIMITS.get(family or "", ()) if n - 1 <= top <= n + 1), None)
        if chain.last_accepted and limit is not None:
            text = f"silent after an accepted pass at {top} hops: {family}'s limit is {limit} (inferred)"
            self._end(chain, ChainEnd.HOP_LIMIT, chain.last_pass, None, text, None, hops=top, inferred=True)
        else:
            self._end(chain, ChainEnd.VANISHED, chain.last_pass, None,
                      f"no pass for {self.quiet_seconds:g} s", None, hops=top)

    # -- verdicts ------------------------------------------------------------------------

    def _earn(self, relay: Relay, verdict: Verdict, record: dict, what: str) -> None:
        better = relay.verdict is None or RANK[verdict] > RANK[relay.verdict]
        if not better and relay.verdict is not verdict:
            return
        item = {"session": record.get("session"), "timestamp": record.get("timestamp"), "verdict": str(verdict),
                "what": what}
        if better:
            relay.evidence = [e for e in relay.evidence if e["verdict"] == verdict][: MAX_EVIDENCE // 2]
        if len(relay.evidence) < MAX_EVIDENCE:
            relay.evidence.append(item)
        else:
            relay.evidence[-1] = item  # the first ones stay, the last is the latest
        if better:
            relay.verdict = verdict
            self._findings.append(Finding("looper.relay.verdict",
                                          {"relay_ip": relay.ip, "verdict": str(verdict), "evidence": what}, record))

    # -- the emulated servers ---------------------------------------------------------------

    def _smtp_helo(self, record: dict, when: float) -> None:
        session = self._session(record)
        if session is not None and record.get("name"):
            session.helo_name = _text(record["name"])

    def _smtp_message(self, record: dict, when: float) -> None:
        relay = self._known(record, when)
        relay.messages += 1
        self.captured_messages += 1
        self.captured_bytes += int(record.get("size") or 0)
        self.captured["senders"].add(_text(record.get("mail_from")) or "<>")
        for rcpt in record.get("rcpt_to") or ():
            rcpt = _text(rcpt) or ""
            self.captured["recipients"].add(rcpt)
            self.captured["domains"].add(rcpt.rpartition("@")[2].lower() or "(none)")
        if record.get("subject") is not None:
            self.captured["subjects"].add(_text(record["subject"]))
        session = self._session(record)
        if session is not None and session.helo_name:
            self.captured["helo_names"].add(session.helo_name)

    def _login(self, record: dict, when: float) -> None:
        relay = self._known(record, when)
        relay.logins += 1
        protocol = record.get("protocol") or "smtp"
        secret = _text(record.get("password"))
        if secret is None and record.get("digest") is not None:  # CRAM-MD5 or DIGEST-MD5
            mechanism = str(record.get("mechanism") or "CRAM-MD5").lower()
            secret = f"{mechanism}:{record['digest']}"
        ok = record["eventid"] == "looper.login.success"
        tally = self.credentials.get(protocol)
        if tally is None:
            tally = self.credentials[protocol] = Tally()
        tally.add((_text(record.get("username")), secret, ok))

    # -- DNS evidence ---------------------------------------------------------------------

    def _dns_client(self, record: dict, when: float) -> None:
        relay = self._known(record, when)
        relay.dns = merge_dns(relay.dns, record)

    def _take(self) -> list[Finding]:
        if not self._findings:
            return []
        found, self._findings = self._findings, []
        return found


def _text(value: Any) -> str | None:
    """A field that should hold text, as text: a damaged log may hold anything."""
    if value is None or isinstance(value, str):
        return value
    return repr(value)


MAX_DNSBL_ZONES = 32  # per relay: a damaged or odd log must not grow one without bound


def merge_dns(known: dict | None, record: dict) -> dict:
    """A relay's DNS evidence with a looper.dns.client event taken in: each
    answer replaces the one known before; a lookup the event names in
    `unanswered` leaves what was known (DNS that was down for one session
    does not erase what it said before)."""
    listed = record.get("unanswered")
    unanswered = {what for what in listed if isinstance(what, str)} if isinstance(listed, list) else set()
    merged = dict(known) if known else {"ptr": None, "fcrdns": None, "dnsbl": {}, "helo": None, "helo_resolves": None}
    if "ptr" not in unanswered:
        merged["ptr"] = _text(record.get("ptr"))
        if "fcrdns" not in unanswered:
            merged["fcrdns"] = record.get("fcrdns") if isinstance(record.get("fcrdns"), bool) else None
    dnsbl = record.get("dnsbl")
    if isinstance(dnsbl, dict) and dnsbl:
        zones = dict(merged["dnsbl"])
        for zone, answer in dnsbl.items():
            if zone in zones or len(zones) < MAX_DNSBL_ZONES:
                zones[str(zone)] = [str(a) for a in answer][:8] if isinstance(answer, list) else None
        merged["dnsbl"] = zones
    helo = record.get("helo")
    if isinstance(helo, str) and "helo" not in unanswered:
        merged["helo"] = helo
        merged["helo_resolves"] = record.get("helo_resolves") if isinstance(record.get("helo_resolves"), bool) else None
    return merged


def chain_summary(chain: Chain) -> dict[str, Any]:
    """The fields of looper.chain.ended, and of a chain in the report."""
    duration = (chain.ended if chain.ended is not None else chain.last_pass) - chain.started
    return {
        "chain": chain.chain,
        "relay_ip": chain.relay_ip,
        "passes": chain.passes,
        "first_hops": chain.first_hops,
        "last_hops": chain.end_hops if chain.end_hops is not None else chain.max_hops,
        "end": str(chain.end) if chain.end is not None else str(ChainEnd.ONGOING),
        "end_code": chain.end_code,
        "end_text": chain.end_text,
        "end_inferred": chain.end_inferred,
        "duration": round(duration, 6),
    }
