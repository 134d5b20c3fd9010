"""`make install` and contrib/: looper as a service.

The install goes into a folder of its own (PREFIX, SYSCONFDIR, LOGDIR,
UNITDIR, LOGROTATEDIR pointed there) with a user of its own (LOOPER_USER),
both removed after; it needs root, useradd, setpriv and the package index
that pip uses (for looper's dependencies). The service is then started as
systemd would start it (its user, CAP_NET_BIND_SERVICE alone), its log
rotated by the installed logrotate file, and reopened on SIGHUP, which the
file's postrotate sends through `systemctl reload` (no systemd in a test:
the test sends it).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.test_privileges import status_ids
from tests.test_reopen import wait_for_line
from tests.trapproc import read_stderr_until

CHECKOUT = Path(__file__).resolve().parent.parent
CONTRIB = CHECKOUT / "contrib"


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections and their settings (a setting may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_says_what_a_hardened_trap_needs():
    unit = unit_directives((CONTRIB / "looper.service").read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["User"] == "looper"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert (service["NoNewPrivileges"], service["ProtectSystem"], service["ProtectHome"], service["PrivateTmp"]) == \
        ("yes", "strict", "yes", "yes")
    assert service["ReadWritePaths"] == "/var/log/looper"
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].startswith("/opt/looper/bin/looper run ")
    assert service["ExecStart"].endswith(" -c /etc/looper/looper.yaml")
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # The shipped configuration's log.dir, once installed, is the one the unit may write.
    assert "  dir: logs\n" in (CHECKOUT / "config" / "looper.yaml").read_text()


def test_the_logrotate_file_rotates_both_logs_and_reloads():
    text = (CONTRIB / "looper.logrotate").read_text()
    assert "/var/log/looper/events.jsonl /var/log/looper/transcripts.jsonl {" in text
    for directive in ("daily", "maxsize", "compress", "delaycompress", "missingok", "notifempty", "postrotate"):
        assert f"\n    {directive}" in text, directive
    assert "systemctl reload looper.service" in text


def test_install_wants_root():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to be someone else")
    nobody = pwd.getpwnam("nobody")
    result = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "sh", "contrib/install.sh"],
        cwd=CHECKOUT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("install: run as root")


class Installed:
    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.user = user
        # A copy of the source, so that the second run sees the same source
        # as the first while others edit the checkout.
        self.source = root / "src"
        self.source.mkdir()
        for name in ("Makefile", "pyproject.toml", "README.md", "looper", "contrib", "config"):
            if (CHECKOUT / name).is_dir():
                shutil.copytree(CHECKOUT / name, self.source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(CHECKOUT / name, self.source / name)
        self.prefix = root / "opt" / "looper"
        self.sysconfdir = root / "etc" / "looper"
        self.logdir = root / "var" / "log" / "looper"
        self.unitdir = root / "etc" / "systemd" / "system"
        self.logrotatedir = root / "etc" / "logrotate.d"

    def make_install(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "--no-print-directory", "install", f"PREFIX={self.prefix}", f"SYSCONFDIR={self.sysconfdir}",
             f"LOGDIR={self.logdir}", f"UNITDIR={self.unitdir}", f"LOGROTATEDIR={self.logrotatedir}",
             f"LOOPER_USER={self.user}"],
            cwd=self.source, capture_output=True, text=True, timeout=600,
        )

    def snapshot(self) -> list:
        """Every file's name, mode, owner, size and time; the user and group."""
        found = []
        for folder, folders, files in os.walk(self.root):
            if Path(folder) == self.root and "src" in folders:
                folders.remove("src")
            for name in [*folders, *files]:
                status = os.lstat(os.path.join(folder, name))
                found.append((os.path.join(folder, name), status.st_mode, status.st_uid, status.st_gid,
                              status.st_size, status.st_mtime_ns))
        entries = [subprocess.run(["getent", database, self.user], capture_output=True, text=True).stdout
                   for database in ("passwd", "group")]
        return sorted(found) + entries


@pytest.fixture(scope="module")
def installed():
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("useradd", "setpriv", "make")):
        pytest.skip("needs root, useradd, setpriv and make")
    root = Path(tempfile.mkdtemp(prefix="looper-install-"))
    root.chmod(0o755)
    install = Installed(root, f"looper-i{secrets.token_hex(3)}")
    try:
        first = install.make_install()
        assert first.returncode == 0, first.stdout + first.stderr
        install.first = first
        yield install
    finally:
        subprocess.run(["userdel", install.user], capture_output=True)
        subprocess.run(["groupdel", install.user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_make_install_puts_everything_in_place(installed):
    said = installed.first.stdout
    for line in (f"added the system user {installed.user}", f"installed looper ", f"wrote {installed.sysconfdir}/looper.yaml",
                 f"wrote {installed.unitdir}/looper.service", f"wrote {installed.logrotatedir}/looper"):
        assert line in said, said
    user = pwd.getpwnam(installed.user)
    assert user.pw_shell == "/usr/sbin/nologin" and user.pw_uid < 1000  # a system user
    log_dir = os.stat(installed.logdir)
    assert (log_dir.st_uid, log_dir.st_gid, log_dir.st_mode & 0o777) == (user.pw_uid, user.pw_gid, 0o750)
    config = yaml.safe_load((installed.sysconfdir / "looper.yaml").read_text())
    assert config["log"]["dir"] == str(installed.logdir) and config["run_as"]["user"] == installed.user
    # The bait IMAP and POP3 open, beside the configuration (the service runs from /).
    assert config["bait"]["folder"] == str(installed.sysconfdir / "bait")
    assert f"wrote {installed.sysconfdir}/bait" in said
    shipped = sorted(p.relative_to(installed.source / "config" / "bait") for p in (installed.source / "config" / "bait").rglob("*"))
    assert sorted(p.relative_to(installed.sysconfdir / "bait") for p in (installed.sysconfdir / "bait").rglob("*")) == shipped
    version = subprocess.run([installed.prefix / "bin" / "looper", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("looper ")
    # Not editable: a copy, which runs without the source folder.
    shown = subprocess.run([installed.prefix / "bin" / "python", "-c", "import looper; print(looper.__file__)"],
                           capture_output=True, text=True, cwd="/")
    assert shown.stdout.startswith(str(installed.prefix)), shown.stdout
    unit = (installed.unitdir / "looper.service").read_text()
    assert f"ExecStart={installed.prefix}/bin/looper run --no-view -c {installed.sysconfdir}/looper.yaml" in unit
    assert f"ReadWritePaths={installed.logdir}\n" in unit and f"User={installed.user}\n" in unit
    assert "=/opt/looper" not in unit and "=/var/log/looper" not in unit
    assert f"{installed.logdir}/events.jsonl" in (installed.logrotatedir / "looper").read_text()
    assert not list(installed.source.glob("build")), "the build left a folder in the source"
    assert not list(installed.source.glob("*.egg-info")), "the build left a folder in the source"


def test_make_install_twice_changes_nothing(installed):
    before = installed.snapshot()
    again = installed.make_install()
    assert again.returncode == 0, again.stdout + again.stderr
    assert installed.snapshot() == before
    said = again.stdout.splitlines()
    assert len(said) == 2 and said[1].startswith("install: done"), again.stdout  # make's command line, then that


def test_the_installed_unit_passes_systemd_analyze_verify(installed):
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze (Debian package systemd)")
    result = subprocess.run(["systemd-analyze", "verify", str(installed.unitdir / "looper.service")],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_installed_service_runs_as_its_user_and_reopens_after_logrotate(installed):
    """As the unit starts it: its user, CAP_NET_BIND_SERVICE alone, the
    installed looper and configuration (only the address changed)."""
    port = free_port()
    config_path = installed.sysconfdir / "looper.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["listen"]["smtp"] = [f"127.0.0.1:{port}"]
    # The bait IMAP server on a port of the test's: the installed bait, read from / as the unit runs it.
    config["listen"].update(imap=[f"127.0.0.1:{free_port()}"], imaps=[], pop3=[], pop3s=[])
    config["dialback"].update(port=1, allow_private=True, timeout=2)
    config["smtp"]["hostname"] = "mx.install.test"
    test_config = installed.sysconfdir / "looper-test.yaml"
    test_config.write_text(yaml.safe_dump(config))
    test_config.chmod(0o644)
    user = pwd.getpwnam(installed.user)
    as_the_unit = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                   "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    child = subprocess.Popen([*as_the_unit, str(installed.prefix / "bin" / "looper"), "run", "-c", str(test_config)],
                             cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said = read_stderr_until(child, "listening on", 20)
    try:
        assert "listening on" in said, said + child.stderr.read()
        assert status_ids(child.pid)["Uid"].split()[0] == str(user.pw_uid)
        send(port, "127.0.0.9")
        events = installed.logdir / "events.jsonl"
        _wait_for(lambda: events.exists() and "looper.session.closed" in events.read_text())
        rotated = subprocess.run(["logrotate", "-f", "-s", str(installed.root / "logrotate.state"),
                                  str(installed.logrotatedir / "looper")], capture_output=True, text=True, timeout=60) \
            if shutil.which("logrotate") else None
        if rotated is None:  # what logrotate would do, without it
            events.rename(installed.logdir / "events.jsonl.1")
        else:
            assert (rotated.returncode, rotated.stderr) == (0, "")
        assert (installed.logdir / "events.jsonl.1").exists() and not events.exists()
        child.send_signal(signal.SIGHUP)  # what the postrotate's `systemctl reload looper` sends
        wait_for_line(child, "SIGHUP: reopened")
        send(port, "127.0.0.10")
        _wait_for(lambda: events.exists() and "looper.session.closed" in events.read_text())
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == 0
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    old = [json.loads(line) for line in (installed.logdir / "events.jsonl.1").read_text().splitlines()]
    new = [json.loads(line) for line in events.read_text().splitlines()]
    assert {e["src_ip"] for e in old} == {"127.0.0.9"} and {e["src_ip"] for e in new} == {"127.0.0.10"}
    assert os.stat(events).st_uid == user.pw_uid
    messages = list((installed.logdir / "messages").glob("*.eml"))
    assert messages and all(os.stat(m).st_mode & 0o077 == 0 for m in messages)


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def send(port: int, source: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("spam.example")
        client.sendmail("bulk@spam.example", ["victim@far.example.com"], f"Subject: from {source}\r\n\r\nhi\r\n")


FIREWALL_PROBE = """
import socket
def listen(host):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 25))
    s.listen()
    return s
def dial(src, dst, port=25):
    c = socket.socket()
    c.settimeout(0.5)
    c.bind((src, 0))
    try:
        c.connect((dst, port))
        return "connected"
    except OSError as err:
        return type(err).__name__
    finally:
        c.close()
servers = [listen(host) for host in ("127.0.0.25", "127.0.0.9", "127.0.0.8")]
print(dial("127.0.0.25", "127.0.0.9"))  # a dial-back before that client came: no
print(dial("127.0.0.9", "127.0.0.25"))  # the client comes
print(dial("127.0.0.25", "127.0.0.9"))  # the dial-back to it: yes
print(dial("127.0.0.25", "127.0.0.8"))  # to an address that never came: no
print(dial("127.0.0.25", "127.0.0.9", 80))  # to another port of the client: no
print(dial("127.0.0.9", "127.0.0.25", 22))  # to another port of the trap: no
"""


def test_the_firewall_lets_in_port_25_and_out_only_the_dial_back():
    """contrib/looper.nft with the trap on 127.0.0.25, in a network
    namespace of its own (the machine's firewall is not touched)."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, nft (Debian package nftables), unshare and ip")
    rules = (CONTRIB / "looper.nft").read_text().replace("192.0.2.25", "127.0.0.25")
    assert subprocess.run(["nft", "-c", "-f", "-"], input=(CONTRIB / "looper.nft").read_text(), text=True).returncode == 0
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as file:
        file.write(rules)
        file.flush()
        result = subprocess.run(
            ["unshare", "--net", "sh", "-c", f"ip link set lo up && nft -f {file.name} && exec python3 -c \"$0\"",
             FIREWALL_PROBE], capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TimeoutError", "connected", "connected", "TimeoutError", "TimeoutError",
                                     "TimeoutError"]
