"""Reverse DNS, the only lookups looper makes (aiodns: no thread per query).

Only global addresses are looked up: a private or loopback address has no
public PTR record, and asking for one would only wait for a timeout.
"""

from __future__ import annotations

import asyncio
import socket

import aiodns

from looper.policy import plain_address

LOOKUP_TIMEOUT_S = 2.0


class ReverseDns:
    def __init__(self, timeout_s: float = LOOKUP_TIMEOUT_S, nameservers: list[str] | None = None) -> None:
        self.timeout_s = timeout_s
        self.nameservers = nameservers  # "ip" or "ip:port"; None: the system's
        self._resolver: aiodns.DNSResolver | None = None

    @staticmethod
    def worth_asking(ip: str) -> bool:
        return plain_address(ip).is_global

    async def name_of(self, ip: str) -> str | None:
        """The PTR name of `ip`, or None (none, not global, or no answer in time)."""
        address = plain_address(ip)
        if not address.is_global:
            return None
        if self._resolver is None:
            self._resolver = aiodns.DNSResolver(nameservers=self.nameservers, timeout=self.timeout_s, tries=1)
        try:
            async with asyncio.timeout(self.timeout_s + 0.5):
                result = await self._resolver.gethostbyaddr(str(address))
        except (aiodns.error.DNSError, TimeoutError, UnicodeError):
            return None
        return result.name.rstrip(".") or None

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

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None
