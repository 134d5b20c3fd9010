"""Who `looper run` runs as (run_as, looper/privileges.py): started as root
it binds, opens its files, hands log.dir over and becomes run_as.user, for
good; started as anyone else (CAP_NET_BIND_SERVICE) it stays who it is.

The process tests start real `looper run` processes as root and read the
ids in /proc; they need root, useradd and setpriv (util-linux), else skip.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import yaml

from looper.config import ConfigError, RunAs, parse_config
from looper.privileges import RunAsUser, hand_over, run_as_user
from tests.conftest import free_port
from tests.trapproc import read_stderr_until

CHECKOUT = Path(__file__).resolve().parent.parent
CLIENT = "127.0.0.9"  # nothing listens on its dial-back port: the emulated relay serves it

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# -- the setting ---------------------------------------------------------------


def test_run_as_defaults_to_the_looper_user_and_null_means_none():
    assert parse_config("").run_as == RunAs(user="looper", group=None)
    assert parse_config("run_as: null").run_as is None
    assert parse_config("run_as: {user: nobody, group: nogroup}").run_as == RunAs("nobody", "nogroup")
    assert parse_config("run_as: null").to_dict()["run_as"] is None
    assert parse_config("").to_dict()["run_as"] == {"user": "looper", "group": None}


@pytest.mark.parametrize("text, message", [
    ("run_as: {usr: x}", "f.yaml: run_as.usr: unknown key (known: user, group)"),
    ("run_as: {user: 'two words'}", "f.yaml: run_as.user: expected a name without spaces, got 'two words'"),
    ("run_as: looper", "f.yaml: run_as: expected a mapping, got 'looper'"),
])
def test_run_as_mistakes_are_named(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert str(caught.value) == message


def test_not_root_stays_who_it_is(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    # Not even looked up: a user that exists nowhere is no error then.
    assert run_as_user(parse_config("run_as: {user: no-such-user-here}"), "f.yaml") is None


@as_root
def test_root_resolves_the_user_and_its_group():
    nobody = pwd.getpwnam("nobody")
    who = run_as_user(parse_config("run_as: {user: nobody}"), "f.yaml")
    assert (who.user, who.uid, who.gid) == ("nobody", nobody.pw_uid, nobody.pw_gid)
    assert run_as_user(parse_config("run_as: {user: nobody, group: root}"), "f.yaml").gid == 0
    assert run_as_user(parse_config("run_as: null"), "f.yaml") is None


@as_root
@pytest.mark.parametrize("text, message", [
    ("run_as: {user: no-such-user-here}",
     "f.yaml: run_as.user: no user 'no-such-user-here' on this machine: create it (useradd --system --user-group"
     " --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin no-such-user-here; `make install` does),"
     " or set run_as.user"),
    ("run_as: {user: nobody, group: no-such-group-here}",
     "f.yaml: run_as.group: no group 'no-such-group-here' on this machine: create it (groupadd --system"
     " no-such-group-here), or unset it"),
    ("run_as: {user: root}", "f.yaml: run_as.user: 'root' is root: to stay root, set `run_as: null`"),
])
def test_root_names_a_user_or_group_that_is_missing(text, message):
    with pytest.raises(ConfigError) as caught:
        run_as_user(parse_config(text, "f.yaml"), "f.yaml")
    assert str(caught.value) == message


@as_root
def test_a_missing_user_stops_check_config_and_run_alike(tmp_path):
    config = tmp_path / "looper.yaml"
    config.write_text(
        f"listen: {{smtp: ['127.0.0.1:{free_port()}'], imap: [], imaps: [], pop3: [], pop3s: []}}\nlog: {{dir: '{tmp_path / 'logs'}'}}\n"
        "smtp: {hostname: mx.priv.test}\nrun_as: {user: no-such-user-here}\n"
    )
    for command in ("check-config", "run"):
        result = subprocess.run([sys.executable, "-m", "looper", command, "-c", str(config)],
                                capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stdout) == (2, ""), command
        assert result.stderr == f"{config}: run_as.user: no user 'no-such-user-here' on this machine: create it" \
            " (useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin" \
            " no-such-user-here; `make install` does), or set run_as.user\n", command


# -- handing log.dir over (in this process: root changes owners, stays root) --


@as_root
def test_hand_over_gives_looper_s_files_and_keeps_mail_and_keys_private(tmp_path):
    nobody = pwd.getpwnam("nobody")
    who = RunAsUser("nobody", nobody.pw_uid, "nogroup", nobody.pw_gid)
    logs = tmp_path / "logs"
    (logs / "messages").mkdir(parents=True)
    (logs / "tls").mkdir()
    (logs / "messages").chmod(0o755)
    for path, mode in ((logs / "events.jsonl", 0o640), (logs / "events.jsonl.2.gz", 0o640),
                       (logs / "messages" / "a.eml", 0o644), (logs / "tls" / "mx.pem", 0o644),
                       (logs / "tls" / "mx.key", 0o640), (logs / "report.html", 0o644)):
        path.write_text("x")
        path.chmod(mode)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not looper's")
    (logs / "messages" / "link.eml").symlink_to(elsewhere)  # not followed
    os.link(elsewhere, logs / "messages" / "hard.eml")  # another name of a file elsewhere: left alone

    hand_over(str(logs), who, "f.yaml")

    def owner_and_mode(path: Path) -> tuple[int, int, int]:
        status = os.lstat(path)
        return status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)

    mine = (nobody.pw_uid, nobody.pw_gid)
    assert owner_and_mode(logs)[:2] == mine
    assert owner_and_mode(logs / "events.jsonl") == (*mine, 0o640)
    assert owner_and_mode(logs / "events.jsonl.2.gz") == (*mine, 0o640)
    assert owner_and_mode(logs / "messages") == (*mine, 0o700)
    assert owner_and_mode(logs / "messages" / "a.eml") == (*mine, 0o600)
    assert owner_and_mode(logs / "tls") == (*mine, 0o700)
    assert owner_and_mode(logs / "tls" / "mx.key") == (*mine, 0o600)
    assert owner_and_mode(logs / "tls" / "mx.pem") == (*mine, 0o644)  # a certificate is public
    assert owner_and_mode(logs / "report.html") == (0, 0, 0o644)  # not looper's
    assert owner_and_mode(elsewhere)[:2] == (0, 0)
    assert owner_and_mode(logs / "messages" / "link.eml")[:2] == (0, 0)


@as_root
def test_hand_over_refuses_a_folder_that_is_not_looper_s_alone(tmp_path):
    (tmp_path / "apt").mkdir()
    (tmp_path / "messages").mkdir()
    nobody = pwd.getpwnam("nobody")
    with pytest.raises(ConfigError) as caught:
        hand_over(str(tmp_path), RunAsUser("nobody", nobody.pw_uid, "nogroup", nobody.pw_gid), "f.yaml")
    assert str(caught.value) == (
        f"f.yaml: log.dir: {tmp_path} holds folders that are not looper's (apt): give looper a folder of its own"
        " (e.g. /var/log/looper) to hand over to nobody"
    )
    assert os.stat(tmp_path).st_uid == 0 and os.stat(tmp_path / "messages").st_uid == 0  # nothing given away


# -- real processes ------------------------------------------------------------


@pytest.fixture(scope="module")
def system_user():
    """A system user and group of its own (useradd --system), removed after."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv"):
        pytest.skip("needs root, useradd and setpriv")
    name = f"looper-t{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--user-group", "--home-dir", "/nonexistent", "--no-create-home",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)  # if userdel left it


def python_for(user: pwd.struct_passwd) -> tuple[list[str], dict[str, str]]:
    """A Python that `user` can run looper with (argv, environment): this
    one, or, where it lives in a folder only root may enter (a pyenv under
    /root), the system's of the same version with this one's packages."""
    packages = sysconfig.get_paths()["purelib"]
    candidates = [([sys.executable], {})]
    system = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.path.exists(system):
        candidates.append(([system], {"PYTHONPATH": f"{CHECKOUT}:{packages}"}))
    for argv, extra in candidates:
        env = {**os.environ, **extra}
        # Where that Python, started by root as the trap is, finds its code;
        # then whether `user` may read there (what `become` checks).
        found = subprocess.run(
            [*argv, "-c", "import os, yaml, cryptography, looper; print(os.path.dirname(os.__file__));"
             " print(os.path.dirname(yaml.__file__)); print(os.path.dirname(looper.__file__))"],
            cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=60,
        )
        if found.returncode != 0:
            continue
        readable = subprocess.run(
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "sh", "-c",
             'for d; do [ -r "$d" ] && [ -x "$d" ] || exit 1; done', "-", *found.stdout.split()],
            capture_output=True, timeout=60,
        )
        if readable.returncode == 0:
            return argv, env
    pytest.skip(f"no Python here that {user.pw_name} may read looper with")


@pytest.fixture
def open_folder():
    """A folder every user may reach (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="looper-priv-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start(argv: list[str], env: dict[str, str], config: Path, timeout_s: float = 20.0) -> tuple[subprocess.Popen, str]:
    """`looper run -c CONFIG`; returns the process and its start-up lines
    once it says it listens (or the whole of stderr if it exits)."""
    child = subprocess.Popen([*argv, "-m", "looper", "run", "-c", str(config)], cwd=CHECKOUT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return child, read_stderr_until(child, "listening on", timeout_s)


def status_ids(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapAmb"):
            fields[key] = " ".join(value.split())
    return fields


def send_one_message(port: int, source: str = CLIENT) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("spam.example")
        client.sendmail("bulk@spam.example", ["victim@far.example.com"], b"Subject: hello\r\n\r\nbuy now\r\n")
        return client.noop()


@as_root
def test_root_binds_then_runs_as_run_as_and_still_serves(system_user, open_folder):
    argv, env = python_for(system_user)
    uid, gid = system_user.pw_uid, system_user.pw_gid
    logs = open_folder / "logs"
    (logs / "messages").mkdir(parents=True)
    (logs / "messages").chmod(0o755)
    (logs / "messages" / "old.eml").write_text("caught by an earlier run as root")
    (logs / "messages" / "old.eml").chmod(0o644)
    port = free_port()
    config = open_folder / "looper.yaml"
    config.write_text(yaml.safe_dump({
        "sensor": "priv-test", "listen": {"smtp": [f"127.0.0.1:{port}"], "imap": [], "imaps": [], "pop3": [], "pop3s": []},
        "dialback": {"port": 1, "allow_private": True, "timeout": 2},
        "smtp": {"hostname": "mx.priv.test"}, "log": {"dir": str(logs)},
        "run_as": {"user": system_user.pw_name},
    }))
    child, said = start(argv, env, config)
    try:
        assert "listening on" in said, said + child.stderr.read()
        assert f"running as {system_user.pw_name} (uid {uid}, group {system_user.pw_name}, gid {gid})" in said
        ids = status_ids(child.pid)
        assert ids["Uid"] == f"{uid} {uid} {uid} {uid}" and ids["Gid"] == f"{gid} {gid} {gid} {gid}", ids
        assert ids["Groups"] == "" and int(ids["CapEff"], 16) == int(ids["CapPrm"], 16) == 0, ids
        # Served after the drop, by the emulated relay (the dial-back to 127.0.0.9:1 is refused).
        assert send_one_message(port) == (250, b"2.0.0 Ok")
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == 0
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    events = [json.loads(line) for line in (logs / "events.jsonl").read_text().splitlines()]
    stored = [e for e in events if e["eventid"] == "looper.smtp.message"]
    closed = [e for e in events if e["eventid"] == "looper.session.closed"]
    assert len(stored) == 1 and closed[-1]["mode"] == "emulate" and closed[-1]["src_ip"] == CLIENT

    def owner_and_mode(path: Path) -> tuple[int, int, int]:
        status = os.lstat(path)
        return status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)

    assert owner_and_mode(logs)[:2] == (uid, gid)
    assert owner_and_mode(logs / "events.jsonl")[:2] == (uid, gid)
    assert owner_and_mode(logs / "messages") == (uid, gid, 0o700)
    messages = list((logs / "messages").glob("*.eml"))
    assert len(messages) == 2 and all(owner_and_mode(m) == (uid, gid, 0o600) for m in messages)
    keys = list((logs / "tls").glob("*.key"))
    assert len(keys) == 1 and owner_and_mode(keys[0]) == (uid, gid, 0o600)
    assert owner_and_mode(logs / "tls") == (uid, gid, 0o700)


@as_root
def test_a_log_dir_the_user_cannot_reach_stops_run_in_one_line(system_user, open_folder, tmp_path):
    argv, env = python_for(system_user)
    logs = tmp_path / "logs"  # under pytest's folder, which only root may enter
    config = open_folder / "looper.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"smtp": [f"127.0.0.1:{free_port()}"], "imap": [], "imaps": [], "pop3": [], "pop3s": []}, "dialback": {"port": 1, "allow_private": True},
        "smtp": {"hostname": "mx.priv.test"}, "log": {"dir": str(logs)}, "run_as": {"user": system_user.pw_name},
    }))
    child, said = start(argv, env, config)
    try:
        assert child.wait(20) == 2
        said += child.stderr.read()
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert said == f"{config}: log.dir: cannot create {logs}: Permission denied (as run_as.user {system_user.pw_name})\n"


@as_root
def test_a_python_the_user_cannot_run_stops_run(system_user, open_folder):
    """The message store starts a Python process after the drop: a trap
    whose user could read looper but not run its Python would answer every
    message 452. become() says so at the start instead."""
    argv, env = python_for(system_user)
    private = open_folder / "private"
    private.mkdir(mode=0o700)
    (private / "python").write_text("")
    logs = open_folder / "logs"
    logs.mkdir()
    os.chown(logs, system_user.pw_uid, system_user.pw_gid)
    script = (
        "import sys; from looper.config import ConfigError; from looper.privileges import RunAsUser, become\n"
        f"sys.executable = {str(private / 'python')!r}\n"
        f"who = RunAsUser({system_user.pw_name!r}, {system_user.pw_uid}, {system_user.pw_name!r}, {system_user.pw_gid})\n"
        f"try:\n    become(who, {str(logs)!r}, 'looper.yaml')\nexcept ConfigError as err:\n    print(err)\n"
    )
    said = subprocess.run([*argv, "-c", script], cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=60)
    assert said.stdout == (f"looper.yaml: run_as.user: {system_user.pw_name} cannot run {private / 'python'}, the"
                           " Python looper runs on: install looper where it can (`make install`), or set run_as\n"), said


@as_root
def test_run_as_null_keeps_root_and_says_so(open_folder):
    port = free_port()
    config = open_folder / "looper.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"smtp": [f"127.0.0.1:{port}"], "imap": [], "imaps": [], "pop3": [], "pop3s": []}, "dialback": {"port": 1, "allow_private": True},
        "smtp": {"hostname": "mx.priv.test"}, "log": {"dir": str(open_folder / "logs")}, "run_as": None,
    }))
    child, said = start([sys.executable], dict(os.environ), config)
    try:
        assert "listening on" in said, said
        assert "running as root (run_as: null)" in said
        assert status_ids(child.pid)["Uid"] == "0 0 0 0"
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == 0
    finally:
        child.kill()
        child.wait()
        child.stderr.close()


@as_root
def test_unprivileged_with_cap_net_bind_service_binds_port_25_as_today(system_user, open_folder):
    """systemd's way (User=, AmbientCapabilities=CAP_NET_BIND_SERVICE): not
    root, so run_as does not apply (its default user need not exist)."""
    argv, env = python_for(system_user)
    host = "127.0.0.77"
    with socket.socket() as probe:
        try:
            probe.bind((host, 25))
        except OSError as err:
            pytest.skip(f"{host}:25 cannot be bound here: {err}")
    logs = open_folder / "logs"
    logs.mkdir()
    os.chown(logs, system_user.pw_uid, system_user.pw_gid)
    config = open_folder / "looper.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"smtp": [f"{host}:25"], "imap": [], "imaps": [], "pop3": [], "pop3s": []}, "dialback": {"port": 1, "allow_private": True},
        "smtp": {"hostname": "mx.priv.test"}, "log": {"dir": str(logs)},
    }))
    setpriv = ["setpriv", f"--reuid={system_user.pw_uid}", f"--regid={system_user.pw_gid}", "--clear-groups",
               "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    child, said = start([*setpriv, *argv], env, config)
    try:
        assert f"listening on {host}:25" in said, said + child.stderr.read()
        ids = status_ids(child.pid)
        assert ids["Uid"].split()[0] == str(system_user.pw_uid)
        assert int(ids["CapEff"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE alone
        with smtplib.SMTP(host, 25, source_address=(CLIENT, 0), timeout=10) as client:
            assert client.ehlo("spam.example")[0] == 250
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == 0
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
