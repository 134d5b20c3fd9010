#!/usr/bin/env python3
"""Record how long real Postfix 3.7 with Dovecot 2.3 SASL takes to refuse a
login (not a test; ground truth for the postfix persona's AUTH pacing).

Run as root from the repository root:

    python tests/record_sasl_timing.py [--clients N] [--first M] [--repeat K]

It starts a private Dovecot (passwd-file user, only an auth socket, the
Debian defaults otherwise: auth_failure_delay 2 s) and a private Postfix on
127.0.0.62:25 with `smtpd_sasl_type = dovecot` against that socket, as
tests/record_postfix.py's "sasl" group does (its own address and folders, so
that it does not meet other recordings). Then, for each of N fresh client
addresses 127.0.0.71, .72, ...: one session of M failed logins, then a second
session from the same address with K more. The failures cycle through
AUTH PLAIN with an initial response, AUTH LOGIN and AUTH PLAIN without one;
for the last two it also times the first 334 prompt (the one that follows a
failure, except in the session's first attempt) and the second.

Writes tests/data/postfix/sasl_failure_timing.json: every attempt with its
client, session, attempt number, the failures of that address before it, and
the measured milliseconds (from the end of our write to the reply's last
byte), and a summary (min, max, mean) per kind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tests.record_postfix as rp  # noqa: E402
from tests.postfix import PrivatePostfix  # noqa: E402

HOST = "127.0.0.62"
WORK = Path("/tmp/looper-record-sasl-timing")
OUT = REPO / "tests" / "data" / "postfix" / "sasl_failure_timing.json"
USER = rp.SASL_USER


def b64(s: str) -> bytes:
    import base64
    return base64.b64encode(s.encode())


class Client:
    def __init__(self, source: str) -> None:
        self.sock = socket.create_connection((HOST, 25), timeout=30, source_address=(source, 0))
        self.buf = b""
        self.read_reply()  # greeting

    def read_reply(self) -> bytes:
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) < 4 or line[3:4] != b"-":
                    reply = b"\r\n".join(lines[: i + 1]) + b"\r\n"
                    self.buf = self.buf[len(reply):]
                    return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def exchange(self, line: bytes) -> tuple[bytes, float]:
        self.sock.sendall(line + b"\r\n")
        t0 = time.monotonic()
        reply = self.read_reply()
        return reply, (time.monotonic() - t0) * 1000

    def close(self) -> None:
        try:
            self.exchange(b"QUIT")
        except OSError:
            pass
        self.sock.close()


MECHS = ("PLAIN-IR", "LOGIN", "PLAIN")


def attempt(c: Client, mech: str, n: int) -> dict:
    rec: dict = {"mechanism": mech}
    bad = f"wrong{n}"
    if mech == "PLAIN-IR":
        reply, ms = c.exchange(b"AUTH PLAIN " + b64(f"\0{USER}\0{bad}"))
    elif mech == "LOGIN":
        reply, ms = c.exchange(b"AUTH LOGIN")
        rec["prompt_ms"] = ms
        if reply.startswith(b"334 "):
            reply, rec["second_prompt_ms"] = c.exchange(b64(USER))
            if reply.startswith(b"334 "):
                reply, ms = c.exchange(b64(bad))
    else:
        reply, ms = c.exchange(b"AUTH PLAIN")
        rec["prompt_ms"] = ms
        if reply.startswith(b"334"):
            reply, ms = c.exchange(b64(f"\0{USER}\0{bad}"))
    rec["reply"] = reply.decode("latin-1")
    # fail_ms: the 535 (or other refusal); a refused prompt is its own reply.
    rec["fail_ms"] = ms
    for k in ("prompt_ms", "second_prompt_ms", "fail_ms"):
        if k in rec:
            rec[k] = round(rec[k], 1)
    return rec


def summary(values: list[float]) -> dict:
    return {"n": len(values), "min_ms": round(min(values), 1), "max_ms": round(max(values), 1),
            "mean_ms": round(statistics.mean(values), 1)} if values else {"n": 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--first", type=int, default=6, help="failures in the first session")
    ap.add_argument("--repeat", type=int, default=3, help="failures in the second session")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    rp.become_subreaper()
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "pf").mkdir(parents=True)
    for d in (WORK, WORK / "pf"):
        d.chmod(0o755)
    # Our own Dovecot folder and socket (record_postfix's module globals).
    rp.DOVECOT_DIR = WORK / "dovecot"
    rp.AUTH_SOCKET = rp.DOVECOT_DIR / "run" / "auth-postfix"
    profile = {"auth_mechanisms": "plain login", "disable_plaintext_auth": "no"}
    settings = {**rp.BASE_CF, **rp.SASL_CF, "smtpd_sasl_path": str(rp.AUTH_SOCKET)}
    dovecot = rp.PrivateDovecot(profile)
    dovecot.config = lambda orig=dovecot.config: orig().replace(
        "instance_name = looper-record", "instance_name = looper-sasl-timing")
    pf = PrivatePostfix(WORK / "pf", relay_ip=HOST, myhostname=rp.MYHOSTNAME, extra_main_cf=settings)
    attempts: list[dict] = []
    try:
        dovecot.start()
        pf.start()
        for i in range(args.clients):
            source = f"127.0.0.{71 + i}"
            failures = 0
            for session, count in ((1, args.first), (2, args.repeat)):
                c = Client(source)
                c.exchange(b"EHLO client.example.test")
                for n in range(count):
                    mech = MECHS[(n + i) % len(MECHS)]
                    rec = {"client": source, "session": session, "attempt": n + 1,
                           "address_failures_before": failures, **attempt(c, mech, n)}
                    failures += 1
                    attempts.append(rec)
                    print(json.dumps(rec), flush=True)
                c.close()
    finally:
        pf.stop()
        dovecot.stop()
        rp.reap()

    def pick(key: str, cond) -> list[float]:
        return [a[key] for a in attempts if key in a and cond(a)]

    first = lambda a: a["address_failures_before"] == 0 and a["reply"].startswith("535")  # noqa: E731
    later = lambda a: a["address_failures_before"] > 0 and a["reply"].startswith("535")  # noqa: E731
    doc = {
        "description": __doc__.split("\n\n")[0],
        "how": "tests/record_sasl_timing.py "
               f"--clients {args.clients} --first {args.first} --repeat {args.repeat}",
        "postfix_version": rp.postfix_version(),
        "dovecot": {"version": "2.3.19.1", **profile, "auth_failure_delay": "2 secs (default)"},
        "postfix_settings": settings,
        "summary": {
            "first_failure": summary(pick("fail_ms", first)),
            "later_failure": summary(pick("fail_ms", later)),
            "later_failure_new_session": summary(
                pick("fail_ms", lambda a: a["session"] == 2)),
            "prompt_fresh": summary(pick("prompt_ms", first)),
            "prompt_after_failure": summary(pick("prompt_ms", later)),
            "second_prompt": summary(pick("second_prompt_ms", lambda a: True)),
            "refused_454": summary(pick("fail_ms", lambda a: a["reply"].startswith("454"))),
        },
        "attempts": attempts,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["summary"], indent=1))
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
