"""Runs fuzz targets one after the other and sums up what each did.

    python fuzz/run.py --seconds 20                 # every target, 20 s each
    python fuzz/run.py --seconds 300 observer smtpd  # some, longer
    python fuzz/run.py --coverage                     # line coverage of the corpora, no fuzzing

Each target's libFuzzer output goes to fuzz/logs/<name>.log; the table
shows, per target, inputs run (execs), seconds, execs per second, coverage
(libFuzzer's "cov": instrumented branches reached; "ft": features) and the
corpus size. A crash prints the end of its log, names the reproducer in
fuzz/crashes/ and makes the exit status 1 (after the other targets ran).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
TARGETS = ("observer", "smtpd", "sasl", "config", "message")
# The module each target is about, for --coverage.
SOURCES = {
    "observer": ["looper/proto/observer.py", "looper/proto/message.py", "looper/proto/reply.py"],
    "smtpd": ["looper/proto/smtpd.py", "looper/proto/sasl.py", "looper/proto/message.py"],
    "sasl": ["looper/proto/sasl.py"],
    "config": ["looper/config.py"],
    "message": ["looper/proto/message.py"],
}
STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")


def fuzz(name: str, seconds: int, extra: list[str]) -> tuple[bool, str]:
    logs = FUZZ_DIR / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, str(FUZZ_DIR / f"fuzz_{name}.py"), f"-max_total_time={seconds}", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    known = sorted(set(re.findall(r"known bug, tolerated: (\S+)", text)))
    # The last figures: another run of the same target in this checkout may have written here too.
    statuses = STATUS.findall(text)
    execs = re.findall(r"stat::number_of_executed_units: (\d+)", text)
    runs = int(execs[-1]) if execs else int(statuses[-1][0]) if statuses else 0
    cov, ft, corpus, corpus_size = statuses[-1][1:] if statuses else ("?", "?", "?", "?")
    line = (
        f"{name:<9} {runs:>10} {elapsed:>7.0f} {runs / elapsed:>8.0f} {cov:>6} {ft:>7} {corpus:>6} {corpus_size:>8}"
    )
    if result.returncode != 0:
        crash = re.search(r"Test unit written to (\S+)", text)
        tail = "\n".join(text.splitlines()[-40:])
        print(f"\n{name}: FAILED (exit {result.returncode}); end of {log.relative_to(ROOT)}:\n{tail}\n", flush=True)
        return False, line + f"  FAILED: {crash.group(1) if crash else log}"
    return True, line + (f"  known bugs hit: {', '.join(known)}" if known else "")


def coverage(names: list[str]) -> int:
    """Line coverage of looper's code by each target's seeds and corpus (coverage.py)."""
    for name in names:
        data = FUZZ_DIR / "logs" / f".coverage.{name}"
        data.parent.mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "coverage", "run", f"--data-file={data}", "--branch",
             str(FUZZ_DIR / f"fuzz_{name}.py"), "--replay"],
            cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip  (an input that fails is reported on stderr; its coverage still counts)
        print(f"== {name}")
        subprocess.run(
            [sys.executable, "-m", "coverage", "report", f"--data-file={data}", f"--include={','.join(SOURCES[name])}"],
            cwd=ROOT, check=True,
        )  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="per target (default 20)")
    parser.add_argument("--coverage", action="store_true", help="report line coverage of the corpora instead")
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    args, extra = parser.parse_known_args()
    args.targets = args.targets or list(TARGETS)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"no such target: {', '.join(sorted(unknown))}")
    if args.coverage:
        return coverage(args.targets)
    rows, ok = [], True
    for name in args.targets:
        print(f"fuzz: {name} for {args.seconds} s", flush=True)
        passed, row = fuzz(name, args.seconds, extra)
        ok &= passed
        rows.append(row)
    print(f"\n{'target':<9} {'execs':>10} {'seconds':>7} {'execs/s':>8} {'cov':>6} {'ft':>7} {'corpus':>6} {'bytes':>8}")
    print("\n".join(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
