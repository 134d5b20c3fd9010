"""Who may be dialed back, and how many sessions may run: the one place.

Pure bookkeeping, no I/O: the network layer asks, this module answers, and
the answer is a reason the event log can carry (policy, limit, self).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable

from looper.config import Dialback, Endpoint, Limits

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses whose connection rate (or dial-back count) is tracked at once;
# the oldest go first.
MAX_RATE_ADDRESSES = 100_000


class DenialReason(StrEnum):
    """Why a session is refused (blocked, rate), or a dial-back not made."""

    BLOCKED = "blocked"  # limits.block
    RATE = "rate"  # limits.rate
    LIMIT = "limit"  # limits.per_ip or limits.total
    POLICY = "policy"  # a private, denied, multicast or unspecified target
    SELF = "self"  # the target is one of the trap's own listeners, or the client one of its dial-backs
    BUDGET = "budget"  # dialback.per_ip_hourly or splice.bytes_per_minute spent


@dataclass(frozen=True, slots=True)
class Denial:
    reason: DenialReason
    detail: str


class _WindowCounts:
    """How often each key was seen in its current fixed window of
    `per_seconds`; bounded in keys (a flood of fresh addresses evicts)."""

    def __init__(self, per_seconds: float) -> None:
        self.per_seconds = per_seconds
        self._windows: dict[str, list[float]] = {}  # key: [window start, count]

    def __len__(self) -> int:
        return len(self._windows)

    def count(self, key: str, now_s: float) -> int:
        """Count one more for `key`; the count in its window so far."""
        window = self._windows.get(key)
        if window is None or now_s - window[0] >= self.per_seconds:
            if len(self._windows) >= MAX_RATE_ADDRESSES:
                self._forget_old_windows(now_s)
            self._windows[key] = [now_s, 1]
            return 1
        window[1] += 1
        return int(window[1])

    def _forget_old_windows(self, now_s: float) -> None:
        for key in [k for k, w in self._windows.items() if now_s - w[0] >= self.per_seconds]:
            del self._windows[key]
        while len(self._windows) >= MAX_RATE_ADDRESSES:
            del self._windows[next(iter(self._windows))]


class ByteBudget:
    """Bytes per fixed window of `per_seconds`, for all splices together:
    the trap forwards at most this much a minute, so it can never be turned
    into a bandwidth amplifier."""

    def __init__(self, limit_bytes: int, per_seconds: float = 60.0) -> None:
        self.limit_bytes = limit_bytes
        self.per_seconds = per_seconds
        self.window_start_s = float("-inf")
        self.used_bytes = 0

    def _roll(self, now_s: float) -> None:
        if now_s - self.window_start_s >= self.per_seconds:
            self.window_start_s, self.used_bytes = now_s, 0

    def spend(self, nbytes: int, now_s: float) -> bool:
        """Count bytes already forwarded; False once the window's budget is spent."""
        self._roll(now_s)
        self.used_bytes += nbytes
        return self.used_bytes < self.limit_bytes

    def spent(self, now_s: float) -> bool:
        self._roll(now_s)
        return self.used_bytes >= self.limit_bytes

    def remaining(self, now_s: float) -> int:
        self._roll(now_s)
        return max(0, self.limit_bytes - self.used_bytes)

    @property
    def next_window_s(self) -> float:
        return self.window_start_s + self.per_seconds


@functools.lru_cache(maxsize=65536)  # every session asks several times about one address
def plain_address(address: str | IPAddress) -> IPAddress:
    """The address, with an IPv4-mapped IPv6 address taken as the IPv4 one."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Policy:
    def __init__(
        self,
        dialback: Dialback,
        limits: Limits,
        listeners: Iterable[Endpoint],
        *,
        splice_bytes_per_minute: int | None = None,
    ) -> None:
        self._dialback = dialback
        self._limits = limits
        self._listeners = list(listeners)
        self._sessions_per_ip: Counter[str] = Counter()
        self._sessions_total = 0
        # Local ends (address, port) of our dial-backs in flight: a client
        # arriving from one of them is the trap talking to itself.
        self._own_dialbacks: set[tuple[str, int]] = set()
        self._rate_windows = _WindowCounts(limits.rate.per_seconds if limits.rate else 1)
        self._dialbacks_per_hour = _WindowCounts(3600)
        self.splice_bytes = None if splice_bytes_per_minute is None else ByteBudget(splice_bytes_per_minute)

    # -- who is served at all ------------------------------------------------

    def screen(self, src_ip: str, now_s: float) -> Denial | None:
        """Block list and connection rate: a denied client gets nothing."""
        ip = plain_address(src_ip)
        for network in self._limits.block:
            if ip.version == network.version and ip in network:
                return Denial(DenialReason.BLOCKED, f"{src_ip} is in limits.block {network}")
        rate = self._limits.rate
        if rate is None:
            return None
        seen = self._rate_windows.count(src_ip, now_s)
        if seen > rate.count:
            return Denial(DenialReason.RATE, f"{seen} connections from {src_ip} within {rate} (limits.rate)")
        return None

    # -- concurrency ---------------------------------------------------------

    def admit(self, src_ip: str) -> Denial | None:
        """Count a new session in, or say why it may not start."""
        if self._sessions_total >= self._limits.total:
            return Denial(DenialReason.LIMIT, f"{self._sessions_total} sessions in all (limits.total)")
        if self._sessions_per_ip[src_ip] >= self._limits.per_ip:
            return Denial(DenialReason.LIMIT, f"{self._sessions_per_ip[src_ip]} sessions from {src_ip} (limits.per_ip)")
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
            return Denial(DenialReason.SELF, f"{target} port {port} is one of the trap's own listeners")
        if ip.is_multicast or ip.is_unspecified:
            return Denial(DenialReason.POLICY, f"{target} is a multicast or unspecified address")
        for network in self._dialback.deny:
            if ip.version == network.version and ip in network:
                return Denial(DenialReason.POLICY, f"{target} is in dialback.deny {network}")
        if not ip.is_global and not self._dialback.allow_private:
            return Denial(DenialReason.POLICY, f"{target} is not a global address (dialback.allow_private is false)")
        return None

    def budget_denial(self, target: str, now_s: float) -> Denial | None:
        """The dial-back budgets: per address per hour (dialback.per_ip_hourly),
        and none at all while this minute's splice bytes are spent. A
        dial-back they allow is counted. The client is then served as if
        the dial-back had failed: by the emulated relay."""
        splice_bytes = self.splice_bytes
        if splice_bytes is not None and splice_bytes.spent(now_s):
            return Denial(DenialReason.BUDGET, f"{splice_bytes.limit_bytes} bytes spliced this minute (splice.bytes_per_minute)")
        per_hour = self._dialback.per_ip_hourly
        if per_hour is not None:
            dialed = self._dialbacks_per_hour.count(str(plain_address(target)), now_s)
            if dialed > per_hour:
                return Denial(DenialReason.BUDGET, f"{dialed} dial-backs to {target} within an hour (dialback.per_ip_hourly {per_hour})")
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
