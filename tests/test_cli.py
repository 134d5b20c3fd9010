"""`looper run` as an operator starts it: a process, a config file, a signal."""

import json
import signal
import socket
import subprocess
import sys
import time

from tests.conftest import free_port


def test_run_serves_until_sigterm(tmp_path):
    port = free_port()
    config = tmp_path / "looper.yaml"
    config.write_text(
        f"sensor: cli-test\nlisten: {{smtp: ['127.0.0.1:{port}']}}\n"
        f"dialback: {{port: 1, allow_private: true}}\nlog: {{dir: '{tmp_path / 'logs'}'}}\n"
        "smtp: {hostname: mx.cli.test}\n"
    )
    trap = subprocess.Popen(
        [sys.executable, "-m", "looper", "run", "-c", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.6", 0))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and trap.poll() is None, trap.stderr.read() if trap.poll() else "slow"
                time.sleep(0.05)
        with client:  # nothing listens on 127.0.0.6:1: the emulated relay answers
            assert client.recv(1024) == b"220 mx.cli.test ESMTP Postfix (Debian/GNU)\r\n"
            client.sendall(b"QUIT\r\n")
            assert client.recv(1024) == b"221 2.0.0 Bye\r\n"
        trap.send_signal(signal.SIGTERM)
        assert trap.wait(15) == 0
    finally:
        trap.kill()
        trap.wait()
    stderr = trap.stderr.read()
    assert f"listening on 127.0.0.1:{port}, dialing back on port 1" in stderr
    events = [json.loads(line) for line in (tmp_path / "logs" / "events.jsonl").read_text().splitlines()]
    assert [e["eventid"] for e in events] == [
        "looper.session.connect", "looper.dialback.failed", "looper.command.input", "looper.session.closed",
    ]
    assert events[-1]["mode"] == "emulate" and events[-1]["reason"] == "closed_by_server"
    assert {e["sensor"] for e in events} == {"cli-test"}


def test_run_says_why_it_cannot_listen(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "looper.yaml"
        config.write_text(f"listen: {{smtp: ['127.0.0.1:{port}']}}\nlog: {{dir: '{tmp_path / 'logs'}'}}\n")
        result = subprocess.run(
            [sys.executable, "-m", "looper", "run", "-c", str(config)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
