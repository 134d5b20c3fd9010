#!/usr/bin/env bash
# Installs what the tests that use real software need, from Debian's
# packages: Postfix for the real-MTA loop (with no running default instance:
# the test starts its own private one on 127.0.0.2:25 and stops it), nmap
# for the realism check, Chromium (with a font) for the HTML report,
# loaded headless, and rsyslog as the syslog collector (the tests run a
# private rsyslogd on high ports; apt's policy-rc.d below keeps the package
# from starting the system's instance, and one already running is left
# alone). Needs root (apt-get). Safe to run again.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "install-test-tools: run as root (sudo make test-tools)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v postfix >/dev/null || ! command -v ip >/dev/null || ! command -v make-ssl-cert >/dev/null \
        || ! command -v nmap >/dev/null || ! command -v chromium >/dev/null || [ ! -x /usr/sbin/rsyslogd ] \
        || [ ! -d /usr/share/fonts/truetype/dejavu ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then      # keep apt from starting services
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix ssl-cert openssl iproute2 nmap \
        chromium fonts-dejavu-core rsyslog >/dev/null
    if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if [ ! -s /etc/ssl/certs/ssl-cert-snakeoil.pem ] || [ ! -s /etc/ssl/private/ssl-cert-snakeoil.key ]; then
    make-ssl-cert generate-default-snakeoil --force-overwrite
fi
if [ -d /run/systemd/system ]; then systemctl disable --now postfix.service >/dev/null 2>&1 || true; fi
if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then postfix stop; fi
echo "install-test-tools: Postfix $(postconf -dh mail_version 2>/dev/null) (no default instance running)," \
    "$(nmap --version | head -1), $(chromium --version 2>/dev/null | head -1), $(/usr/sbin/rsyslogd -v | head -1)"
