"""DNS evidence on each session's client, gathered while the session goes on.

The lookups start when a session is admitted (the client's PTR name, then
whether that name points back at it; its listing in each `dns.dnsbl` zone)
and when the client first names itself in a HELO or EHLO (whether that name
resolves). Nothing waits for them, except the emulated greeting, which may
wait for the PTR name until `dns.budget_s` after the connect. The one
looper.dns.client event is logged when every lookup is in and the client
has said HELO, or at the latest when the session ends, with what is known
by then (what was not is named in `unanswered`): a session is never held
open for DNS, and DNS that is broken or absent costs it nothing.

The lookups themselves are net/dns.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from looper.net.dns import Resolver, Unanswered

EVENT = "looper.dns.client"
# Where a client names itself: to its own server through the splice, or to the emulated relay.
HELO_EVENTS = frozenset({"looper.reflect.helo", "looper.smtp.helo"})


class ClientEvidence:
    """One session's lookups and what they found."""

    __slots__ = ("resolver", "ip", "zones", "emit", "ptr", "fcrdns", "dnsbl", "helo", "helo_resolves",
                 "unanswered", "_lookups", "_ptr_lookup", "_logged", "_forget")

    def __init__(self, resolver: Resolver, ip: str, zones: tuple[str, ...], emit: Callable[..., None],
                 forget: Callable[[], None]) -> None:
        self.resolver = resolver
        self.ip = ip
        self.zones = zones
        self.emit = emit
        self.ptr: str | None = None
        self.fcrdns: bool | None = None
        self.dnsbl: dict[str, list[str] | None] = {}
        self.helo: str | None = None
        self.helo_resolves: bool | None = None
        self.unanswered: list[str] = []
        self._lookups: dict[asyncio.Task, str] = {}  # under way, by what they look up
        self._ptr_lookup: asyncio.Task | None = None
        self._logged = False
        self._forget = forget

    def start(self) -> None:
        self._ptr_lookup = self._look_up("ptr", lambda: self.resolver.ptr(self.ip), self._found_ptr)
        for zone in self.zones:
            self._look_up(f"dnsbl:{zone}", lambda zone=zone: self.resolver.listing(zone, self.ip),
                          lambda listed, zone=zone: self._found_listing(zone, listed))

    async def client_name(self, wait_s: float) -> str | None:
        """The PTR name, waiting for it at most `wait_s` (the lookup goes on)."""
        lookup = self._ptr_lookup
        if lookup is not None and not lookup.done() and wait_s > 0:
            await asyncio.wait((lookup,), timeout=wait_s)
        return self.ptr

    def heard_helo(self, name: str) -> None:
        """The client's first HELO or EHLO name is the one it is judged by."""
        if self.helo is not None or self._logged:
            return
        self.helo = name
        if name.startswith("[") and name.endswith("]"):
            # An address literal names an address: there is nothing to resolve.
            self._complete_if_done()
        else:
            self._look_up("helo", lambda: self.resolver.resolves(name), self._found_helo)

    def close(self) -> None:
        """The session ends: log what is known, stop the rest."""
        if self._logged:
            return
        for task, what in self._lookups.items():
            if task.done():
                continue  # it landed (its answer, or its own `unanswered`), its callback not yet run
            task.cancel()
            self.unanswered.append(what)
        self._lookups.clear()
        self._log()

    # -- the lookups -----------------------------------------------------------------

    def _look_up(self, what: str, lookup: Callable[[], Awaitable[Any]], found: Callable[[Any], None]) -> asyncio.Task:
        async def run() -> None:
            try:
                answer = await lookup()
            except Unanswered:
                self.unanswered.append(what)
                return
            except Exception:  # noqa: BLE001 - whatever DNS does, the session goes on
                self.unanswered.append(what)
                return
            found(answer)

        task = asyncio.get_running_loop().create_task(run())
        self._lookups[task] = what
        task.add_done_callback(self._landed)
        return task

    def _landed(self, task: asyncio.Task) -> None:
        if self._lookups.pop(task, None) is not None:
            self._complete_if_done()

    def _found_ptr(self, name: str | None) -> None:
        self.ptr = name
        if name is not None:
            self._look_up("fcrdns", lambda: self.resolver.confirms(name, self.ip), self._found_fcrdns)

    def _found_fcrdns(self, confirmed: bool) -> None:
        self.fcrdns = confirmed

    def _found_listing(self, zone: str, listed: tuple[str, ...] | None) -> None:
        self.dnsbl[zone] = None if listed is None else list(listed)

    def _found_helo(self, resolves: bool) -> None:
        self.helo_resolves = resolves

    def _complete_if_done(self) -> None:
        if not self._lookups and self.helo is not None:
            self._log()

    def _log(self) -> None:
        if self._logged:
            return
        self._logged = True
        self._ptr_lookup = None  # done: an idle session keeps no finished task
        self._forget()
        self.emit(
            EVENT, ptr=self.ptr, fcrdns=self.fcrdns, dnsbl={zone: self.dnsbl[zone] for zone in sorted(self.dnsbl)},
            helo=self.helo, helo_resolves=self.helo_resolves, unanswered=sorted(self.unanswered),
        )


class EvidenceDesk:
    """The trap's DNS evidence: a session's ClientEvidence by its id, so
    that a HELO heard in the event log reaches its session's lookups."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.settings = resolver.settings
        self._open: dict[str, ClientEvidence] = {}

    def gather(self, session: str, ip: str, emit: Callable[..., None]) -> ClientEvidence | None:
        """Start the lookups on a session's client (None: not worth asking)."""
        if not self.resolver.worth_asking(ip):
            return None
        evidence = ClientEvidence(self.resolver, ip, self.settings.dnsbl, emit,
                                  forget=lambda: self._open.pop(session, None))
        self._open[session] = evidence
        evidence.start()
        return evidence

    def heard(self, record: dict[str, Any]) -> None:
        """An event-log listener: a HELO or EHLO name for an open session."""
        if record["eventid"] in HELO_EVENTS:
            evidence = self._open.get(record["session"])
            name = record.get("name")
            if evidence is not None and isinstance(name, str):
                evidence.heard_helo(name)

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """The trap stops: whatever sessions are left log what they know."""
        for evidence in list(self._open.values()):
            evidence.close()
