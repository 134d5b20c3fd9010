"""A counter that keeps its heaviest keys and forgets the long tail.

What attackers send (passwords, subjects, recipients) has no bound on its
variety; a report needs the top of each list. A Tally counts exactly until
it holds `2 * keep` keys, then drops all but the `keep` heaviest: a key
that came back after being dropped starts counting again, so counts in the
tail are lower bounds, and `dropped` says how many counts were let go.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

KEEP = 5_000


class Tally:
    __slots__ = ("counts", "keep", "total", "dropped")

    def __init__(self, keep: int = KEEP) -> None:
        self.counts: Counter = Counter()
        self.keep = keep
        self.total = 0
        self.dropped = 0

    def add(self, key: Hashable, count: int = 1) -> None:
        self.counts[key] += count
        self.total += count
        if len(self.counts) > 2 * self.keep:
            kept = self.counts.most_common(self.keep)
            self.dropped += self.counts.total() - sum(n for _, n in kept)
            self.counts = Counter(dict(kept))

    def top(self, n: int) -> list[tuple[Hashable, int]]:
        return self.counts.most_common(n)

    def __len__(self) -> int:
        return len(self.counts)
