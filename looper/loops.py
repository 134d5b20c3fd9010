"""Which event loop runs the trap: uvloop by default, the stdlib's when
config says `event_loop: asyncio` (both are supported and tested)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

EVENT_LOOPS = ("uvloop", "asyncio")


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new-loop function for asyncio.Runner (no global policy is set:
    that API is deprecated from Python 3.14)."""
    if name == "uvloop":
        import uvloop  # imported only when used: `looper report` and the other commands need no loop of it

        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"unknown event loop {name!r}: expected one of {', '.join(EVENT_LOOPS)}")
