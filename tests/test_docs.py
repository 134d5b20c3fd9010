"""docs/events.md documents exactly the events declared in looper/events.py
(every id and every field, both ways), and the code logs only declared ids."""

import re
from pathlib import Path

from looper.events import COMMON_FIELDS, EVENT_FIELDS

ROOT = Path(__file__).parent.parent
DOCS = (ROOT / "docs/events.md").read_text()
# An event id in the code is a whole string literal: "looper.<area>.<what>".
EVENT_ID = re.compile(r"""(?<=["'])looper\.[a-z0-9_]+\.[a-z0-9_]+(?=["'])""")  # pop3 has a digit
HEADING = re.compile(r"^(#{2,3}) (.*)$", re.M)


def documented_sections() -> dict[tuple[str, ...], set[str]]:
    """{(event ids of a ### heading): the field names in its tables}."""
    sections = {}
    headings = list(HEADING.finditer(DOCS))
    for number, heading in enumerate(headings):
        end = headings[number + 1].start() if number + 1 < len(headings) else len(DOCS)
        body = DOCS[heading.end() : end]
        names = set()
        for row in re.findall(r"^\| ([^|]+) \|", body, re.M):
            names |= set(re.findall(r"`([a-z_][a-z_0-9]*)`", row))
        if heading.group(1) == "###":
            sections[tuple(re.findall(r"`(looper\.[a-z0-9_.]+)`", heading.group(2)))] = names
        elif heading.group(2) == "Fields on every event":
            sections[("*",)] = names
    return sections


def test_every_event_the_code_logs_is_declared():
    in_code = set()
    for path in (ROOT / "looper").rglob("*.py"):
        if path.name != "events.py":
            in_code |= set(EVENT_ID.findall(path.read_text()))
    assert in_code - EVENT_FIELDS.keys() == set(), "logged but not declared in looper/events.py"
    assert EVENT_FIELDS.keys() - in_code == set(), "declared but never logged"


def test_the_docs_document_every_declared_event_and_field_and_no_other():
    sections = documented_sections()
    assert sections.pop(("*",)) == set(COMMON_FIELDS)
    documented_ids = [eventid for ids in sections for eventid in ids]
    assert len(documented_ids) == len(set(documented_ids)), "an event documented twice"
    assert set(documented_ids) == EVENT_FIELDS.keys()
    for ids, names in sections.items():
        declared = set().union(*(EVENT_FIELDS[eventid].keys() for eventid in ids))
        assert names == declared, f"{', '.join(ids)}: documented {sorted(names)}, declared {sorted(declared)}"
