"""Which event loop runs the trap (config: event_loop): uvloop where it is
installed (auto, the default), or the one named; the standard library's
loop is always there and stays supported and tested."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolved_event_loop(name: str) -> str:
    """The loop `name` stands for here: auto is uvloop when installed."""
    if name == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if name not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {name!r}: expected one of {', '.join(EVENT_LOOPS)}")
    return name


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new-loop function for asyncio.Runner (no global policy is set:
    that API is deprecated from Python 3.14)."""
    if resolved_event_loop(name) == "uvloop":
        import uvloop  # only when used: `looper report` and the other commands need no loop of it

        return uvloop.new_event_loop
    return asyncio.new_event_loop
