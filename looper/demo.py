"""`looper demo`: the trap at work in half a minute, on loopback, unprivileged.

The trap listens on 127.0.0.1 at a high port; four simulated relays
(looper/relaysim.py) on 127.0.0.2 to 127.0.0.5 meet it:

- 127.0.0.2, an open relay with a hop limit: the trap dials it back and the
  message loops through it, one Received: header more each pass, until its
  hop limit refuses it;
- 127.0.0.3, an open relay that notices its own name in the EHLO reply and
  gives up at once (Postfix and sendmail do);
- 127.0.0.4, a relay that refuses to relay;
- 127.0.0.5, a spammer whose port 25 is closed: the dial-back is refused, it
  meets the emulated relay, logs in with a weak password and leaves a message.

Every event is shown as it is logged; at the end, what the trap concluded
about each address, from its own log. Everything stops by itself: each step
has a deadline, and nothing is left running or written outside a temporary
folder (kept with --keep).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import sys
import tempfile
from typing import TextIO

from looper.analysis.logs import analyse
from looper.analysis.report import build_report
from looper.config import config_from_mapping
from looper.eventlog import open_event_log
from looper.relaysim import RelaySim, free_port
from looper.view import render

TRAP = "127.0.0.1"
LOOPING, SELF_AWARE, REFUSING, SPAMMER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
HOP_LIMIT = 10
STEP_SECONDS = 15.0  # the longest any one step may take: the demo ends within 30 s
MESSAGE = (
    b"From: <win@lottery.example>\r\n"
    b"To: <you@spamtrap.example>\r\n"
    b"Subject: You have won\r\n"
    b"Message-ID: <demo-{tag}@lottery.example>\r\n"
    b"\r\n"
    b"Claim your prize.\r\n"
)


def _message(tag: str) -> bytes:
    return MESSAGE.replace(b"{tag}", tag.encode())


def _spammer(port: int) -> str:
    """A spammer's session with the emulated relay (smtplib, in a thread)."""
    with smtplib.SMTP(TRAP, port, source_address=(SPAMMER, 0), timeout=STEP_SECONDS) as client:
        client.ehlo("spambot.example")
        client.login("admin", "admin")  # one of the weak pairs it accepts
        client.sendmail("win@lottery.example", ["victim@elsewhere.example"], _message("spam"))
    return "sent"


async def run_demo(folder: str, out: TextIO, colour: bool) -> dict:
    from looper.net.server import Trap  # the demo runs the real trap, in this process

    port = free_port(TRAP)
    dialback_port = free_port(LOOPING, SELF_AWARE, REFUSING, SPAMMER)
    settings = {
        "sensor": "demo.looper.test",
        "shutdown_grace_s": 1,
        "listen": {"smtp": [f"{TRAP}:{port}"], "pop3": [], "pop3s": []},
        "dialback": {"port": dialback_port, "allow_private": True, "timeout": 2},
        "smtp": {"hostname": "mx.demo.looper.test"},
        "log": {"dir": folder},
    }
    config = config_from_mapping(settings, "looper demo")
    eventlog = open_event_log(config.sensor, config.log.dir, max_bytes=1 << 26, backups=1)
    eventlog.listeners.append(lambda record: out.write(render(record, colour=colour) + "\n"))
    trap = Trap(config, eventlog)
    relays = [
        RelaySim(LOOPING, dialback_port, trap=(TRAP, port), hop_limit=HOP_LIMIT),
        RelaySim(SELF_AWARE, dialback_port, trap=(TRAP, port), notice_own_name=True),
        RelaySim(REFUSING, dialback_port, trap=(TRAP, port), refuse_relay=True),
    ]
    try:
        await trap.start()
        for relay in relays:
            await relay.start()
        for relay in relays:
            await relay.inject("win@lottery.example", "you@spamtrap.example", _message(relay.host))
        spam = asyncio.create_task(asyncio.to_thread(_spammer, port))
        for relay in relays:
            await relay.wait_idle(STEP_SECONDS)
        await asyncio.wait_for(spam, STEP_SECONDS)
    finally:
        for relay in relays:
            await relay.stop()
        await trap.stop()
        eventlog.close()
    analysis, stats = analyse([os.path.join(folder, "events.jsonl")], quiet_seconds=config.analysis.quiet_seconds)
    return build_report(analysis, stats)


def summary(report: dict) -> list[str]:
    """What the trap concluded, an address a line."""
    lines = ["", "What the trap concluded, from its own log (looper report has the details):"]
    chains = {c["relay_ip"]: c for c in report["chains"]}
    for relay in sorted(report["relays"], key=lambda r: r["ip"]):
        verdict = relay["verdict"]
        if verdict == "open_relay":
            chain = chains.get(relay["ip"], {})
            how = f"{chain.get('end_code')} {chain.get('end_text')}" if chain.get("end_code") else chain.get("end")
            said = (f"an OPEN RELAY: its own server took the message {relay['accepted_passes']} times; the loop "
                    f"ended at {relay['hop_limit']} hops ({how})")
        elif verdict == "loop_protected":
            said = "loop protected: it quit on seeing its own name (splice.ehlo_name: mask would test it further)"
        elif verdict == "refuses_relay":
            said = "not an open relay: its own server refused the recipient"
        elif verdict == "unreachable":
            said = (f"its port 25 is closed, so it met the emulated relay: {relay['logins']} login(s),"
                    f" {relay['messages']} message(s) captured")
        else:
            said = verdict or "-"
        lines.append(f"  {relay['ip']:<11} {said}")
    for protocol, found in report["credentials"].items():
        pairs = ", ".join(f"{c['username']}:{c['password']}" for c in found["top"][:3])
        lines.append(f"  credentials tried ({protocol}): {pairs}")
    return lines


def main(keep: bool = False, out: TextIO = sys.stdout) -> int:
    from looper.tail import colour_wanted

    folder = tempfile.mkdtemp(prefix="looper-demo-")
    try:
        out.write(f"looper demo: the trap on {TRAP}, relays on {LOOPING} to {SPAMMER}; log in {folder}\n\n")
        report = asyncio.run(run_demo(folder, out, colour_wanted(out)))
        out.write("\n".join(summary(report)) + "\n")
    finally:
        if keep:
            out.write(f"\nThe log and the captured mail are in {folder} (looper report {folder}/events.jsonl)\n")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
