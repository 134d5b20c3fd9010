"""Bugs the fuzz targets found that are reported and not fixed yet.

While such a bug is open, every run would stop at it again and find
nothing else. So a fuzz run (not --replay, not the tests) treats an
exception that matches an entry here as a pass; LOOPER_FUZZ_KNOWN=fail
makes them crashes again, to check a fix or to collect reproducers.

Each entry names its regression test in tests/test_fuzz_regressions.py
(xfail until the fix): when the fix lands and that test is flipped,
delete the entry here.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    test: str  # its regression test
    exception: type[BaseException]
    message: str  # a regular expression searched in str(exception)
    where: str  # a regular expression searched in "path/file.py:function" of the innermost frame


KNOWN: list[Known] = []  # all found so far are fixed (tests/test_fuzz_regressions.py)


def known(err: BaseException) -> Known | None:
    """The entry that err matches, if it matches one and they are tolerated."""
    if os.environ.get("LOOPER_FUZZ_KNOWN") == "fail":
        return None
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return None
    innermost = f"{frames[-1].filename}:{frames[-1].name}"
    for entry in KNOWN:
        if isinstance(err, entry.exception) and re.search(entry.message, str(err)) and re.search(entry.where, innermost):
            return entry
    return None
