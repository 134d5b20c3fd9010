"""Dialing the client back: the only outgoing connection looper makes."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from enum import StrEnum
from typing import Callable

from looper.net.splice import SpliceEnd


class DialFailure(StrEnum):
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # any other connect error


class DialFailed(Exception):
    def __init__(self, reason: DialFailure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_local_address(ip: str) -> bool:
    """True if `ip` is an address of this host (the kernel lets us bind it)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


async def dial_back(
    *,
    local_ip: str,
    target_ip: str,
    port: int,
    timeout_s: float,
    on_bound: Callable[[tuple[str, int]], None],
) -> tuple[SpliceEnd, float]:
    """Connect from `local_ip` (the address the client reached) to the
    client's own address; returns the connected end and the connect time in
    milliseconds. `on_bound` learns our local end before the SYN leaves, so
    that the connection can be recognised if it arrives back at the trap."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in target_ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((local_ip, 0))
        on_bound(sock.getsockname()[:2])
        started = time.monotonic()
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, (target_ip, port))
        connect_ms = round((time.monotonic() - started) * 1000, 3)
        _, end = await loop.create_connection(SpliceEnd, sock=sock)
    except TimeoutError:
        sock.close()
        raise DialFailed(DialFailure.TIMEOUT, f"no answer within {timeout_s:g} s") from None
    except ConnectionRefusedError:
        sock.close()
        raise DialFailed(DialFailure.REFUSED, "connection refused") from None
    except OSError as err:
        sock.close()
        name = errno.errorcode.get(err.errno or 0, "error")
        raise DialFailed(DialFailure.UNREACHABLE, f"{name}: {err.strerror or err}") from None
    except BaseException:
        sock.close()
        raise
    return end, connect_ms
