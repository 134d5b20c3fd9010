"""The fuzz targets (fuzz/) keep working: each one's seeds pass it as plain
Python, without atheris, on every Python the suite runs on; and every bug
that fuzz runs tolerate (fuzz/known_bugs.py) has its regression test."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).parent.parent / "fuzz"
TARGETS = sorted(path.stem.removeprefix("fuzz_") for path in FUZZ.glob("fuzz_*.py"))


def load(name: str) -> ModuleType:
    if str(FUZZ) not in sys.path:
        sys.path.append(str(FUZZ))  # the targets import _harness as a script's neighbour
    if f"fuzz_{name}" in sys.modules:
        return sys.modules[f"fuzz_{name}"]
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"fuzz_{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_machine_has_a_target():
    assert TARGETS == ["config", "message", "observer", "sasl", "smtpd"]


@pytest.mark.parametrize("name", TARGETS)
def test_the_seeds_pass(name: str):
    target = load(name)
    seeds = sorted((FUZZ / "seeds" / name).iterdir())
    assert seeds, f"fuzz/seeds/{name} is empty: python fuzz/make_seeds.py"
    for seed in seeds:
        target.test_one_input(seed.read_bytes())


def test_the_targets_take_any_bytes_without_a_false_alarm():
    """Short and degenerate inputs are whole test cases too (libFuzzer starts with them)."""
    for name in TARGETS:
        target = load(name)
        for data in (b"", b"\x00", b"\xff" * 3, bytes(range(256))):
            target.test_one_input(data)


def test_each_known_bug_names_its_regression_test():
    load("config")  # puts fuzz/ on sys.path
    from known_bugs import KNOWN

    tree = ast.parse((Path(__file__).parent / "test_fuzz_regressions.py").read_text())
    tests = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert {bug.test for bug in KNOWN} <= tests
