#!/bin/sh
# `make install`: looper as a service, idempotently (a second run changes
# nothing and fails nothing). Run as root from the source folder. Where
# things go (make variables of the same names, the defaults here):
#   PREFIX        /opt/looper                looper's own virtualenv (bin/looper)
#   SYSCONFDIR    /etc/looper                looper.yaml, written only if absent
#   LOGDIR        /var/log/looper            log.dir, owned by LOOPER_USER, 0750
#   UNITDIR       /etc/systemd/system        looper.service
#   LOGROTATEDIR  /etc/logrotate.d           looper
#   LOOPER_USER   looper                     system user and group, made if missing
#   INSTALL_PYTHON  /usr/bin/python3 if there, else python3 (3.11 or later)
# A virtualenv records its own path, so there is no DESTDIR: point the
# variables above somewhere else instead (the tests do).
set -eu

PREFIX=${PREFIX:-/opt/looper}
SYSCONFDIR=${SYSCONFDIR:-/etc/looper}
LOGDIR=${LOGDIR:-/var/log/looper}
UNITDIR=${UNITDIR:-/etc/systemd/system}
LOGROTATEDIR=${LOGROTATEDIR:-/etc/logrotate.d}
LOOPER_USER=${LOOPER_USER:-looper}
if [ -z "${INSTALL_PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then INSTALL_PYTHON=/usr/bin/python3; else INSTALL_PYTHON=python3; fi
fi

say() { echo "install: $*"; }
fail() { echo "install: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (it adds a user and writes $SYSCONFDIR, $LOGDIR, $UNITDIR)"
[ -f pyproject.toml ] && [ -f contrib/looper.service ] || fail "run from looper's source folder"
for path in "$PREFIX" "$SYSCONFDIR" "$LOGDIR" "$UNITDIR" "$LOGROTATEDIR"; do
    case "$path" in /*) ;; *) fail "$path: give an absolute path" ;; esac
done

# -- the user and group ------------------------------------------------------
if ! getent group "$LOOPER_USER" >/dev/null; then
    groupadd --system "$LOOPER_USER"
    say "added the system group $LOOPER_USER"
fi
if ! getent passwd "$LOOPER_USER" >/dev/null; then
    useradd --system --gid "$LOOPER_USER" --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin --comment "looper relay trap" "$LOOPER_USER"
    say "added the system user $LOOPER_USER"
fi

# -- the virtualenv, and looper in it (not editable: a copy of this source) --
"$INSTALL_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || fail "$INSTALL_PYTHON is not Python 3.11 or later: give INSTALL_PYTHON=..."
if ! "$INSTALL_PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    say "installing python3-venv (Debian package) for $INSTALL_PYTHON"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
changed=
if ! "$PREFIX/bin/python" -c 'import sys' 2>/dev/null; then
    "$INSTALL_PYTHON" -m venv "$PREFIX"
    say "made the virtualenv $PREFIX"
fi
# What is installed is known by the hash of the source it came from.
source_hash=$(find pyproject.toml README.md looper -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
stamp="$PREFIX/.looper-source"
if [ "$(cat "$stamp" 2>/dev/null)" != "$source_hash" ] || ! "$PREFIX/bin/looper" --version >/dev/null 2>&1; then
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # A copy, so that the build leaves nothing in the source folder.
    find pyproject.toml README.md looper -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
        | tar --null -T - -cf - | tar -xf - -C "$build"
    "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$build"
    "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check "$build"
    echo "$source_hash" > "$stamp"
    changed=1
    say "installed $("$PREFIX/bin/looper" --version) into $PREFIX"
fi

# -- the log folder ----------------------------------------------------------
install -d -m 0750 -o "$LOOPER_USER" -g "$LOOPER_USER" "$LOGDIR"

# -- the configuration, only if there is none ---------------------------------
install -d -m 0755 "$SYSCONFDIR"
# The bait mailboxes IMAP and POP3 open, beside the configuration: the
# service runs from /, where config/bait is not (only if there are none:
# an operator's own bait stays).
if [ ! -e "$SYSCONFDIR/bait" ]; then
    cp -R config/bait "$SYSCONFDIR/bait"
    chmod -R u=rwX,go=rX "$SYSCONFDIR/bait"
    say "wrote $SYSCONFDIR/bait: the bait mailboxes (config/bait/README.md tells how to change them)"
fi
if [ ! -e "$SYSCONFDIR/looper.yaml" ]; then
    config=$(mktemp)
    sed -e "s|^  dir: logs\$|  dir: $LOGDIR|" -e "s|^  user: looper\$|  user: $LOOPER_USER|" \
        -e "s|^  folder: config/bait\$|  folder: $SYSCONFDIR/bait|" config/looper.yaml > "$config"
    grep -q "^  dir: $LOGDIR\$" "$config" || fail "config/looper.yaml: no 'dir: logs' line to point at $LOGDIR"
    grep -q "^  folder: $SYSCONFDIR/bait\$" "$config" || fail "config/looper.yaml: no 'folder: config/bait' line to point at $SYSCONFDIR/bait"
    install -m 0640 -o root -g "$LOOPER_USER" "$config" "$SYSCONFDIR/looper.yaml"
    rm -f "$config"
    say "wrote $SYSCONFDIR/looper.yaml: set listen.smtp to the trap's own address(es)"
    changed=1
fi
# A new looper or a new file: does the configuration still start it? (Not
# every time: the check writes a probe in LOGDIR, and a second run changes nothing.)
if [ -n "$changed" ]; then
    "$PREFIX/bin/looper" check-config -c "$SYSCONFDIR/looper.yaml" >/dev/null
fi

# -- the systemd unit and the logrotate file, filled in ----------------------
fill() {
    sed -e "s|/opt/looper|$PREFIX|g" -e "s|/etc/looper|$SYSCONFDIR|g" -e "s|/var/log/looper|$LOGDIR|g" \
        -e "s|^User=looper\$|User=$LOOPER_USER|" -e "s|^Group=looper\$|Group=$LOOPER_USER|" "$1"
}
put() {  # put SOURCE TARGET: only if it differs; says whether it did
    filled=$(mktemp)
    fill "$1" > "$filled"
    if cmp -s "$filled" "$2"; then
        rm -f "$filled"
        return 1
    fi
    install -d -m 0755 "$(dirname "$2")"
    install -m 0644 -o root -g root "$filled" "$2"
    rm -f "$filled"
    say "wrote $2"
}
if put contrib/looper.service "$UNITDIR/looper.service" && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
put contrib/looper.logrotate "$LOGROTATEDIR/looper" || true

if [ -d /run/systemd/system ]; then
    say "done; start it with: systemctl enable --now looper"
else
    say "done (systemd is not running here: the unit is installed, not started)"
fi
