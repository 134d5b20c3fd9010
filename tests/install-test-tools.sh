#!/usr/bin/env bash
# Installs what the tests that use real software need, from Debian's
# packages, and starts none of them: the tests run their own private
# instances on 127.0.0.x and high ports, and stop them.
# - Postfix for the real-MTA loop (no default instance running; the test
#   starts its own on 127.0.0.2:25) and postmap for the blocklist's table;
# - nmap for the realism check;
# - Chromium (with a font) for the HTML report, loaded headless;
# - rbldnsd to serve the blocklist zone;
# - dnsmasq (the name server alone: dnsmasq-base) for the DNS evidence;
# - rsyslog as the syslog collector;
# - Dovecot's imapd and pop3d, the truth for the bait IMAP and POP3 servers
#   (no default instance running; tests/dovecot.py starts its own);
# - GNU SASL's gsasl, an independent DIGEST-MD5 and CRAM-MD5 client.
# apt runs under a policy-rc.d that keeps packages from starting their
# services; a service already running is left alone. Needs root (apt-get).
# Safe to run again.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "install-test-tools: run as root (sudo make test-tools)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v postfix >/dev/null || ! command -v ip >/dev/null || ! command -v make-ssl-cert >/dev/null \
        || ! command -v nmap >/dev/null || ! command -v chromium >/dev/null || [ ! -x /usr/sbin/rbldnsd ] \
        || [ ! -x /usr/sbin/dnsmasq ] || [ ! -x /usr/sbin/rsyslogd ] \
        || [ ! -d /usr/share/fonts/truetype/dejavu ] || [ ! -x /usr/lib/dovecot/imap ] \
        || [ ! -x /usr/lib/dovecot/pop3 ] || ! command -v gsasl >/dev/null; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then      # keep apt from starting services
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix ssl-cert openssl iproute2 nmap \
        chromium fonts-dejavu-core rbldnsd dnsmasq-base rsyslog dovecot-imapd dovecot-pop3d gsasl >/dev/null
    if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if [ ! -s /etc/ssl/certs/ssl-cert-snakeoil.pem ] || [ ! -s /etc/ssl/private/ssl-cert-snakeoil.key ]; then
    make-ssl-cert generate-default-snakeoil --force-overwrite
fi
if [ -d /run/systemd/system ]; then
    systemctl disable --now postfix.service >/dev/null 2>&1 || true
    systemctl disable --now rbldnsd.service >/dev/null 2>&1 || true
    systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
fi
if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then postfix stop; fi
# The system's Dovecot (its own base_dir, /run/dovecot), never a private one of the tests.
if [ -S /run/dovecot/master ] || [ -f /run/dovecot/master.pid ]; then doveadm stop >/dev/null 2>&1 || true; fi
echo "install-test-tools: Postfix $(postconf -dh mail_version 2>/dev/null) (no default instance running)," \
    "$(nmap --version | head -1), $(chromium --version 2>/dev/null | head -1)," \
    "rbldnsd $(dpkg-query -W -f '${Version}' rbldnsd 2>/dev/null), $(/usr/sbin/dnsmasq --version | head -1)," \
    "$(/usr/sbin/rsyslogd -v | head -1), Dovecot $(dovecot --version 2>/dev/null | cut -d" " -f1) (no default instance running)," \
    "$(gsasl --version | head -1)"
