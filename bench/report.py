"""How fast `looper report` reads a big log, and in how much memory.

Makes a realistic log of --events events (default 1,000,000): thousands of
relay addresses and tens of thousands of loop chains (most relays hold the
message after a pass or two; the rest loop to Postfix's, Exim's or
sendmail's limit), each pass a reflected session of ten events, and
attackers on the emulated relay with logins and captured mail. Then times
`looper report --format json` over it (a child process; its peak resident
memory from getrusage) beside the reference for raw reading speed, `jq -c
'select(.eventid=="looper.reflect.message")' | wc -l` on the same file.

    python bench/report.py [--quick | --events N] [--keep FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from harness import machine, ratio, target

FLOOR_EVENTS_PER_SECOND = 200_000
FLOOR_MIB = 200
MTAS = (  # greeting, accepting reply, hops at the end, the refusal (None: silent)
    ("ESMTP Postfix (Debian/GNU)", "2.0.0 Ok: queued as 4XyZ", 49, "5.4.0 Error: too many hops"),
    ("ESMTP Exim 4.96 Mon, 30 Nov 2026 10:00:00 +0000", "OK id=1xV4pM-0001xg-2P", 30, None),
    ("ESMTP Sendmail 8.17.1.9/8.17.1.9/Debian-2+deb12u2; Mon, 30 Nov 2026", "2.0.0 x Message accepted", 100, None),
)


def generate(path: str, total: int, rng: random.Random) -> dict[str, int]:
    relays = [f"198.51.{n // 250}.{n % 250 + 1}" for n in range(4000)]
    attackers = [f"203.0.{n // 250}.{n % 250 + 1}" for n in range(3000)]
    words = ["123456", "password", "admin", "qwerty", "letmein", "test", "welcome"]
    made = {"events": 0, "chains": 0}
    open_chains: list[list] = []  # relay, mta, chain id, hops so far, hops at which it stops
    now, serial = 1_790_000_000.0, 0
    with open(path, "w", encoding="utf-8") as out:
        def event(session: str, ip: str, eventid: str, **fields) -> None:
            nonlocal now
            now += 0.015
            whole = int(now)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((now - whole) * 1e6):06d}Z"
            out.write(json.dumps({"timestamp": stamp, "eventid": eventid, "session": session, "sensor": "bench",
                                  "protocol": "smtp", "src_ip": ip, "src_port": 40000 + serial % 20000,
                                  "dst_ip": "192.0.2.25", "dst_port": 25, **fields}, separators=(",", ":")) + "\n")
            made["events"] += 1

        while made["events"] < total:
            serial += 1
            session = f"{serial:012x}"
            if rng.random() < 0.7:  # a loop pass
                if len(open_chains) < 2000 and (not open_chains or rng.random() < 0.2):
                    mta = rng.choice(MTAS)
                    made["chains"] += 1
                    stop = mta[2] if rng.random() < 0.08 else rng.randint(1, 3)  # most relays hold it
                    open_chains.append([rng.choice(relays), mta, f"{made['chains']:016x}", 0, stop])
                chain = rng.choice(open_chains)
                relay, (greeting, accepted, limit, refusal), chain_id, hops, stop = chain
                chain[3] = hops = hops + 1
                name = f"mx{relay.replace('.', '-')}.example"
                event(session, relay, "looper.session.connect")
                event(session, relay, "looper.dialback.ok", target=f"{relay}:25", connect_ms=12.5)
                event(session, relay, "looper.reflect.greeting", code=220, text=f"{name} {greeting}", pregreet_bytes=0)
                event(session, relay, "looper.reflect.helo", verb="EHLO", name=name, code=250, reply="trap.example")
                event(session, relay, "looper.reflect.ehlo_reply", code=250, name=name, starttls_stripped=True,
                      extensions=["PIPELINING", "SIZE 10240000", "ETRN", "8BITMIME"], masked_as="trap.example")
                event(session, relay, "looper.reflect.mail", address="spam@sender.test", params=["SIZE=900"],
                      code=250, reply="2.1.0 Ok")
                event(session, relay, "looper.reflect.rcpt", address="user@spamtrap.test", params=[], code=250,
                      reply="2.1.5 Ok")
                refused = hops >= stop and stop == limit and refusal is not None
                event(session, relay, "looper.reflect.message", mail_from="spam@sender.test",
                      rcpt_to=["user@spamtrap.test"], transport="data", size=900 + 60 * hops, sha256="ab" * 32,
                      received_hops=hops, headers_truncated=False, message_id=f"<{chain_id}@sender.test>",
                      subject="Cheap watches", chain=chain_id, complete=True, code=554 if refused else 250,
                      reply=refusal if refused else accepted, path=None)
                event(session, relay, "looper.reflect.command", verb="QUIT", argument=None, code=221,
                      reply="2.0.0 Bye")
                event(session, relay, "looper.session.closed", mode="reflect", reason="closed", duration=0.05,
                      bytes_in=1500, bytes_out=600)
                if hops >= stop:
                    open_chains.remove(chain)
            else:  # an attacker on the emulated relay
                ip = rng.choice(attackers)
                event(session, ip, "looper.session.connect")
                event(session, ip, "looper.dialback.failed", target=f"{ip}:25", reason="refused", detail="refused")
                event(session, ip, "looper.command.input", input="EHLO " + ip)
                event(session, ip, "looper.smtp.helo", verb="EHLO", name=ip, claims_our_name=False,
                      reserved_name=False)
                for _ in range(rng.randint(1, 4)):
                    event(session, ip, "looper.command.input", input="AUTH LOGIN")
                    event(session, ip, "looper.login.failed", mechanism="LOGIN", username=rng.choice(words),
                          password=rng.choice(words) + str(rng.randint(0, 50)), reason="bad credentials")
                if rng.random() < 0.3:
                    event(session, ip, "looper.smtp.message", queue_id="4XyZ1", mail_from=f"x{serial}@spam.test",
                          rcpt_to=[f"v{rng.randint(0, 999)}@example.org"], username=None, size=2000, sha256="cd" * 32,
                          path="logs/messages/x.eml", received_hops=1, message_id=None,
                          subject=f"Offer {rng.randint(0, 300)}", received_header="from x", transport="data")
                event(session, ip, "looper.session.closed", mode="emulate", reason="closed_by_client", duration=1.5,
                      bytes_in=300, bytes_out=600)
    return made


def timed(command: list[str] | str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and peak RSS (MiB) of one child (a shell line: of the largest process in it)."""
    started = time.perf_counter()
    done = subprocess.run(command, shell=isinstance(command, str), capture_output=True, text=True)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 events (a few seconds)")
    parser.add_argument("--keep", metavar="FILE", help="keep the generated log here")
    args = parser.parse_args()
    if args.quick:
        args.events = 200_000
    print(machine("jq"))
    folder = tempfile.mkdtemp(prefix="looper-bench-report-")
    try:
        log, result = os.path.join(folder, "events.jsonl"), os.path.join(folder, "report.json")
        started = time.perf_counter()
        made = generate(log, args.events, random.Random(7))
        os.sync()  # its pages written back now, not while looper reads it
        print(f"log: {made['events']:,} events, {made['chains']:,} chains, {os.path.getsize(log) / 1e6:.0f} MB"
              f" (made in {time.perf_counter() - started:.1f} s)")
        seconds, peak_mib, done = timed([sys.executable, "-m", "looper", "report", "--format", "json", "-o", result,
                                         log])
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return 1
        rate = made["events"] / seconds
        summary = json.load(open(result))["summary"]
        print(f"looper report --format json: {seconds:.2f} s, {rate:,.0f} events/s, peak RSS {peak_mib:.0f} MiB")
        print(f"  found {summary['verdicts']}; {summary['chains']:,} chains: {summary['chain_ends']}")
        print(target(f"{rate:,.0f} events/s >= floor {FLOOR_EVENTS_PER_SECOND:,}", rate >= FLOOR_EVENTS_PER_SECOND))
        print(target(f"peak RSS {peak_mib:.0f} MiB < {FLOOR_MIB} MiB", peak_mib < FLOOR_MIB))
        if shutil.which("jq"):
            jq_seconds, _, done = timed(f"jq -c 'select(.eventid==\"looper.reflect.message\")' {log} | wc -l")
            print(f"jq select | wc -l (reference): {jq_seconds:.2f} s, {made['events'] / jq_seconds:,.0f} events/s;"
                  f" looper report is {ratio(jq_seconds, seconds)} jq's speed ({done.stdout.strip()} passes)")
        else:
            print("jq is not installed (apt-get install jq): no reference figure")
        if args.keep:
            shutil.copy(log, args.keep)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
