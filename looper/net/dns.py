"""DNS, the only place looper makes lookups (aiodns: no thread per query).

Every question goes through one Resolver: a bounded cache that keeps an
answer for its TTL (capped) and "no such name or record" for a short
while, one query on the wire for any number of sessions asking the same
thing at once, and a timeout on each lookup. A lookup that gets no answer
(timeout, SERVFAIL, no name server at all) raises Unanswered, so that
"not listed" and "could not tell" never look the same.

What the trap asks about a client is here too (PTR, forward confirmation,
DNSBL listings, whether a HELO name resolves); when it asks, and for how
long a session may wait, is net/evidence.py's business.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

import aiodns
import pycares

from looper.config import Dns as DnsSettings
from looper.policy import plain_address

# c-ares' answers that mean "asked and answered: there is nothing".
_NOTHING_THERE = frozenset({aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA})
_RECORD_TYPES = {"A": pycares.QUERY_TYPE_A, "AAAA": pycares.QUERY_TYPE_AAAA, "PTR": pycares.QUERY_TYPE_PTR}
# A name worth asking about: LDH labels (and "_", which some MTAs announce),
# 253 octets at most. Anything else a client says cannot resolve.
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                        r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")

Records = tuple[str, ...]  # the answer's records of the asked type; empty: none


class Unanswered(Exception):
    """No answer in time, or the name servers failed or refused."""


class AnswerCache:
    """Answers by (type, name), least recently used first. Each is kept
    until it expires; past `max_entries` the least recently used goes."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._answers: OrderedDict[tuple[str, str], tuple[float, Records]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: tuple[str, str]) -> Records | None:
        kept = self._answers.get(key)
        if kept is None:
            return None
        expires, records = kept
        if expires <= self.clock():
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return records

    def put(self, key: tuple[str, str], records: Records, ttl_s: float) -> None:
        if ttl_s <= 0 or self.max_entries == 0:
            return
        self._answers[key] = (self.clock() + ttl_s, records)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)


class Resolver:
    def __init__(self, settings: DnsSettings | None = None) -> None:
        self.settings = settings = settings or DnsSettings()
        self.cache = AnswerCache(settings.cache_entries)
        self._channel: aiodns.DNSResolver | None = None
        self._broken = False  # no channel could be made (no resolv.conf, ...): every lookup is unanswered
        self._asking: dict[tuple[str, str], asyncio.Task] = {}  # on the wire now, shared by whoever asks

    def worth_asking(self, ip: str) -> bool:
        """A private or loopback address has no public PTR record or
        listing: asking would only wait (unless dns.lookup_private)."""
        return self.settings.lookup_private or plain_address(ip).is_global

    # -- what the trap asks about a client -----------------------------------------

    async def ptr(self, ip: str) -> str | None:
        """The (first) PTR name of `ip`, or None when it has none."""
        names = await self.query(plain_address(ip).reverse_pointer, "PTR")
        return names[0].rstrip(".") if names else None

    async def confirms(self, name: str, ip: str) -> bool:
        """Forward confirmation (FCrDNS): `name`'s A (or AAAA, for an IPv6
        `ip`) records include `ip`."""
        address = plain_address(ip)
        if not _HOST_NAME.fullmatch(name):
            return False
        records = await self.query(name, "A" if address.version == 4 else "AAAA")
        return any(_same_address(record, address) for record in records)

    async def listing(self, zone: str, ip: str) -> Records | None:
        """The A records of `ip` in the DNSBL `zone` (e.g. ("127.0.0.2",)),
        or None when it is not listed."""
        address = plain_address(ip)
        return (await self.query(f"{_reversed_labels(address)}.{zone}", "A")) or None

    async def resolves(self, name: str) -> bool:
        """`name` has an A or an AAAA record. A name that cannot be one
        (spaces, empty labels, too long) does not, without asking."""
        if not _HOST_NAME.fullmatch(name):
            return False
        outcomes = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"), return_exceptions=True)
        answers = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
        if any(answers):
            return True
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Unanswered):
                raise outcome
        if len(answers) < len(outcomes):  # one said nothing: the other might have had an address
            raise Unanswered(name)
        return False

    async def name_of(self, ip: str) -> str | None:
        """The PTR name of `ip`, or None (none, not worth asking, or no answer)."""
        if not self.worth_asking(ip):
            return None
        try:
            return await self.ptr(ip)
        except Unanswered:
            return None

    async def our_name(self, addresses: list[str]) -> str:
        """The host name a server here would announce: the PTR name of the
        first listening address that has one, else this machine's FQDN (a
        name like "localhost" would give the trap away: never that)."""
        for ip in addresses:
            if ip not in ("0.0.0.0", "::"):
                name = await self.name_of(ip)
                if name:
                    return name
        for name in (socket.getfqdn(), socket.gethostname()):
            if name and not name.lower().startswith("localhost"):
                return name
        return socket.gethostname() or "mail"

    # -- the cache and the wire -------------------------------------------------------

    async def query(self, name: str, record_type: str) -> Records:
        """The records of `record_type` at `name` (absolute: no search
        domains), from the cache when it has them; raises Unanswered."""
        key = (record_type, name.rstrip(".").lower())
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.get_running_loop().create_task(self._ask(key))
            asking.add_done_callback(lambda _: self._asking.pop(key, None))
        # Shielded: one session giving up must not cancel the others' answer.
        records = await asyncio.shield(asking)
        if records is None:
            raise Unanswered(f"{record_type} {key[1]}")
        return records

    async def _ask(self, key: tuple[str, str]) -> Records | None:
        """One query on the wire; its answer cached. None: unanswered."""
        record_type, name = key
        settings = self.settings
        channel = self._open_channel()
        if channel is None:
            return None
        try:
            async with asyncio.timeout(settings.timeout_s):
                result = await channel.query_dns(name + ".", record_type)
        except aiodns.error.DNSError as err:
            if err.args and err.args[0] in _NOTHING_THERE:
                self.cache.put(key, (), settings.negative_ttl_s)
                return ()
            return None
        except (TimeoutError, pycares.AresError, UnicodeError, ValueError):
            return None
        wanted = _RECORD_TYPES[record_type]
        answers = [record for record in result.answer if record.type == wanted]
        if not answers:  # only a CNAME, say: no record of this type
            self.cache.put(key, (), settings.negative_ttl_s)
            return ()
        records = tuple(_record_text(record.data) for record in answers)
        self.cache.put(key, records, min(min(record.ttl for record in answers), settings.cache_max_ttl_s))
        return records

    def _open_channel(self) -> aiodns.DNSResolver | None:
        if self._channel is None and not self._broken:
            servers = [str(server) for server in self.settings.nameservers] or None
            try:
                # tries=1: the timeout is the lookup's whole time, not per try.
                self._channel = aiodns.DNSResolver(nameservers=servers, timeout=self.settings.timeout_s, tries=1)
            except (pycares.AresError, aiodns.error.DNSError, OSError, ValueError):
                self._broken = True
        return self._channel

    async def close(self) -> None:
        """No lookup outlives the trap: those on the wire are cancelled."""
        for task in list(self._asking.values()):
            task.cancel()
        self._asking.clear()
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


def _record_text(data: object) -> str:
    if isinstance(data, pycares.PTRRecordData):
        return data.dname
    return data.addr  # A, AAAA


def _same_address(record: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(record) == address
    except ValueError:
        return False


def _reversed_labels(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """1.2.3.4 -> 4.3.2.1; an IPv6 address -> its 32 nibbles, last first
    (how DNSBLs and in-addr.arpa / ip6.arpa spell an address)."""
    return address.reverse_pointer.rsplit(".", 2)[0]

