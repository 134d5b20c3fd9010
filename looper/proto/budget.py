"""Budgets shared by many sessions: plain counters, no I/O.

A machine holds a message in memory until its final dot (it must see all of
it to hash and store it). One session is bounded by the message size limit;
a thousand at once are bounded only by this: the bytes every emulated
session together holds (limits.message_memory_bytes).
"""

from __future__ import annotations


class MessageMemory:
    __slots__ = ("limit_bytes", "held_bytes")

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    @property
    def exhausted(self) -> bool:
        return self.held_bytes >= self.limit_bytes

    def fits(self, more_bytes: int) -> bool:
        return self.held_bytes + more_bytes <= self.limit_bytes
