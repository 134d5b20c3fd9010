"""Who is on the open-relay blocklist: the evidence, its age, delistings.

Sans-IO like the analysis core: `feed(record)` takes one event as the log
holds it; `listed(now)` says who is listed at that time and why. The same
book serves `looper blocklist` (fed from the logs) and the live feed of
`looper run` (fed each event as it is logged, its state kept on disk).

What lists an address (RFC 6471 asks a list to say so, and to let go):
- proof of relaying: a pass of a loop chain that its own server accepted
  (`looper.reflect.message` complete with a 2xx): `min_passes` of them;
- with `include_loop_protected`, also a relay that only showed loop
  protection (its `looper.relay.verdict` of loop_protected): proof of
  nothing but a relay that answers for any domain, so off by default;
- never an address in `never`; 127.0.0.2 is always listed (the RFC 5782
  test entry) and 127.0.0.1 never, by the zone writer.
What takes it off: its last evidence is older than `expire_days`, or a
`looper.relay.delisted` came after the last evidence (new evidence lists
it again, and only the passes after the delisting count).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

from looper.analysis.timestamps import epoch_seconds
from looper.policy import plain_address

DAY = 86400.0
OPEN_RELAY = "open_relay"
LOOP_PROTECTED = "loop_protected"
DELISTED = "looper.relay.delisted"
# A book holds at most this many addresses (each one a relay that looped a
# message, or a delisting): beyond it the one with the oldest evidence goes.
MAX_ENTRIES = 1_000_000
MAX_SENSORS = 16

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ListingRules:
    min_passes: int = 1
    expire_days: float = 30.0
    include_loop_protected: bool = False
    never: tuple[Network, ...] = ()


@dataclass(slots=True)
class Entry:
    """What is known against one address since its last delisting."""

    ip: str
    passes: int = 0  # accepted loop passes
    first: float | None = None  # time of the first evidence
    last: float = 0.0  # time of the latest evidence
    loop_protected: bool = False
    chain: str | None = None  # the latest accepted pass's chain
    sensors: list[str] = field(default_factory=list)
    delisted: float | None = None  # when it was last delisted
    delisted_reason: str | None = None

    @property
    def verdict(self) -> str:
        return OPEN_RELAY if self.passes else LOOP_PROTECTED

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "passes": self.passes, "first": self.first, "last": self.last,
                "loop_protected": self.loop_protected, "chain": self.chain, "sensors": list(self.sensors),
                "delisted": self.delisted, "delisted_reason": self.delisted_reason}


@dataclass(frozen=True, slots=True)
class Listing:
    """One listed address, with its evidence and expiry (seconds since the epoch)."""

    ip: str
    verdict: str
    passes: int
    first: float
    last: float
    expires: float
    sensors: tuple[str, ...]
    chain: str | None


class Book:
    def __init__(self, rules: ListingRules) -> None:
        self.rules = rules
        self.entries: dict[str, Entry] = {}
        self._changed = False

    # -- input --------------------------------------------------------------

    def feed(self, record: dict[str, Any]) -> bool:
        """One event; True if it may have changed who is listed."""
        eventid = record.get("eventid")
        try:
            if eventid == "looper.reflect.message":
                code = record.get("code")
                if not record.get("complete", True) or not isinstance(code, int) or not 200 <= code < 300:
                    return False
                return self._evidence(record["src_ip"], epoch_seconds(record["timestamp"]), record, passes=1)
            if eventid == "looper.relay.verdict":
                if record.get("verdict") != LOOP_PROTECTED:
                    return False
                return self._evidence(record["relay_ip"], epoch_seconds(record["timestamp"]), record, passes=0)
            if eventid == DELISTED:
                return self.delist(record["relay_ip"], epoch_seconds(record["timestamp"]), record.get("reason"))
        except (KeyError, TypeError, ValueError):
            pass  # a damaged line: skipped, as the analysis core does
        return False

    def delist(self, ip: str, when: float, reason: Any = None) -> bool:
        ip = _address(ip)
        entry = self._entry(ip)
        if entry.delisted is not None and entry.delisted >= when:
            return False
        entry.delisted, entry.delisted_reason = when, reason if isinstance(reason, str) else None
        if entry.last <= when:  # what came before the delisting no longer counts
            entry.passes, entry.first, entry.last, entry.loop_protected, entry.chain = 0, None, 0.0, False, None
            entry.sensors = []
        return True

    def _evidence(self, ip: str, when: float, record: dict[str, Any], *, passes: int) -> bool:
        ip = _address(ip)
        entry = self._entry(ip)
        if entry.delisted is not None and when <= entry.delisted:
            return False  # logged before the delisting (a log read out of order): it was weighed already
        entry.passes += passes
        if passes:
            entry.chain = record.get("chain") if isinstance(record.get("chain"), str) else entry.chain
        else:
            entry.loop_protected = True
        entry.first = when if entry.first is None else min(entry.first, when)
        entry.last = max(entry.last, when)
        sensor = record.get("sensor")
        if isinstance(sensor, str) and sensor not in entry.sensors and len(entry.sensors) < MAX_SENSORS:
            entry.sensors.append(sensor)
        return True

    def _entry(self, ip: str) -> Entry:
        entry = self.entries.get(ip)
        if entry is None:
            if len(self.entries) >= MAX_ENTRIES:
                oldest = min(self.entries.values(), key=lambda e: max(e.last, e.delisted or 0.0))
                del self.entries[oldest.ip]
            entry = self.entries[ip] = Entry(ip)
        return entry

    # -- output -------------------------------------------------------------

    def listed(self, now: float) -> list[Listing]:
        """Who is listed at `now`, in address order (IPv4 first)."""
        rules = self.rules
        keep = rules.expire_days * DAY
        found = []
        for entry in self.entries.values():
            if entry.first is None or entry.last + keep <= now:
                continue
            if entry.passes < rules.min_passes and not (rules.include_loop_protected and entry.loop_protected):
                continue
            if _never(entry.ip, rules.never):
                continue
            found.append(Listing(entry.ip, entry.verdict, entry.passes, entry.first, entry.last, entry.last + keep,
                                 tuple(entry.sensors), entry.chain))
        found.sort(key=lambda listing: _order(listing.ip))
        return found

    def next_expiry(self, now: float) -> float | None:
        """When the next listed address expires (the live feed's timer)."""
        times = [listing.expires for listing in self.listed(now)]
        return min(times) if times else None

    def forget_old(self, now: float) -> None:
        """Drop what can no longer list anybody (evidence and delistings
        past the expiry): the live book stays as small as the list."""
        keep = self.rules.expire_days * DAY
        for ip in [ip for ip, e in self.entries.items() if max(e.last, e.delisted or 0.0) + keep <= now]:
            del self.entries[ip]

    # -- state (the live feed's file) ---------------------------------------

    def state(self) -> list[dict[str, Any]]:
        return [entry.to_dict() for entry in self.entries.values()]

    def load(self, entries: Iterable[dict[str, Any]]) -> None:
        for item in entries:
            try:
                entry = Entry(_address(item["ip"]), int(item["passes"]), _number(item["first"]),
                              float(item["last"]), bool(item["loop_protected"]), item.get("chain"),
                              [str(s) for s in item.get("sensors") or ()][:MAX_SENSORS],
                              _number(item.get("delisted")), item.get("delisted_reason"))
            except (KeyError, TypeError, ValueError):
                continue
            self.entries[entry.ip] = entry


def _address(text: Any) -> str:
    """The address in its one written form (a log may hold another): an
    IPv4-mapped IPv6 address is the IPv4 relay it maps (a dual-stack
    listener sees them so), listed in the zone's IPv4 set."""
    if not isinstance(text, str):
        raise TypeError("not an address")
    return str(plain_address(text))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _never(ip: str, never: tuple[Network, ...]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in never if network.version == address.version)


def _order(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return address.version, int(address)
