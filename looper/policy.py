"""Who may be dialed back, and how many sessions may run: the one place.

Pure bookkeeping, no I/O: the network layer asks, this module answers, and
the answer is a reason the event log can carry (policy, limit, self).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from looper.config import Dialback, Endpoint, Limits

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses whose connection rate is tracked at once; the oldest go first.
MAX_RATE_ADDRESSES = 100_000


@dataclass(frozen=True, slots=True)
class Denial:
    reason: str  # policy | limit | self (a failed dial-back); blocked | rate (a refused session)
    detail: str


@functools.lru_cache(maxsize=65536)  # every session asks several times about one address
def plain_address(address: str | IPAddress) -> IPAddress:
    """The address, with an IPv4-mapped IPv6 address taken as the IPv4 one."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Policy:
    def __init__(self, dialback: Dialback, limits: Limits, listeners: Iterable[Endpoint]) -> None:
        self._dialback = dialback
        self._limits = limits
        self._listeners = list(listeners)
        self._sessions_per_ip: Counter[str] = Counter()
        self._sessions_total = 0
        # Local ends (address, port) of our dial-backs in flight: a client
        # arriving from one of them is the trap talking to itself.
        self._own_dialbacks: set[tuple[str, int]] = set()
        # Connections per address in the current rate window: [start_s, count].
        self._rate_windows: dict[str, list[float]] = {}

    # -- who is served at all ------------------------------------------------

    def screen(self, src_ip: str, now_s: float) -> Denial | None:
        """Block list and connection rate: a denied client gets nothing."""
        ip = plain_address(src_ip)
        for network in self._limits.block:
            if ip.version == network.version and ip in network:
                return Denial("blocked", f"{src_ip} is in limits.block {network}")
        rate = self._limits.rate
        if rate is None:
            return None
        window = self._rate_windows.get(src_ip)
        if window is None or now_s - window[0] >= rate.per_seconds:
            if len(self._rate_windows) >= MAX_RATE_ADDRESSES:
                self._forget_old_windows(now_s)
            self._rate_windows[src_ip] = [now_s, 1]
            return None
        window[1] += 1
        if window[1] > rate.count:
            return Denial("rate", f"{int(window[1])} connections from {src_ip} within {rate} (limits.rate)")
        return None

    def _forget_old_windows(self, now_s: float) -> None:
        per_seconds = self._limits.rate.per_seconds
        for address in [a for a, w in self._rate_windows.items() if now_s - w[0] >= per_seconds]:
            del self._rate_windows[address]
        while len(self._rate_windows) >= MAX_RATE_ADDRESSES:  # a flood of fresh addresses
            del self._rate_windows[next(iter(self._rate_windows))]

    # -- concurrency ---------------------------------------------------------

    def admit(self, src_ip: str) -> Denial | None:
        """Count a new session in, or say why it may not start."""
        if self._sessions_total >= self._limits.total:
            return Denial("limit", f"{self._sessions_total} sessions in all (limits.total)")
        if self._sessions_per_ip[src_ip] >= self._limits.per_ip:
            return Denial("limit", f"{self._sessions_per_ip[src_ip]} sessions from {src_ip} (limits.per_ip)")
        self._sessions_per_ip[src_ip] += 1
        self._sessions_total += 1
        return None

    def release(self, src_ip: str) -> None:
        self._sessions_per_ip[src_ip] -= 1
        if self._sessions_per_ip[src_ip] <= 0:
            del self._sessions_per_ip[src_ip]
        self._sessions_total -= 1

    @property
    def sessions_total(self) -> int:
        return self._sessions_total

    # -- the dial-back target ------------------------------------------------

    def dial_denial(self, target: str, *, target_is_local: bool) -> Denial | None:
        """Why `target` may not be dialed on the dial-back port, or None."""
        ip = plain_address(target)
        port = self._dialback.port
        if target_is_local and any(self._covers(listener, ip, port) for listener in self._listeners):
            return Denial("self", f"{target} port {port} is one of the trap's own listeners")
        if ip.is_multicast or ip.is_unspecified:
            return Denial("policy", f"{target} is a multicast or unspecified address")
        for network in self._dialback.deny:
            if ip.version == network.version and ip in network:
                return Denial("policy", f"{target} is in dialback.deny {network}")
        if not ip.is_global and not self._dialback.allow_private:
            return Denial("policy", f"{target} is not a global address (dialback.allow_private is false)")
        return None

    def listens_on(self, port: int) -> bool:
        return any(listener.port == port for listener in self._listeners)

    def add_listener(self, endpoint: Endpoint) -> None:
        self._listeners.append(endpoint)

    @staticmethod
    def _covers(listener: Endpoint, ip: IPAddress, port: int) -> bool:
        if listener.port != port:
            return False
        bound = plain_address(listener.host)
        if bound.is_unspecified:
            return bound.version == ip.version
        return bound == ip

    # -- our own dial-backs --------------------------------------------------

    def note_dialback(self, local_end: tuple[str, int]) -> None:
        self._own_dialbacks.add((str(plain_address(local_end[0])), local_end[1]))

    def forget_dialback(self, local_end: tuple[str, int]) -> None:
        self._own_dialbacks.discard((str(plain_address(local_end[0])), local_end[1]))

    def is_own_dialback(self, src_ip: str, src_port: int) -> bool:
        return (str(plain_address(src_ip)), src_port) in self._own_dialbacks
