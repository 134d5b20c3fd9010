"""What every fuzz target shares: the input reader, the runner, the replay mode.

A target is a file fuzz/fuzz_<name>.py with a function test_one_input(data)
that raises on a bug and returns otherwise. Run as a script it fuzzes with
atheris (libFuzzer); imported (the tests, --replay) it is plain Python and
needs no atheris.

    python fuzz/fuzz_observer.py -max_total_time=60     # fuzz for a minute
    python fuzz/fuzz_observer.py -atheris_runs=100000   # or so many inputs
    python fuzz/fuzz_observer.py CRASH_FILE             # run one input again
    python fuzz/fuzz_observer.py --replay DIR_OR_FILE...  # without atheris

Without corpus arguments the runner reads fuzz/seeds/<name>/ (committed, a
few small inputs) and fuzz/corpus/<name>/ (what earlier runs found,
not committed), and new inputs go to the latter. Crashes are written to
fuzz/crashes/<name>-crash-<sha1>. Options given on the command line win
over the defaults below.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # looper from this checkout when it is not installed

# libFuzzer defaults for these targets: an input that runs 10 s is a bug
# (quadratic parsing), not patience.
DEFAULT_OPTIONS = {
    "-timeout": "10",
    "-rss_limit_mb": "2048",
    "-print_final_stats": "1",
}


class Reader:
    """Reads a fuzz input as a sequence of small decisions and byte strings.

    Past the end every read gives zeros or b"", so each input, however
    short, is a whole test case (libFuzzer shrinks inputs freely).
    """

    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def __bool__(self) -> bool:
        return self.position < len(self.data)

    def byte(self) -> int:
        if self.position >= len(self.data):
            return 0
        self.position += 1
        return self.data[self.position - 1]

    def take(self, count: int) -> bytes:
        start = self.position
        self.position = min(len(self.data), start + count)
        return self.data[start : self.position]

    def rest(self) -> bytes:
        return self.take(len(self.data))


def check(condition: object, message: str) -> None:
    """An invariant: raise (a finding) when it does not hold, even under python -O."""
    if not condition:
        raise AssertionError(message)


def instrumented(enabled: bool, *packages: str) -> contextlib.AbstractContextManager:
    """Instrument the modules imported inside the block for coverage, when fuzzing.

    `enabled` is the target's own `__name__ == "__main__"`: imported by the
    tests or run with --replay, nothing is instrumented and atheris is not
    needed.
    """
    if not enabled or "--replay" in sys.argv:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=list(packages or ("looper",)))


def inputs(paths: list[str]) -> Iterator[tuple[Path, bytes]]:
    """Every file named, and every file in every folder named, sorted."""
    for name in paths:
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            yield file, file.read_bytes()


def replay(name: str, test_one_input: Callable[[bytes], None], paths: list[str]) -> int:
    """Run test_one_input on each input once, plain Python; print each failure, go on."""
    if not paths:
        paths = [str(p) for p in (FUZZ_DIR / "seeds" / name, FUZZ_DIR / "corpus" / name) if p.is_dir()]
    count = failed = 0
    for path, data in inputs(paths):
        count += 1
        try:
            test_one_input(data)
        except Exception:
            failed += 1
            print(f"{name}: failed on {path}:\n{traceback.format_exc()}", file=sys.stderr)
    print(f"{name}: {count} inputs replayed, {failed} failed")
    return 1 if failed else 0


def tolerating_known_bugs(test_one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """test_one_input, passing where it hits a bug listed in known_bugs.py."""
    from known_bugs import known

    seen: set[str] = set()

    def test(data: bytes) -> None:
        try:
            test_one_input(data)
        except Exception as err:
            bug = known(err)
            if bug is None:
                raise
            if bug.test not in seen:
                seen.add(bug.test)
                print(f"known bug, tolerated: {bug.test} ({type(err).__name__}: {err})", file=sys.stderr, flush=True)

    return test


def main(name: str, test_one_input: Callable[[bytes], None], *, dictionary: str | None = None) -> None:
    """Fuzz test_one_input with atheris, or replay files with --replay."""
    args = sys.argv[1:]
    if "--replay" in args:
        args.remove("--replay")
        sys.exit(replay(name, test_one_input, args))
    import atheris

    given = {arg.split("=", 1)[0] for arg in args if arg.startswith("-")}
    options = [f"{key}={value}" for key, value in DEFAULT_OPTIONS.items() if key not in given]
    crashes = FUZZ_DIR / "crashes"
    if "-artifact_prefix" not in given:
        crashes.mkdir(exist_ok=True)
        options.append(f"-artifact_prefix={crashes}/{name}-")
    if dictionary and "-dict" not in given:
        options.append(f"-dict={FUZZ_DIR / 'dicts' / dictionary}")
    if not any(not arg.startswith("-") for arg in args):
        # No corpus or input named: grow fuzz/corpus/<name>, start from the seeds too.
        corpus = FUZZ_DIR / "corpus" / name
        corpus.mkdir(parents=True, exist_ok=True)
        seeds = FUZZ_DIR / "seeds" / name
        args += [str(corpus)] + ([str(seeds)] if seeds.is_dir() else [])
    # Fuzzing goes past known bugs; running given input files shows them.
    reproducing = any(Path(arg).is_file() for arg in args if not arg.startswith("-"))
    target = test_one_input if reproducing else tolerating_known_bugs(test_one_input)
    atheris.Setup([sys.argv[0], *options, *args], target)
    atheris.Fuzz()
