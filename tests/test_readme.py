"""The README's commands work as written: every code block marked
`<!-- runnable ... -->` is run, line by line in one shell, from the root
of the checkout, and must succeed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
# The marker, a blank line, then the indented block (up to the next unindented line).
RUNNABLE = re.compile(r"^<!-- runnable[^\n]*-->\n\n((?:    [^\n]*\n|\n)+)", re.M)


def blocks() -> list[str]:
    return [re.sub(r"^    ", "", block, flags=re.M).strip() for block in RUNNABLE.findall(README)]


def test_the_readme_marks_its_runnable_blocks():
    assert len(blocks()) >= 2
    assert any("make demo" in block for block in blocks())


@pytest.mark.parametrize("block", blocks(), ids=lambda block: block.splitlines()[0])
def test_a_runnable_readme_block_runs_as_written(block):
    done = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
