"""`looper demo`: loops, a self-aware relay, a refusal and an emulated
login in one run, unprivileged, ended by itself, nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def demo_command() -> list[str]:
    """As root (CI), run it as nobody: the demo needs no privilege. (Unless
    nobody cannot run this Python: a pyenv build under /root.)"""
    command = [sys.executable, "-m", "looper", "demo"]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # The trap's message store starts a Python process of its own: nobody must be able to, too.
        start_python = "import looper.demo, subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"
        probe = subprocess.run([*NOBODY, sys.executable, "-c", start_python], capture_output=True, cwd="/",
                               timeout=30)
        if probe.returncode == 0:
            return [*NOBODY, *command]
    return command


def test_the_demo_shows_every_path_and_concludes_per_relay():
    started = time.monotonic()
    done = subprocess.run(demo_command(), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1"}, cwd="/")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 30
    out = done.stdout
    assert "\x1b[" not in out  # a pipe: no colour
    # The events as they happened: a loop to the hop limit, the emulated login.
    assert "reflect.message        PASS 10 hops" in out and "554 5.4.0 Error: too many hops" in out
    assert "reflect.self_detected  relay RECOGNISED ITSELF" in out
    assert "login.success          LOGIN ACCEPTED PLAIN admin:admin" in out
    assert "smtp.message           CAPTURED" in out
    # Its conclusions.
    conclusions = out.split("What the trap concluded")[1]
    assert re.search(r"127\.0\.0\.2 +an OPEN RELAY: .* ended at 10 hops \(554 5\.4\.0 Error: too many hops\)", conclusions)
    assert re.search(r"127\.0\.0\.3 +loop protected", conclusions)
    assert re.search(r"127\.0\.0\.4 +not an open relay", conclusions)
    assert re.search(r"127\.0\.0\.5 +its port 25 is closed, so it met the emulated relay: 1 login", conclusions)
    # Nothing left: its folder is gone.
    folder = re.search(r"log in (\S+)", out).group(1)
    assert not os.path.exists(folder)
