"""Configuration: defaults in code, every mistake named with file and key."""

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from looper.config import (
    LOG_DIR_FILES,
    LOG_DIR_FOLDERS,
    Config,
    ConfigError,
    Endpoint,
    check_runtime,
    load_config,
    parse_config,
)
from looper.loops import event_loop_factory, resolved_event_loop

# The shipped configuration, wherever pytest runs from.
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "looper.yaml"


def test_defaults_need_no_file():
    config = load_config(None)
    assert config.listen.smtp == (Endpoint("0.0.0.0", 25), Endpoint("::", 25))
    assert (config.listen.imap, config.listen.imaps) == (
        (Endpoint("0.0.0.0", 143), Endpoint("::", 143)), (Endpoint("0.0.0.0", 993), Endpoint("::", 993))
    )
    assert config.dialback.port == 25
    assert config.dialback.timeout == 5.0
    assert config.dialback.allow_private is False
    assert config.splice.strip_starttls is True
    assert config.splice.ehlo_name == "pass"
    assert config.log.dir == "logs"
    assert config.ehlo_mask_name is None


def test_defaults_of_the_budgets():
    config = load_config(None)
    assert config.shutdown_grace_s == 10.0
    assert config.limits.message_memory_bytes == 256 * 1024 * 1024
    assert config.dialback.per_ip_hourly == 60
    assert config.splice.bytes_per_minute == 1_000_000_000


def test_budgets_are_typed_and_may_be_lifted():
    config = parse_config(
        "shutdown_grace_s: 0\nlimits: {message_memory_bytes: 0}\n"
        "dialback: {per_ip_hourly: null}\nsplice: {bytes_per_minute: null}\n"
    )
    assert config.shutdown_grace_s == 0.0 and isinstance(config.shutdown_grace_s, float)
    assert config.limits.message_memory_bytes == 0
    assert config.dialback.per_ip_hourly is None
    assert config.splice.bytes_per_minute is None


def test_check_config_shows_the_budgets():
    shown = load_config(None).to_dict()
    assert shown["shutdown_grace_s"] == 10.0
    assert shown["limits"]["message_memory_bytes"] == 268435456
    assert shown["dialback"]["per_ip_hourly"] == 60
    assert shown["splice"]["bytes_per_minute"] == 1000000000


def test_the_shipped_config_is_the_defaults():
    assert load_config(str(SHIPPED_CONFIG)).to_dict() == {**Config().to_dict()}


def dotted_keys(mapping, prefix=""):
    for key, value in mapping.items():
        if isinstance(value, dict) and key != "replies":
            yield from dotted_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_the_shipped_config_shows_every_key():
    # Only these two are commented out: their defaults depend on the host.
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    assert set(dotted_keys(Config().to_dict())) - set(dotted_keys(shipped)) == {"sensor", "splice.mask_name"}


def test_overrides_are_typed():
    config = parse_config(
        "sensor: trap-1\n"
        "listen: {smtp: ['127.0.0.1:2525', '[::1]:2525']}\n"
        "dialback: {port: 2526, timeout: 1, allow_private: true, deny: [192.0.2.0/24, '2001:db8::/32']}\n"
        "splice: {ehlo_name: mask}\n"
    )
    assert config.listen.smtp == (Endpoint("127.0.0.1", 2525), Endpoint("::1", 2525))
    assert config.dialback.timeout == 1.0
    assert [str(n) for n in config.dialback.deny] == ["192.0.2.0/24", "2001:db8::/32"]
    assert config.ehlo_mask_name == "trap-1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("dialback: {port: abc}", "f.yaml: dialback.port: expected an integer 1-65535, got 'abc'"),
        ("dns: {nameservers: [ns1.example.net]}", "f.yaml: dns.nameservers: item 1: expected a name server's IP address, ip:port or [IPv6]:port, got 'ns1.example.net'"),
        ("dns: {nameservers: ['[2001:db8::53]']}", "f.yaml: dns.nameservers: item 1: expected a name server's IP address, ip:port or [IPv6]:port, got '[2001:db8::53]'"),
        ("dns: {nameservers: ['192.0.2.1:0']}", "f.yaml: dns.nameservers: item 1: port 0 is not a port a client can reach: use 1-65535"),
        ("dns: {nameservers: 192.0.2.1}", "f.yaml: dns.nameservers: expected a list, got '192.0.2.1'"),
        ("dns: {dnsbl: [zen spamhaus org]}", "f.yaml: dns.dnsbl: item 1: expected a DNS zone such as zen.spamhaus.org, got 'zen spamhaus org'"),
        ("dns: {dnsbl: [-bad.example]}", "f.yaml: dns.dnsbl: item 1: expected a DNS zone such as zen.spamhaus.org, got '-bad.example'"),
        ("dns: {budget_s: -1}", "f.yaml: dns.budget_s: expected a number of seconds, 0 or more, got -1"),
        ("dns: {timeout_s: 0}", "f.yaml: dns.timeout_s: expected a positive number of seconds, got 0"),
        ("dns: {lookup_private: 1}", "f.yaml: dns.lookup_private: expected true or false, got 1"),
        ("dns: {resolvers: []}", "f.yaml: dns.resolvers: unknown key (known: nameservers, timeout_s, budget_s, dnsbl, lookup_private, cache_entries, cache_max_ttl_s, negative_ttl_s)"),
        ("dialback: {port: 0}", "f.yaml: dialback.port: expected an integer 1-65535, got 0: port 0 cannot be dialed (a relay's SMTP port is 25)"),
        ("dialback: {allow_private: 'yes'}", "f.yaml: dialback.allow_private: expected true or false, got 'yes'"),
        ("dialback: {deny: [10.0.0.0/33]}", "f.yaml: dialback.deny: item 1: expected an address or CIDR (e.g. 192.0.2.0/24), got '10.0.0.0/33'"),
        ("dialback: {on_failure: relay}", "f.yaml: dialback.on_failure: expected one of emulate, hangup, got 'relay'"),
        ("smtp: {persona: qmail}", "f.yaml: smtp.persona: expected one of postfix"),
        ("event_loop: trio", "f.yaml: event_loop: expected one of auto, uvloop, asyncio, got 'trio'"),
        ("smtp: {replies: {nope: '250 x'}}", "f.yaml: smtp.replies: no reply is called 'nope'"),
        ("smtp: {replies: {quit: bye}}", "f.yaml: smtp.replies: quit: expected a reply like '250 2.0.0 Ok', got 'bye'"),
        ("smtp: {auth_mechanisms: [plain, ntlm]}", "f.yaml: smtp.auth_mechanisms: item 2: expected one of PLAIN, LOGIN, CRAM-MD5, DIGEST-MD5, got 'NTLM'"),
        ("smtp: {accept_after: 0}", "f.yaml: smtp.accept_after: expected an integer 1-1000000, got 0"),
        ("credentials: [nocolon]", "f.yaml: credentials: item 1: expected user:password, got 'nocolon'"),
        ("limits: {rate: 3/day}", "f.yaml: limits.rate: expected N/second, N/minute or N/hour (e.g. 30/minute), got '3/day'"),
        ("dialback: {timeout: -1}", "f.yaml: dialback.timeout: expected a positive number of seconds, got -1"),
        ("listen: {smtp: ['localhost:25']}", "f.yaml: listen.smtp: item 1: expected host:port with an IP address (IPv6 as [addr]:port), got 'localhost:25'"),
        ("listen: {smtp: '127.0.0.1:25'}", "f.yaml: listen.smtp: expected a list, got '127.0.0.1:25'"),
        ("listen: {smtp: ['127.0.0.1:99999']}", "f.yaml: listen.smtp: item 1: port 99999 is out of range: use 1-65535"),
        ("listen: {smtp: ['127.0.0.1:0']}", "f.yaml: listen.smtp: item 1: port 0 is not a port a client can reach: use 1-65535"),
        ("listen: {submissions: ['[::1]:0']}", "f.yaml: listen.submissions: item 1: port 0 is not a port a client can reach: use 1-65535"),
        ("listen: {smtp: ['127.0.0.1:\u00b2']}", "f.yaml: listen.smtp: item 1: expected host:port with an IP address (IPv6 as [addr]:port), got '127.0.0.1:\u00b2'"),
        ("dialback: {deny: [192.168.1.1/24]}", "f.yaml: dialback.deny: item 1: 192.168.1.1/24 has host bits set: did you mean 192.168.1.0/24, or 192.168.1.1/32?"),
        ("limits: {block: [10.0.0.0/8, '2001:db8::1/32']}", "f.yaml: limits.block: item 2: 2001:db8::1/32 has host bits set: did you mean 2001:db8::/32, or 2001:db8::1/128?"),
        ("limits: {block: [10]}", "f.yaml: limits.block: item 1: expected an address or CIDR (e.g. 192.0.2.0/24), got 10"),
        ("splice: {max_bytes: 1.5}", "f.yaml: splice.max_bytes: expected an integer 1-4611686018427387904, got 1.5"),
        ("splice: {ehlo_nam: mask}", "f.yaml: splice.ehlo_nam: unknown key (known: max_bytes, max_seconds, idle_seconds, bytes_per_minute, strip_starttls, ehlo_name, mask_name)"),
        ("dialbak: {}", "f.yaml: dialbak: unknown key (known: sensor, shutdown_grace_s, event_loop, run_as, listen, dialback, splice, smtp,"),
        ("log: {syslog: true}", "f.yaml: log.syslog: replaced by the syslog section: set syslog.address to /dev/log (the local daemon) or to a collector's host:port"),
        ("syslog: {address: 'loghost:514'}", "f.yaml: syslog.address: expected host:port with an IP address (IPv6 as [addr]:port), got 'loghost:514', or the path of a local socket such as /dev/log"),
        ("syslog: {address: /dev/log, transport: tcp}", "f.yaml: syslog.transport: tcp is for a collector's host:port; /dev/log is a local socket, which takes datagrams (leave transport at udp)"),
        ("syslog: {facility: mial}", "f.yaml: syslog.facility: expected one of kern, user, mail"),
        ("hpfeeds: {host: broker.example.org, secret: x}", "f.yaml: hpfeeds.ident: needed with hpfeeds.host: the broker admits no one without it"),
        ("hpfeeds: {host: broker.example.org, ident: trap1}", "f.yaml: hpfeeds.secret: needed with hpfeeds.host: the broker admits no one without it"),
        ("hpfeeds: {secret: 1234}", "f.yaml: hpfeeds.secret: expected a non-empty string (in quotes, if YAML could read it as a number)"),
        ("metrics: {listen: 9425}", "f.yaml: metrics.listen: expected host:port with an IP address (IPv6 as [addr]:port), got 9425"),
        ("shutdown_grace_s: -1", "f.yaml: shutdown_grace_s: expected a number of seconds, 0 or more, got -1"),
        ("shutdown_grace_s: soon", "f.yaml: shutdown_grace_s: expected a number of seconds, 0 or more, got 'soon'"),
        ("limits: {message_memory_bytes: -1}", "f.yaml: limits.message_memory_bytes: expected an integer 0-4611686018427387904, got -1"),
        ("limits: {message_memory_bytes: 256MiB}", "f.yaml: limits.message_memory_bytes: expected an integer 0-4611686018427387904, got '256MiB'"),
        ("dialback: {per_ip_hourly: 0}", "f.yaml: dialback.per_ip_hourly: expected an integer 1-1000000, got 0"),
        ("splice: {bytes_per_minute: 0}", "f.yaml: splice.bytes_per_minute: expected an integer 1-4611686018427387904, got 0"),
        ("splice: {bytes_per_minute: 1e9}", "f.yaml: splice.bytes_per_minute: expected an integer 1-4611686018427387904, got '1e9'"),
        ("dialback: 25", "f.yaml: dialback: expected a mapping, got 25"),
        ("- a\n- b", "f.yaml: expected a mapping, got ['a', 'b']"),
        ("limits: {per_ip: 20, total: 10}", "f.yaml: limits.per_ip: cannot exceed limits.total (10)"),
        ("splice: {ehlo_name: mask, strip_starttls: false}",
         "f.yaml: splice.ehlo_name: mask needs splice.strip_starttls: true: a relay that offers STARTTLS takes it"),
        ("dialback: {port: [", "f.yaml: line 1: invalid YAML: expected the node content"),
    ],
)
def test_mistakes_are_named(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert str(caught.value).startswith(message)


def test_event_loop_uvloop_where_it_is_not_installed_stops_the_start(monkeypatch):
    monkeypatch.setattr("looper.config.uvloop_installed", lambda: False)  # as on a machine without it
    with pytest.raises(ConfigError) as caught:
        parse_config("event_loop: uvloop", "f.yaml")
    assert str(caught.value) == ("f.yaml: event_loop: uvloop is not installed in this Python (pip install uvloop), "
                                 "or set auto or asyncio")
    assert parse_config("event_loop: auto", "f.yaml").event_loop == "auto"
    monkeypatch.setattr("looper.loops.uvloop_installed", lambda: False)
    assert resolved_event_loop("auto") == "asyncio" and event_loop_factory("auto") is asyncio.new_event_loop


@pytest.mark.parametrize(
    "text, message",
    [
        ("dialback:\n  port: 25\n  timeout: 1\n  port: 2525\n", "f.yaml: dialback.port: given twice, on line 2 and line 4 (YAML would keep only the last)"),
        ("sensor: a\nlog: {dir: x}\nsensor: b\n", "f.yaml: sensor: given twice, on line 1 and line 3 (YAML would keep only the last)"),
        ("smtp:\n  replies:\n    quit: 221 a\n    'quit': 221 b\n", "f.yaml: smtp.replies.quit: given twice, on line 3 and line 4 (YAML would keep only the last)"),
    ],
)
def test_a_key_given_twice_is_named_with_both_lines(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert str(caught.value) == message


def test_a_merge_key_may_be_overridden_once():
    # `<<` brings in keys that the mapping itself may then set: that is YAML's
    # meaning of a merge, not a key given twice.
    config = parse_config("dialback:\n  <<: {port: 2525, timeout: 2}\n  timeout: 3\n", "f.yaml")
    assert (config.dialback.port, config.dialback.timeout) == (2525, 3.0)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read: No such file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_check_config_command_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dialback:\n  port: abc\n")
    result = subprocess.run(
        [sys.executable, "-m", "looper", "check-config", "-c", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr == f"{bad}: dialback.port: expected an integer 1-65535, got 'abc'\n"
    assert result.stdout == ""


def test_check_config_command_prints_effective_settings(tmp_path):
    from tests.conftest import shipped_config_here

    result = subprocess.run(
        [sys.executable, "-m", "looper", "check-config", "-c", str(shipped_config_here(tmp_path))],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "port: 25" in result.stdout
    assert "- 0.0.0.0:25" in result.stdout and "- '[::]:25'" in result.stdout


# -- what `run` needs before it listens: check_runtime ------------------------


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    """Certificate and key files: a pair, a second key, both in one file, junk."""
    from looper.net.tls import make_self_signed

    folder = tmp_path_factory.mktemp("pem")
    cert, key = make_self_signed("mx.example.test")
    _, other_key = make_self_signed("other.example.test")
    files = {"cert": cert, "key": key, "other_key": other_key, "both": cert + key, "junk": b"not PEM\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: str(folder / name) for name in files}


def runtime_problem(tmp_path, text):
    config = parse_config(f"log: {{dir: '{tmp_path / 'logs'}'}}\n{text}", "f.yaml")
    with pytest.raises(ConfigError) as caught:
        check_runtime(config, "f.yaml")
    return str(caught.value)


def test_runtime_check_passes_a_good_pair_and_a_single_file(tmp_path, pem):
    for smtp in (f"{{tls_cert: {pem['cert']}, tls_key: {pem['key']}}}", f"{{tls_cert: {pem['both']}}}", "{}"):
        check_runtime(parse_config(f"log: {{dir: '{tmp_path / 'logs'}'}}\nsmtp: {smtp}\n", "f.yaml"), "f.yaml")
    assert not (tmp_path / "logs").exists(), "a check creates nothing"


def test_runtime_check_names_a_missing_certificate(tmp_path):
    missing = tmp_path / "nope.pem"
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {missing}}}") == (
        f"f.yaml: smtp.tls_cert: cannot read {missing}: No such file or directory"
    )


def test_runtime_check_names_a_missing_key(tmp_path, pem):
    missing = tmp_path / "nope.key"
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {pem['cert']}, tls_key: {missing}}}") == (
        f"f.yaml: smtp.tls_key: cannot read {missing}: No such file or directory"
    )


def test_runtime_check_names_a_folder_given_as_certificate(tmp_path):
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {tmp_path}}}") == (
        f"f.yaml: smtp.tls_cert: cannot read {tmp_path}: Is a directory"
    )


def test_runtime_check_names_a_certificate_without_its_key(tmp_path, pem):
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {pem['cert']}}}") == (
        f"f.yaml: smtp.tls_cert: {pem['cert']} holds a certificate but no private key:"
        " set smtp.tls_key to the key's file"
    )


def test_a_key_without_its_certificate_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        parse_config("smtp: {tls_key: /etc/ssl/private/mx.key}", "f.yaml")
    assert str(caught.value) == (
        "f.yaml: smtp.tls_key: set without smtp.tls_cert: a key is of no use without its certificate"
    )


def test_runtime_check_names_a_key_of_another_certificate(tmp_path, pem):
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {pem['cert']}, tls_key: {pem['other_key']}}}") == (
        f"f.yaml: smtp.tls_key: {pem['other_key']} is not the key of the certificate in {pem['cert']}"
    )


def test_runtime_check_names_files_that_are_not_what_they_should_be(tmp_path, pem):
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {pem['junk']}, tls_key: {pem['key']}}}") == (
        f"f.yaml: smtp.tls_cert: {pem['junk']} holds no PEM certificate"
    )
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {pem['key']}, tls_key: {pem['cert']}}}") == (
        f"f.yaml: smtp.tls_cert: {pem['key']} holds no PEM certificate"
    )
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {pem['cert']}, tls_key: {pem['junk']}}}") == (
        f"f.yaml: smtp.tls_key: {pem['junk']} holds no PEM private key"
    )


def test_runtime_check_refuses_a_key_with_a_passphrase(tmp_path, pem):
    # load_cert_chain would otherwise ask on the terminal, which a service has not.
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(pem["key"]).read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    assert runtime_problem(tmp_path, f"smtp: {{tls_cert: {pem['cert']}, tls_key: {encrypted}}}") == (
        f"f.yaml: smtp.tls_key: the key in {encrypted} needs a passphrase, which looper cannot ask for:"
        f" store it without one (openssl pkey -in {encrypted} -out NEW.key)"
    )


def test_runtime_check_names_a_log_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    config = parse_config(f"log: {{dir: '{tmp_path / 'file' / 'logs'}'}}", "f.yaml")
    with pytest.raises(ConfigError) as caught:
        check_runtime(config, "f.yaml")
    assert str(caught.value) == f"f.yaml: log.dir: cannot create {tmp_path / 'file' / 'logs'}: {tmp_path / 'file'} is not a folder"


def test_runtime_check_tries_what_root_may_not_do_either():
    # os.access says yes to root here; mkdir says no.
    config = parse_config("log: {dir: /proc/looper-logs}", "f.yaml")
    with pytest.raises(ConfigError) as caught:
        check_runtime(config, "f.yaml")
    assert str(caught.value) == "f.yaml: log.dir: cannot create /proc/looper-logs: No such file or directory"


def test_runtime_check_leaves_nothing_behind(tmp_path):
    (tmp_path / "kept" / "messages").mkdir(parents=True)
    (tmp_path / "kept" / "events.jsonl").write_text("{}\n")
    for folder in ("kept", "new/deeper"):
        check_runtime(parse_config(f"log: {{dir: '{tmp_path / folder}'}}", "f.yaml"), "f.yaml")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "kept", "kept/events.jsonl", "kept/messages",
    ]
    assert (tmp_path / "kept" / "events.jsonl").read_text() == "{}\n"


def test_runtime_check_names_a_log_dir_that_is_a_file(tmp_path):
    (tmp_path / "logs").write_text("")
    assert runtime_problem(tmp_path, "") == f"f.yaml: log.dir: {tmp_path / 'logs'} is not a folder"


def test_runtime_check_looks_at_what_run_writes_in_log_dir(tmp_path):
    (tmp_path / "logs" / "events.jsonl").mkdir(parents=True)
    assert runtime_problem(tmp_path, "") == f"f.yaml: log.dir: cannot write {tmp_path / 'logs' / 'events.jsonl'}: Is a directory"
    (tmp_path / "logs" / "events.jsonl").rmdir()
    (tmp_path / "logs" / "messages").write_text("")
    assert runtime_problem(tmp_path, "") == f"f.yaml: log.dir: {tmp_path / 'logs' / 'messages'} is not a folder"


def test_runtime_check_knows_the_names_run_writes_in_log_dir():
    # config.py sits below the modules that own these names: it keeps copies.
    from looper.eventlog import EVENTS_FILE
    from looper.net.capture import MESSAGES_FOLDER
    from looper.net.tls import TLS_FOLDER
    from looper.delisting import LOCK_FILE, REQUESTS_FOLDER
    from looper.net.feed import STATE_FILE
    from looper.transcripts import TRANSCRIPTS_FILE

    assert (LOG_DIR_FILES, LOG_DIR_FOLDERS) == (
        (EVENTS_FILE, TRANSCRIPTS_FILE, LOCK_FILE, STATE_FILE), (MESSAGES_FOLDER, TLS_FOLDER, REQUESTS_FOLDER)
    )


def test_a_host_name_that_cannot_name_a_certificate_file_is_refused():
    with pytest.raises(ConfigError) as caught:
        parse_config("smtp: {hostname: mx/evil}", "f.yaml")
    assert str(caught.value) == (
        "f.yaml: smtp.hostname: expected a host name (letters, digits, '-', '_' and dots), got 'mx/evil'"
    )
