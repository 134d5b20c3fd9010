"""Who `looper run` runs as.

Started as root, the trap binds its ports and opens its files (the event
log, the message store, the TLS certificate and key) as root, hands log.dir
over to `run_as` (the folder, its messages/ and tls/, and looper's own files
in them), and then becomes that user for good: setgroups, setgid, setuid,
with no way back. Started as anyone else (systemd's User= with
CAP_NET_BIND_SERVICE, say) it stays who it is and `run_as` does not apply.

Captured messages and TLS keys are the user's alone (files 0600, folders
0700): no other account on the machine reads what the trap caught.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import looper
from looper.config import LOG_DIR_FOLDERS, Config, ConfigError, log_dir_problem

# How to make the user, in the words of the error that says it is missing
# (`make install` does the same).
USERADD = "useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin"

# looper's own files in log.dir (and their rotations: events.jsonl.1, .2.gz, ...).
OWN_FILE_PREFIXES = ("events.jsonl", "transcripts.jsonl", "blocklist.", "looper.lock")
# Folders whose files are the user's alone: captured mail, the TLS key.
PRIVATE_FOLDERS = ("messages", "tls")
# Folders the trap must be able to empty: delisting requests (delisting.py).
SHARED_FOLDERS = ("delist",)
PRIVATE_MODE_BITS = 0o077  # group and others: taken away


@dataclass(frozen=True)
class RunAsUser:
    user: str
    uid: int
    group: str
    gid: int

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid}, group {self.group}, gid {self.gid})"


def run_as_user(config: Config, source: str) -> RunAsUser | None:
    """The user to become once the ports are bound; None to stay who we are
    (not started as root, or `run_as: null`). ConfigError for a user or a
    group this machine does not have."""
    if os.geteuid() != 0 or config.run_as is None:
        return None
    name = config.run_as.user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            source, "run_as.user",
            f"no user {name!r} on this machine: create it ({USERADD} {name}; `make install` does), or set run_as.user",
        ) from None
    if entry.pw_uid == 0:
        raise ConfigError(source, "run_as.user", f"{name!r} is root: to stay root, set `run_as: null`")
    if config.run_as.group is None:
        gid = entry.pw_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    else:
        group = config.run_as.group
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(
                source, "run_as.group", f"no group {group!r} on this machine: create it (groupadd --system {group}), or unset it"
            ) from None
    return RunAsUser(name, entry.pw_uid, group, gid)


def hand_over(folder: str, who: RunAsUser, source: str) -> None:
    """Make log.dir `who`'s: the folder, looper's files in it, messages/ and
    tls/ and their files; captured mail and keys readable by `who` alone.

    Only what looper writes: a log.dir that holds folders of its own (a
    mistaken /var/log, or `.`) is refused, not given away. Symbolic links
    and files with more than one name are left as they are: their other
    ends are not log.dir's to give."""
    top = Path(folder)
    try:
        entries = list(os.scandir(top))
        foreign = sorted(e.name for e in entries if e.is_dir() and e.name not in LOG_DIR_FOLDERS)
        if foreign:
            raise ConfigError(
                source, "log.dir",
                f"{top} holds folders that are not looper's ({', '.join(foreign[:3])}): give looper a folder"
                f" of its own (e.g. /var/log/looper) to hand over to {who.user}",
            )
        _own(top, who, private=False)
        for entry in entries:
            if entry.name.startswith(OWN_FILE_PREFIXES):
                _own(Path(entry.path), who, private=False)
        for name in SHARED_FOLDERS:
            sub = top / name
            if not sub.is_symlink() and sub.is_dir():
                _own(sub, who, private=False)  # its files are requests for the trap, taken and removed
        for name in PRIVATE_FOLDERS:
            sub = top / name
            if sub.is_symlink() or not sub.is_dir():
                continue
            _own(sub, who, private=True)
            with os.scandir(sub) as inside:
                for entry in inside:
                    # A certificate is public; its key and the captured mail are not.
                    _own(Path(entry.path), who, private=not entry.name.endswith(".pem"))
    except OSError as err:
        raise ConfigError(
            source, "log.dir", f"cannot hand {err.filename or top} over to {who.user}: {err.strerror or err}"
        ) from None


def _own(path: Path, who: RunAsUser, *, private: bool) -> None:
    # Through a descriptor opened without following links: what is changed
    # is what was looked at, even if the name is swapped meanwhile.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symbolic link
            return
        raise
    try:
        status = os.fstat(fd)
        if not (stat.S_ISDIR(status.st_mode) or stat.S_ISREG(status.st_mode)):
            return
        if stat.S_ISREG(status.st_mode) and status.st_nlink > 1:
            return
        if (status.st_uid, status.st_gid) != (who.uid, who.gid):
            os.fchown(fd, who.uid, who.gid)
        mode = stat.S_IMODE(status.st_mode)
        if private and mode & PRIVATE_MODE_BITS:
            os.fchmod(fd, mode & ~PRIVATE_MODE_BITS)
    finally:
        os.close(fd)


def become(who: RunAsUser, log_dir: str, source: str) -> None:
    """Drop root for good, then check, as `who`, that the trap can go on:
    log.dir writable, looper's code readable (a module loaded later would
    fail). ConfigError if not; the process is no longer root either way."""
    os.setgroups([])
    os.setgid(who.gid)
    os.setuid(who.uid)  # as root: real, effective and saved uid, and every capability gone
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # cannot happen after setuid() as root; a trap must not run on believing it
        raise RuntimeError("still able to become root after dropping privileges")
    problem = log_dir_problem(log_dir)
    if problem is not None:
        raise ConfigError(source, "log.dir", f"{problem} (as run_as.user {who.user})")
    for path in (os.path.dirname(looper.__file__), os.path.dirname(os.__file__)):
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(
                source, "run_as.user",
                f"{who.user} cannot read {path}, where looper's code is: install looper where it can"
                " (`make install`), or set run_as",
            )
    if not os.access(sys.executable, os.X_OK):  # the message store starts its writer process with it
        raise ConfigError(
            source, "run_as.user",
            f"{who.user} cannot run {sys.executable}, the Python looper runs on: install looper where it can"
            " (`make install`), or set run_as",
        )
