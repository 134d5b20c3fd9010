"""Every event id the code can log is documented, and every documented one exists."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
# An event id in the code is a whole string literal: "looper.<area>.<what>".
EVENT_ID = re.compile(r"""(?<=["'])looper\.[a-z_]+\.[a-z_]+(?=["'])""")


def test_every_event_is_documented():
    in_code = set()
    for path in (ROOT / "looper").rglob("*.py"):
        in_code |= set(EVENT_ID.findall(path.read_text()))
    documented = set(re.findall(r"^### `(looper\.[a-z_.]+)`(?:, `(looper\.[a-z_.]+)`)?", (ROOT / "docs/events.md").read_text(), re.M))
    documented = {name for pair in documented for name in pair if name}
    assert in_code - documented == set(), "logged but not in docs/events.md"
    assert documented - in_code == set(), "documented but never logged"
