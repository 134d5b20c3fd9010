"""Transcripts and `looper replay`, on real sockets.

A spliced loop pass (the relay simulator) and an emulated session (smtplib)
are replayed by `python -m looper replay` and read back as what each client
itself sent and received, in order; a big message is cut at the per-session
budget; TLS through a splice is counted, not kept; --speed plays in time.
"""

from __future__ import annotations

import asyncio
import ast
import base64
import errno
import gzip
import io
import json
import re
import smtplib
import ssl
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from looper.eventlog import LinesLost, SessionInfo
from looper.relaysim import RelaySim, dot_stuff
from looper.replay import default_transcripts, describe, find_session, replay
from looper.transcripts import TranscriptLog
from tests.conftest import EMULATED_CLIENT, EMULATED_HOST, free_port

RELAY = "127.0.0.2"
ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\+\d+\.\d{3}s ([CS]): (.*)$")

MESSAGE = (
    b"From: <spam@sender.test>\r\n"
    b"To: <user@spamtrap.test>\r\n"
    b"Subject: transcribed\r\n"
    b"Message-ID: <replay-1@sender.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".A line that starts with a dot.\r\n"
)


def looper_replay(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "looper", "replay", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def conversation(output: str) -> list[str]:
    """The replay's C: and S: lines, without their times."""
    return [f"{m[1]}: {m[2]}" for m in map(LINE.match, output.splitlines()) if m and m[2] != "[EOF]"]


def transcript_lines(log_dir: Path) -> list[dict]:
    text = (log_dir / "transcripts.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def kept_bytes(record: dict) -> bytes:
    return record["text"].encode() if "text" in record else base64.b64decode(record["b64"])


async def test_a_spliced_loop_pass_replays_as_the_relay_saw_it(start_trap, tmp_path):
    relay = RelaySim(RELAY, 0, trap=("127.0.0.1", 0), hop_limit=3)
    await relay.start()
    try:
        trap = await start_trap(relay.port)
        relay.trap = (trap.host, trap.port)
        await relay.inject("spam@sender.test", "user@spamtrap.test", MESSAGE)
        assert await relay.wait_idle(30), relay
        await trap.quiet()
    finally:
        await relay.stop()
    await trap.quiet()
    first = trap.events.of("looper.session.closed")[0]
    assert first["mode"] == "reflect"

    log = str(tmp_path / "logs" / "transcripts.jsonl")
    done = looper_replay(first["session"], log)
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"session {first['session']} (reflect, smtp) from {RELAY}:")
    assert lines[-1].startswith("+") and " end: closed" in lines[-1]
    assert f"the client sent {first['bytes_in']} bytes, the server {first['bytes_out']}" in lines[-1]

    # What the relay's delivery agent sent and read on its first connection,
    # in its own words: the replay says the same, line for line, in order.
    saw, connections = [], 0
    for entry in relay.client_transcript:
        connections += entry.startswith("-: connection ")
        if connections > 1:
            break
        if entry.startswith("-:") or entry == "C: <half-close>":
            continue
        if re.fullmatch(r"C: <\d+ octets of DATA> \.", entry):
            saw += [f"C: {line.decode()}" for line in dot_stuff(MESSAGE).split(b"\r\n")[:-1]] + ["C: ."]
        else:
            saw.append(entry)
    assert saw[0] == "S: 220 relay-127.0.0.2.sim ESMTP RelaySim"
    assert conversation(done.stdout) == saw

    # A prefix of the id will do; the trap's config finds the file.
    config = tmp_path / "looper.yaml"
    config.write_text(f"log: {{dir: {tmp_path / 'logs'}}}\n")
    assert looper_replay(first["session"][:8], "-c", str(config)).stdout == done.stdout


async def test_an_emulated_session_replays_what_smtplib_sent_and_read(relay, tmp_path):
    trap = await relay()
    said: list[str] = []

    class Recording(smtplib.SMTP):
        """smtplib's own debug output: every byte it sent, every reply line it read."""

        def _print_debug(self, *args) -> None:
            if args[0] == "send:":  # a command (str) or the message (bytes)
                sent = ast.literal_eval(args[1])
                sent = sent.encode() if isinstance(sent, str) else sent
                said.extend(f"C: {line.decode()}" for line in sent.split(b"\r\n")[:-1])
            elif args[0] == "reply:" and args[1].startswith("b"):
                said.append(f"S: {ast.literal_eval(args[1]).decode().removesuffix(chr(13) + chr(10))}")

    def session() -> None:
        with Recording(local_hostname="spam.example.org", source_address=(EMULATED_CLIENT, 0), timeout=10) as client:
            client.set_debuglevel(1)
            client.connect(trap.host, trap.port)
            client.ehlo()
            client.sendmail("a@spam.example", ["victim@far.example.com"], MESSAGE)

    await asyncio.to_thread(session)
    (closed,) = await trap.events.wait_for("looper.session.closed")
    assert closed["mode"] == "emulate"
    done = looper_replay(closed["session"], str(tmp_path / "logs" / "transcripts.jsonl"))
    assert said[0] == f"S: 220 {EMULATED_HOST} ESMTP Postfix (Debian/GNU)"
    assert "C: .A line that starts with a dot." not in said and "C: ..A line that starts with a dot." in said
    assert conversation(done.stdout) == said
    assert done.stdout.splitlines()[0].startswith(f"session {closed['session']} (emulate, smtp) from {EMULATED_CLIENT}:")

    as_json = [json.loads(line) for line in looper_replay(closed["session"], str(tmp_path / "logs" / "transcripts.jsonl"),
                                                          "--json").stdout.splitlines()]
    assert as_json == transcript_lines(tmp_path / "logs")
    assert as_json[-1]["end"] == closed["reason"] and as_json[-1]["cut"] == 0
    assert as_json[-1]["bytes"] == {"client": closed["bytes_in"], "server": closed["bytes_out"]}
    (connect,) = trap.events.of("looper.session.connect")
    assert abs(datetime.fromisoformat(as_json[0]["start"]) - datetime.fromisoformat(connect["timestamp"])) < timedelta(seconds=0.1)
    times = [line["t"] for line in as_json]
    assert times == sorted(times) and times[0] >= 0


async def test_a_session_keeps_at_most_its_budget_and_says_how_much_was_cut(relay, tmp_path):
    trap = await relay(transcripts={"session_bytes": 1000})
    body = b"x" * 76 + b"\r\n"
    big = MESSAGE + body * 2000  # 156 KB

    def session() -> None:
        with smtplib.SMTP(trap.host, trap.port, local_hostname="spam.example.org",
                          source_address=(EMULATED_CLIENT, 0), timeout=10) as client:
            client.sendmail("a@spam.example", ["victim@far.example.com"], big)

    await asyncio.to_thread(session)
    (closed,) = await trap.events.wait_for("looper.session.closed")
    records = transcript_lines(tmp_path / "logs")
    assert sum(len(kept_bytes(r)) for r in records if "dir" in r and not r.get("eof")) == 1000
    end = records[-1]
    total = closed["bytes_in"] + closed["bytes_out"]
    assert total > len(big)
    assert end["cut"] == total - 1000 and end["tls_bytes"] == 0
    assert (tmp_path / "logs" / "transcripts.jsonl").stat().st_size < 6000
    last = looper_replay(closed["session"], str(tmp_path / "logs" / "transcripts.jsonl")).stdout.splitlines()[-1]
    assert f"; {total - 1000} not kept (over transcripts.session_bytes)" in last


async def test_tls_through_a_splice_is_counted_not_kept(start_trap, tmp_path):
    # The client's own server is an emulated relay of a second trap, which
    # speaks STARTTLS; the first trap passes its EHLO reply unstripped.
    relay_port = free_port(RELAY)
    server = await start_trap(free_port(), listen={"smtp": [f"{RELAY}:{relay_port}"]},
                              dialback={"on_failure": "emulate"}, smtp={"hostname": "relay.tls.test"},
                              log={"dir": str(tmp_path / "relay-logs")})
    trap = await start_trap(relay_port, splice={"strip_starttls": False})

    def session() -> None:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP(trap.host, trap.port, local_hostname="spam.example.org", source_address=(RELAY, 0),
                          timeout=10) as client:
            client.starttls(context=context)
            client.sendmail("a@spam.example", ["victim@far.example.com"], MESSAGE)

    await asyncio.to_thread(session)
    (closed,) = await trap.events.wait_for("looper.session.closed")
    await server.quiet()
    assert closed["mode"] == "reflect"
    records = [r for r in transcript_lines(tmp_path / "logs") if r["session"] == closed["session"]]
    tls = next(n for n, r in enumerate(records) if r.get("tls"))
    assert [r.get("text") for r in records[:tls] if "text" in r][-2:] == ["STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n"]
    assert all("text" not in r and "b64" not in r for r in records[tls:])
    end = records[-1]
    assert end["tls_bytes"] > len(MESSAGE) and end["cut"] == 0
    assert end["bytes"]["client"] + end["bytes"]["server"] == sum(len(kept_bytes(r)) for r in records
                                                                  if "dir" in r and not r.get("eof")) + end["tls_bytes"]
    assert b"replay-1@sender.test" not in (tmp_path / "logs" / "transcripts.jsonl").read_bytes()
    # The relay's own server saw the conversation in the clear, and kept it.
    assert b"replay-1@sender.test" in (tmp_path / "relay-logs" / "transcripts.jsonl").read_bytes()

    done = looper_replay(closed["session"], str(tmp_path / "logs" / "transcripts.jsonl"))
    assert "-- TLS from here on: counted, not kept" in done.stdout
    assert f"; {end['tls_bytes']} in TLS, counted, not kept" in done.stdout.splitlines()[-1]


async def test_speed_plays_the_session_back_in_time(relay, tmp_path):
    trap = await relay()

    def session() -> None:
        with smtplib.SMTP(trap.host, trap.port, source_address=(EMULATED_CLIENT, 0), timeout=10) as client:
            client.ehlo("slow.example.org")
            time.sleep(1.0)
            client.noop()

    await asyncio.to_thread(session)
    (closed,) = await trap.events.wait_for("looper.session.closed")
    lines = find_session([str(tmp_path / "logs" / "transcripts.jsonl")], closed["session"])
    span = lines[-1][0]["t"] - lines[0][0]["t"]
    assert span >= 1.0
    out = io.StringIO()
    began = time.monotonic()
    replay(lines, out, speed=4.0)
    took = time.monotonic() - began
    assert span / 4 <= took < span / 4 + 1.0
    said = conversation(out.getvalue())
    assert said[said.index("C: noop") + 1] == "S: 250 2.0.0 Ok"
    # The command line, fast enough not to wait.
    done = looper_replay(closed["session"], str(tmp_path / "logs" / "transcripts.jsonl"), "--speed", "1000")
    assert conversation(done.stdout) == conversation(out.getvalue())


def test_an_unknown_or_ambiguous_session_is_one_line_and_exit_1(tmp_path):
    log = tmp_path / "transcripts.jsonl"
    log.write_text("".join(json.dumps({"session": s, "t": 0.0, "dir": "client", "text": "HELO x\r\n"},
                                      separators=(",", ":")) + "\n" for s in ("aaaa11112222", "aaaa33334444")))
    for session, problem in (("bbbb", "no session 'bbbb' in"), ("aaaa", "'aaaa' is the start of 2 sessions")):
        done = looper_replay(session, str(log), check=False)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"looper replay: {problem}") and done.stderr.count("\n") == 1
    assert conversation(looper_replay("aaaa3", str(log)).stdout) == ["C: HELO x"]
    done = looper_replay("aaaa", "-c", "/nonexistent.yaml", check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_a_session_is_read_across_rotated_and_gzipped_files(tmp_path):
    def line(t: float, **fields) -> bytes:
        return json.dumps({"session": "cafe00000001", "t": t, **fields}, separators=(",", ":")).encode() + b"\n"

    (tmp_path / "transcripts.jsonl.2.gz").write_bytes(gzip.compress(line(0.1, dir="server", text="220 hi\r\n")))
    (tmp_path / "transcripts.jsonl.1").write_bytes(line(0.2, dir="client", b64=base64.b64encode(b"EHLO \xff\x1b[2J\r\n").decode()))
    (tmp_path / "transcripts.jsonl").write_bytes(b'{"dropped":3,"since":"x","error":"ENOSPC"}\n' + line(0.3, dir="client", eof=True))
    paths = default_transcripts(str(tmp_path))
    assert [Path(p).name for p in paths] == ["transcripts.jsonl.2.gz", "transcripts.jsonl.1", "transcripts.jsonl"]
    out = io.StringIO()
    replay(find_session(paths, "cafe"), out)
    # Control characters come out escaped: a transcript cannot drive the terminal.
    assert out.getvalue() == "+0.100s S: 220 hi\n+0.200s C: EHLO \\xff\\x1b[2J\n+0.300s C: [EOF]\n"


class _FailingFile:
    """A LogFile whose disk is full until it is told otherwise."""

    def __init__(self) -> None:
        self.full = True
        self.batches: list[list[str]] = []

    def write(self, lines: list[str]) -> None:
        if self.full:
            raise LinesLost(0, OSError(errno.ENOSPC, "No space left on device"))
        self.batches.append(list(lines))

    def close(self) -> None:
        pass


def test_a_failed_write_is_counted_and_never_reaches_the_session(tmp_path):
    book = TranscriptLog(str(tmp_path / "t.jsonl"), sensor="s", session_bytes=100, max_bytes=1 << 20, backups=1)
    book._file = failing = _FailingFile()
    transcript = book.transcript(SessionInfo("feed00000001", "smtp", "192.0.2.1", 1, "192.0.2.2", 25), time.monotonic())
    buffer = bytearray(b"EHLO one\r\n")
    transcript.begin("emulate")
    transcript.client(memoryview(buffer))  # no running loop: written at once, and lost
    assert book.dropped == 2
    failing.full = False
    buffer[:] = b"XXXX one\r\n"  # a reused read buffer: what was kept is a copy
    transcript.client(memoryview(buffer)[:4])
    transcript.end("closed_by_client")
    lines = [json.loads(line) for batch in failing.batches for line in batch]
    assert lines[0]["dropped"] == 2 and lines[0]["error"].startswith("OSError")
    assert lines[1]["text"] == "XXXX" and lines[-1]["cut"] == 0  # lost lines are not cut by the budget
    assert book.dropped == 0


def test_transcripts_rotate_and_a_session_is_read_across_the_rotation(tmp_path):
    book = TranscriptLog(str(tmp_path / "transcripts.jsonl"), sensor="s", session_bytes=1 << 20, max_bytes=1 << 16,
                         backups=2)
    transcript = book.transcript(SessionInfo("beef00000001", "smtp", "192.0.2.1", 1, "192.0.2.2", 25), time.monotonic())
    transcript.begin("reflect")
    for number in range(3000):  # 3000 lines of about 80 bytes: more than three files of 64 KiB hold
        transcript.client(f"NOOP {number:05d}\r\n".encode())
    transcript.end("closed")
    book.close()
    paths = default_transcripts(str(tmp_path))
    assert [Path(p).name for p in paths] == ["transcripts.jsonl.2", "transcripts.jsonl.1", "transcripts.jsonl"]
    assert all(Path(p).stat().st_size <= 1 << 16 for p in paths)
    said = conversation("".join(f"{line}\n" for record, _ in find_session(paths, "beef") for line in describe(record)))
    # The oldest lines went with the oldest file; the rest reads in order.
    assert 1000 < len(said) < 3000 and said == [f"C: NOOP {n:05d}" for n in range(3000 - len(said), 3000)]
