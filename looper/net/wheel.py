"""The idle checks of many connections on few timers.

An emulated session checks for idleness, a splice for idleness and its
max_seconds. With a loop timer each, 10,000 idle connections would each
keep a TimerHandle, a bound method and a context (about 250 bytes). Here
they wait on a grid of STEP_S: one loop timer per step that has any, which
calls each waiting object's `_wheel_due()`. A check comes at most STEP_S
late, never early.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Protocol

STEP_S = 0.25


class Due(Protocol):
    def _wheel_due(self) -> None: ...


class TimerWheel:
    __slots__ = ("_loop", "_steps", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._steps: dict[int, set[Due]] = {}

    def add(self, waiting: Due, due: float) -> int:
        """Call waiting._wheel_due() at the first step at or after loop time
        `due`; the step, for remove()."""
        step = math.ceil(due / STEP_S)
        objects = self._steps.get(step)
        if objects is None:
            objects = self._steps[step] = set()
            self._loop.call_at(step * STEP_S, self._fire, step)
        objects.add(waiting)
        return step

    def remove(self, waiting: Due, step: int) -> None:
        objects = self._steps.get(step)
        if objects is not None:
            objects.discard(waiting)

    def _fire(self, step: int) -> None:
        for waiting in self._steps.pop(step, ()):
            try:
                waiting._wheel_due()
            except Exception as err:  # one failed check must not cost the others theirs
                self._loop.call_exception_handler(
                    {"message": "idle check failed", "exception": err, "waiting": waiting})


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerWheel] = weakref.WeakKeyDictionary()


def wheel_of(loop: asyncio.AbstractEventLoop) -> TimerWheel:
    """The loop's wheel."""
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = TimerWheel(loop)
    return wheel
