"""The timer wheel of idle checks (looper/net/wheel.py): each check comes
at or after its due time, at most one step late; a removed one never comes."""

from __future__ import annotations

import asyncio
import random

from looper.net.wheel import STEP_S, wheel_of


class Waiting:
    def __init__(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self.loop, self.due, self.fired_at = loop, due, []

    def _wheel_due(self) -> None:
        self.fired_at.append(self.loop.time())


async def test_checks_come_on_time_or_one_step_late_and_removed_ones_never():
    loop = asyncio.get_running_loop()
    wheel = wheel_of(loop)
    assert wheel_of(loop) is wheel
    rng = random.Random(7)
    now = loop.time()
    waiting = [Waiting(loop, now + rng.uniform(0, 0.8)) for _ in range(300)]
    steps = [wheel.add(w, w.due) for w in waiting]
    removed = waiting[::3]
    for w in removed:
        wheel.remove(w, steps[waiting.index(w)])
    await asyncio.sleep(0.8 + 2 * STEP_S)
    for w in waiting:
        if w in removed:
            assert w.fired_at == []
        else:
            (fired,) = w.fired_at
            assert w.due - 0.002 <= fired < w.due + STEP_S + 0.2  # the loop's own lateness on a busy machine


async def test_a_failing_check_costs_the_others_nothing():
    loop = asyncio.get_running_loop()
    failures = []
    loop.set_exception_handler(lambda _, context: failures.append(context["exception"]))

    class Failing(Waiting):
        def _wheel_due(self) -> None:
            raise RuntimeError("a bug in one check")

    now = loop.time()
    waiting = [Failing(loop, now), Waiting(loop, now), Failing(loop, now), Waiting(loop, now)]
    for w in waiting:
        wheel_of(loop).add(w, now)
    await asyncio.sleep(2 * STEP_S)
    assert [len(w.fired_at) for w in waiting if type(w) is Waiting] == [1, 1]
    assert [str(err) for err in failures] == ["a bug in one check"] * 2
