"""`looper run` as an operator starts it: a process, a config file, a signal."""

import errno
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from looper import cli
from tests.conftest import free_port, shipped_config_here


@pytest.mark.parametrize(("event_loop", "runs_on"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_run_serves_until_sigterm(tmp_path, event_loop, runs_on):
    port = free_port()
    config = tmp_path / "looper.yaml"
    config.write_text(
        f"sensor: cli-test\nevent_loop: {event_loop}\nlisten: {{smtp: ['127.0.0.1:{port}'], imap: [], imaps: [], pop3: [], pop3s: []}}\n"
        f"dialback: {{port: 1, allow_private: true}}\nlog: {{dir: '{tmp_path / 'logs'}'}}\n"
        "smtp: {hostname: mx.cli.test}\nrun_as: null\n"  # as root too: test_privileges.py drops
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
    assert f"on {runs_on}'s event loop" in stderr  # auto: uvloop, which the test extra installs
    events = [json.loads(line) for line in (tmp_path / "logs" / "events.jsonl").read_text().splitlines()]
    assert [e["eventid"] for e in events] == [
        "looper.session.connect", "looper.dialback.failed", "looper.relay.verdict", "looper.command.input",
        "looper.session.closed",
    ]
    assert events[2]["verdict"] == "unreachable"  # the live analysis, right after its evidence
    assert events[-1]["mode"] == "emulate" and events[-1]["reason"] == "closed_by_server"
    assert {e["sensor"] for e in events} == {"cli-test"}


def test_run_says_why_it_cannot_listen(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "looper.yaml"
        config.write_text(f"listen: {{smtp: ['127.0.0.1:{port}'], imap: [], imaps: [], pop3: [], pop3s: []}}\nlog: {{dir: '{tmp_path / 'logs'}'}}\nrun_as: null\n")
        result = subprocess.run(
            [sys.executable, "-m", "looper", "run", "-c", str(config)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "in use" in result.stderr


def looper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "looper", *args], capture_output=True, text=True, timeout=30)


def config_file(tmp_path, smtp: str = "") -> str:
    """A config that would start (a free port, a log.dir of its own) but for `smtp`."""
    config = tmp_path / "looper.yaml"
    config.write_text(
        f"listen: {{smtp: ['127.0.0.1:{free_port()}'], imap: [], imaps: [], pop3: [], pop3s: []}}\nlog: {{dir: '{tmp_path / 'logs'}'}}\n"
        f"smtp: {{hostname: mx.cli.test, {smtp}}}\nrun_as: null\n"
    )
    return str(config)


def assert_both_commands_refuse(config: str, line: str) -> None:
    """check-config and run name the same problem in one line, exit status 2."""
    for command in ("check-config", "run"):
        result = looper(command, "-c", config)
        assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", ""), command


def test_a_missing_certificate_stops_check_config_and_run_alike(tmp_path):
    missing = tmp_path / "missing.pem"
    config = config_file(tmp_path, f"tls_cert: {missing}")
    assert_both_commands_refuse(config, f"{config}: smtp.tls_cert: cannot read {missing}: No such file or directory")


def test_a_key_of_another_certificate_stops_check_config_and_run_alike(tmp_path):
    from looper.net.tls import make_self_signed

    cert, _ = make_self_signed("mx.cli.test")
    _, other_key = make_self_signed("other.cli.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "other.key").write_bytes(other_key)
    config = config_file(tmp_path, f"tls_cert: {tmp_path / 'cert.pem'}, tls_key: {tmp_path / 'other.key'}")
    assert_both_commands_refuse(
        config, f"{config}: smtp.tls_key: {tmp_path / 'other.key'} is not the key of the certificate in {tmp_path / 'cert.pem'}"
    )


def test_a_log_dir_that_cannot_be_made_stops_check_config_and_run_alike(tmp_path):
    (tmp_path / "logs").write_text("a file where the folder should be")
    config = config_file(tmp_path)
    assert_both_commands_refuse(config, f"{config}: log.dir: {tmp_path / 'logs'} is not a folder")


def test_a_local_syslog_socket_that_is_not_there_stops_check_config_and_run_alike(tmp_path):
    config = tmp_path / "looper.yaml"
    config.write_text(f"{open(config_file(tmp_path)).read()}syslog: {{address: {tmp_path / 'lgo'}}}\n")
    assert_both_commands_refuse(
        str(config), f"{config}: syslog.address: {tmp_path / 'lgo'} is no socket: is the syslog daemon running?"
    )


def test_run_reports_a_log_dir_that_fails_after_the_check(tmp_path, monkeypatch, capsys):
    # os.access can say yes where open() then says no (NFS, ACLs, a race).
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "logs"))

    monkeypatch.setattr(cli, "open_event_log", refuse)
    config = config_file(tmp_path)
    assert cli.main(["run", "-c", config]) == 2
    assert capsys.readouterr().err == f"{config}: log.dir: cannot write {tmp_path / 'logs'}: Permission denied\n"


def test_run_reports_tls_trouble_that_comes_after_the_check(tmp_path, monkeypatch, capsys):
    from looper.net import emulate
    from looper.net.tls import TLSSetupError

    def refuse(*args, **kwargs):
        raise TLSSetupError(f"cannot write the self-signed TLS certificate to {tmp_path}/logs/tls: Permission denied")

    monkeypatch.setattr(emulate, "server_context", refuse)
    config = config_file(tmp_path)
    assert cli.main(["run", "-c", config]) == 2
    assert capsys.readouterr().err == (
        f"{config}: log.dir: cannot write the self-signed TLS certificate to {tmp_path}/logs/tls: Permission denied\n"
    )


def test_run_names_the_address_it_cannot_bind_and_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "looper.yaml"
        config.write_text(
            f"listen: {{smtp: ['127.0.0.2:{free_port('127.0.0.2')}', '127.0.0.1:{port}'], imap: [], imaps: [], pop3: [], pop3s: []}}\n"
            f"log: {{dir: '{tmp_path / 'logs'}'}}\nsmtp: {{hostname: mx.cli.test}}\nrun_as: null\n"
        )
        result = looper("run", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr == (
        f"{config}: listen.smtp: cannot listen on 127.0.0.1:{port}: Address already in use;"
        " stop the program that listens there, or change listen.smtp\n"
    )


def test_a_port_that_needs_privileges_says_how_to_get_them():
    # The tests may run as root, where bind() never says EACCES: the line alone.
    assert cli.cannot_listen_line("f.yaml", "listen.smtp", "0.0.0.0:25", errno.EACCES) == (
        "f.yaml: listen.smtp: cannot listen on 0.0.0.0:25: Permission denied;"
        " run as root or grant CAP_NET_BIND_SERVICE"
    )


def test_check_config_into_a_closed_pipe_exits_quietly(tmp_path):
    # `looper check-config | head -1`, once head has gone: closing our end of
    # the pipe before the child writes makes that certain, not a race.
    child = subprocess.Popen(
        [sys.executable, "-m", "looper", "check-config", "-c", str(shipped_config_here(tmp_path))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    child.stdout.close()
    stderr = child.stderr.read()
    assert child.wait(30) == 1
    assert stderr == ""


def test_check_config_shows_the_collectors_but_never_the_hpfeeds_secret(tmp_path, capsys):
    config = tmp_path / "looper.yaml"
    config.write_text(
        f"run_as: null\nlog: {{dir: '{tmp_path / 'logs'}'}}\n"
        "syslog: {address: '192.0.2.10:6514', transport: tcp, facility: local3}\n"
        "hpfeeds: {host: broker.example.org, ident: trap-7, secret: Tr0ub4dor&3-of-ours}\n"
        "metrics: {listen: '127.0.0.1:9425'}\n"
    )
    assert cli.main(["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Tr0ub4dor" not in out
    assert "  secret: (hidden, 19 characters)\n" in out
    assert "  address: 192.0.2.10:6514\n  transport: tcp\n  facility: local3\n" in out
    assert "metrics:\n  listen: 127.0.0.1:9425\n" in out
