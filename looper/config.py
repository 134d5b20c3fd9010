"""Configuration: YAML in, typed and immutable settings out.

Every default lives here, in code. The file only overrides. Anything the
file says that we do not understand stops the program with one line naming
the file, the key and the problem: a trap that silently ignores a typo in
`dialback.allow_private` is a trap that dials where it should not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import string
import ssl
import stat
import tempfile
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from looper.loops import EVENT_LOOPS, uvloop_installed
from looper.proto.personas import PERSONAS, REPLY_KEYS
from looper.proto.sasl import MECHANISMS

# None by default: every common pair is in some detector's list (potsnitch
# tries admin:admin, admin:password, root:root first), and a pair accepted at
# the first try is what gives a honeypot away. Brute-forcers get in through
# smtp.accept_after instead (README, "Honeypot detectors").
DEFAULT_CREDENTIALS: tuple[tuple[str, str], ...] = ()

# Failed logins after which an address gets in with any pair: more than two
# whole potsnitch runs from one address make (5 attempts each), far fewer
# than a wordlist has.
DEFAULT_ACCEPT_AFTER = 10


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


class _Invalid(ValueError):
    """Raised by a value parser; the section loader adds file and key."""


# -- value parsers: raw YAML value in, typed value out, _Invalid on error ----


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(f"expected an integer {low}-{high}, got {_show(value)}")
        return value

    return parse


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _Invalid(f"expected a positive number of seconds, got {_show(value)}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _positive_days(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 36500:
        raise _Invalid(f"expected a number of days above 0, got {_show(value)}")
    return float(value)


def _non_negative_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _Invalid(f"expected a number of seconds, 0 or more, got {_show(value)}")
    return float(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise _Invalid(f"expected a name without spaces, got {_show(value)}")
    return value


_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def _host_name(value: Any) -> str:
    # It names the self-signed certificate's file too: no '/' or '..' there.
    if not isinstance(value, str) or not _HOST_NAME.fullmatch(value):
        raise _Invalid(f"expected a host name (letters, digits, '-', '_' and dots), got {_show(value)}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value

    return parse


def _event_loop(value: Any) -> str:
    name = _choice(*EVENT_LOOPS)(value)
    if name == "uvloop" and not uvloop_installed():
        raise _Invalid("uvloop is not installed in this Python (pip install uvloop), or set auto or asyncio")
    return name


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else parse(value)


def _list_of(parse: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    def parse_list(value: Any) -> tuple:
        if not isinstance(value, list):
            raise _Invalid(f"expected a list, got {_show(value)}")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(parse(item))
            except _Invalid as problem:
                raise _Invalid(f"item {index + 1}: {problem}") from None
        return tuple(items)

    return parse_list


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port; IPv6 written as [addr]:port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.host)


def _endpoint(value: Any) -> Endpoint:
    problem = f"expected host:port with an IP address (IPv6 as [addr]:port), got {_show(value)}"
    if not isinstance(value, str):
        raise _Invalid(problem)
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise _Invalid(problem)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _Invalid(problem) from None
    if not sep or not _ASCII_DIGITS.fullmatch(port):  # str.isdigit() takes '²', which int() does not
        raise _Invalid(problem)
    return Endpoint(str(address), _reachable_port(int(port)))


_ASCII_DIGITS = re.compile(r"[0-9]+")


def _reachable_port(port: int) -> int:
    # The address was right: say what is wrong with the port, not "expected host:port".
    if port == 0:  # bind() takes 0 as "any free port", which no client could find
        raise _Invalid("port 0 is not a port a client can reach: use 1-65535")
    if port > 65535:
        raise _Invalid(f"port {port} is out of range: use 1-65535")
    return port


def _dialback_port(value: Any) -> int:
    if value == 0 and not isinstance(value, bool):
        raise _Invalid("expected an integer 1-65535, got 0: port 0 cannot be dialed (a relay's SMTP port is 25)")
    return _int(1, 65535)(value)


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    problem = f"expected an address or CIDR (e.g. 192.0.2.0/24), got {_show(value)}"
    if not isinstance(value, str):  # ipaddress would take 10 for 0.0.0.10
        raise _Invalid(problem)
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        interface = ipaddress.ip_interface(value)
    except ValueError:
        raise _Invalid(problem) from None
    # 192.168.1.1/24 means either the /24 or the one address: a deny or block
    # list must not guess which (ipaddress's strict=False quietly takes the /24).
    raise _Invalid(
        f"{value} has host bits set: did you mean {interface.network},"
        f" or {interface.ip}/{interface.network.max_prefixlen}?"
    )


DNS_PORT = 53


def _nameserver(value: Any) -> Endpoint:
    """A name server: "ip" (port 53), "ip:port", or "[v6]:port" (a bare
    IPv6 address is one address, port 53)."""
    if isinstance(value, str):
        try:
            return Endpoint(str(ipaddress.ip_address(value)), DNS_PORT)
        except ValueError:
            pass
    try:
        return _endpoint(value)
    except _Invalid as problem:
        if "port" in str(problem) and "host:port" not in str(problem):
            raise
        raise _Invalid(
            f"expected a name server's IP address, ip:port or [IPv6]:port, got {_show(value)}"
        ) from None


_ZONE_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _dns_zone(value: Any) -> str:
    """A DNSBL zone, e.g. zen.spamhaus.org: the client's reversed address
    goes in front of it, so it leaves room in a name's 253 octets for an
    IPv6 address's 32 nibbles and their dots."""
    problem = f"expected a DNS zone such as zen.spamhaus.org, got {_show(value)}"
    if not isinstance(value, str):
        raise _Invalid(problem)
    zone = value.rstrip(".").lower()
    if not zone or len(zone) > 253 - 64 or not all(_ZONE_LABEL.fullmatch(label) for label in zone.split(".")):
        raise _Invalid(problem)
    return zone


def _setting(default: Any, parse: Callable[[Any], Any], **kw: Any) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"parse": parse}, **kw)
    return field(default=default, metadata={"parse": parse}, **kw)


# -- sections ----------------------------------------------------------------


@dataclass(frozen=True)
class Listen:
    smtp: tuple[Endpoint, ...] = _setting(
        lambda: (Endpoint("0.0.0.0", 25), Endpoint("::", 25)), _list_of(_endpoint)
    )
    # Implicit TLS (RFC 8314), e.g. 0.0.0.0:465: always the emulated relay.
    submissions: tuple[Endpoint, ...] = _setting(tuple, _list_of(_endpoint))
    # The bait mail servers, always emulated (never dialed back): IMAP and
    # POP3, each plain (STARTTLS/STLS) and with implicit TLS.
    imap: tuple[Endpoint, ...] = _setting(
        lambda: (Endpoint("0.0.0.0", 143), Endpoint("::", 143)), _list_of(_endpoint)
    )
    imaps: tuple[Endpoint, ...] = _setting(
        lambda: (Endpoint("0.0.0.0", 993), Endpoint("::", 993)), _list_of(_endpoint)
    )
    pop3: tuple[Endpoint, ...] = _setting(
        lambda: (Endpoint("0.0.0.0", 110), Endpoint("::", 110)), _list_of(_endpoint)
    )
    pop3s: tuple[Endpoint, ...] = _setting(
        lambda: (Endpoint("0.0.0.0", 995), Endpoint("::", 995)), _list_of(_endpoint)
    )


@dataclass(frozen=True)
class Dialback:
    port: int = _setting(25, _dialback_port)
    timeout: float = _setting(5.0, _seconds)
    allow_private: bool = _setting(False, _bool)
    deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _setting(tuple, _list_of(_network))
    # emulate: the emulated relay (see smtp); hangup: 421 and close, as the
    # original smtplooper did.
    on_failure: str = _setting("emulate", _choice("emulate", "hangup"))
    # Dial-backs to one address per hour (null: no limit); beyond it the
    # client is served by the emulated relay without one, so that a client
    # cannot make the trap knock on its (or a spoofed victim's) door at will.
    per_ip_hourly: int | None = _setting(60, _optional(_int(1, 1_000_000)))


@dataclass(frozen=True)
class Splice:
    max_bytes: int = _setting(50_000_000, _int(1, 2**62))
    max_seconds: float = _setting(1800.0, _seconds)
    idle_seconds: float = _setting(300.0, _seconds)
    # Bytes forwarded through all splices together per minute (null: no
    # limit): the trap must never be a bandwidth amplifier.
    bytes_per_minute: int | None = _setting(1_000_000_000, _optional(_int(1, 2**62)))
    strip_starttls: bool = _setting(True, _bool)
    ehlo_name: str = _setting("pass", _choice("pass", "mask"))
    # The name put in place of the relay's own when ehlo_name is mask; the
    # sensor name when unset.
    mask_name: str | None = _setting(None, _optional(_host_name))


@dataclass(frozen=True)
class Rate:
    count: int
    per_seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{_RATE_UNITS_BY_SECONDS[self.per_seconds]}"


_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600}
_RATE_UNITS_BY_SECONDS = {seconds: unit for unit, seconds in _RATE_UNITS.items()}


def _rate(value: Any) -> Rate:
    problem = f"expected N/second, N/minute or N/hour (e.g. 30/minute), got {_show(value)}"
    if not isinstance(value, str):
        raise _Invalid(problem)
    count, _, unit = value.partition("/")
    if not _ASCII_DIGITS.fullmatch(count.strip()) or int(count) < 1 or unit.strip() not in _RATE_UNITS:
        raise _Invalid(problem)
    return Rate(int(count), _RATE_UNITS[unit.strip()])


@dataclass(frozen=True)
class Limits:
    per_ip: int = _setting(10, _int(1, 1_000_000))
    total: int = _setting(1000, _int(1, 1_000_000))
    # New connections from one address (null: no limit); more are refused
    # before anything is sent.
    rate: Rate | None = _setting(None, _optional(_rate))
    # Addresses and CIDRs whose connections are closed at once.
    block: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _setting(tuple, _list_of(_network))
    # Bytes of messages the emulated relay holds in memory at once, over all
    # sessions; beyond it a new DATA gets the persona's 452 4.3.1, as a real
    # server short of room answers.
    message_memory_bytes: int = _setting(256 * 1024 * 1024, _int(0, 2**62))


@dataclass(frozen=True, slots=True)
class Credential:
    user: str
    password: str

    def __str__(self) -> str:
        return f"{self.user}:{self.password}"


def _credential(value: Any) -> Credential:
    if not isinstance(value, str) or ":" not in value or not value.partition(":")[0]:
        raise _Invalid(f"expected user:password, got {_show(value)}")
    user, _, password = value.partition(":")
    return Credential(user, password)


def _mechanisms(value: Any) -> tuple[str, ...]:
    mechanisms = _list_of(_choice(*MECHANISMS))(
        [m.upper() if isinstance(m, str) else m for m in value] if isinstance(value, list) else value
    )
    if len(set(mechanisms)) != len(mechanisms):
        raise _Invalid(f"a mechanism is listed twice: {', '.join(mechanisms)}")
    return mechanisms


def _replies(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping of reply names to texts, got {_show(value)}")
    for key, text in value.items():
        if key not in REPLY_KEYS:
            raise _Invalid(f"no reply is called {key!r} (see looper/proto/personas.py)")
        if not isinstance(text, str) or not _REPLY_LINE.fullmatch(text):
            raise _Invalid(
                f"{key}: expected a reply like '250 2.0.0 Ok', got {_show(text)}"
                " (one line: a code 200-599, a space, printable text)"
            )
        problem = _template_problem(text)
        if problem:
            raise _Invalid(f"{key}: {problem} in {_show(text)} (placeholders are {{name}}; a brace itself is {{{{ or }}}})")
    return dict(value)


# One whole reply line: a multi-line reply ("250-...") would leave the client
# waiting for its last line, and a line break inside would end it early.
_REPLY_LINE = re.compile(r"[2-5][0-9][0-9] [^\x00-\x1f\x7f]*")


def _template_problem(text: str) -> str | None:
    """Why the relay could not fill `text` in, or None. Placeholders are
    plain names ({host}, {queue_id}): no positions, attributes, indexes,
    conversions or format specs, which str.format_map would raise on."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        return str(err).lower()
    for _, name, spec, conversion in parsed:
        if name is not None and not name.isidentifier():
            return f"the placeholder {{{name}}} is not a plain name"
        if name is not None and (spec or conversion):
            return f"the placeholder {{{name}}} has a conversion or format"
    return None


@dataclass(frozen=True)
class Smtp:
    """The emulated relay, served when a client cannot be reflected."""

    persona: str = _setting("postfix", _choice(*PERSONAS))
    # Our name in the greeting and replies: by default the reverse DNS name
    # of the listening address, else this machine's fully qualified name.
    hostname: str | None = _setting(None, _optional(_host_name))
    mode: str = _setting("open_relay", _choice("open_relay", "harvester"))
    relay: str = _setting("open", _choice("open", "authenticated"))
    # Accept any user:password once an address has failed this often
    # (null: only `credentials`). Never 0: detectors try a random pair first.
    accept_after: int | None = _setting(DEFAULT_ACCEPT_AFTER, _optional(_int(1, 1_000_000)))
    # With CRAM-MD5 as a real Dovecot offers it ("plain login cram-md5"):
    # LOGIN for the brute-forcers that use it, and no "only weak mechanisms"
    # tell (potsnitch's smtp_weak_auth_only). The sendmail persona is
    # Debian's own with [DIGEST-MD5, CRAM-MD5]; this list, not the persona,
    # says what EHLO offers.
    auth_mechanisms: tuple[str, ...] = _setting(lambda: ("PLAIN", "LOGIN", "CRAM-MD5"), _mechanisms)
    # Largest message, advertised in SIZE; null: the persona's own default
    # (Postfix 10240000, Exim 52428800, Exchange 37748736).
    max_message_bytes: int | None = _setting(None, _optional(_int(1024, 1 << 31)))
    greet_delay: float = _setting(0.0, _non_negative_seconds)
    idle_timeout: float = _setting(300.0, _seconds)
    # A session's whole life, however busy it is; then the persona's 421.
    max_session_seconds: float = _setting(1800.0, _seconds)
    tls_cert: str | None = _setting(None, _optional(_name))
    tls_key: str | None = _setting(None, _optional(_name))
    replies: dict[str, str] = _setting(dict, _replies)


def _mail_mechanisms(value: Any) -> tuple[str, ...]:
    mechanisms = _mechanisms(value)
    if not mechanisms:
        raise _Invalid("expected at least one mechanism (Dovecot's default is [PLAIN])")
    return mechanisms


@dataclass(frozen=True)
class MailAccess:
    """The IMAP and POP3 servers, as one Dovecot configures both."""

    # Dovecot's disable_plaintext_auth, inverted: true admits LOGIN, USER/PASS
    # and AUTH without TLS (a Dovecot set up for legacy clients); false is
    # stock Debian's (LOGINDISABLED until STARTTLS/STLS).
    plaintext_login: bool = _setting(True, _bool)
    # auth_mechanisms: stock Debian offers PLAIN alone. POP3 offers PLAIN
    # and LOGIN of them: its machine has no randomness for a challenge.
    auth_mechanisms: tuple[str, ...] = _setting(lambda: ("PLAIN",), _mail_mechanisms)


_MAIL_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63}")
_PERSON = re.compile(r"[A-Z][A-Za-z'-]*(?: [A-Z][A-Za-z'-]*)+")
_COMPANY = re.compile(r"[A-Za-z0-9&.,'-]+(?: [A-Za-z0-9&.,'-]+)*")


def _mail_domain(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _MAIL_DOMAIN.fullmatch(value):
        raise _Invalid(f"expected a lower-case mail domain such as example.com, got {_show(value)}")
    return value


def _person(value: Any) -> str:
    # ASCII, first and last name: the address first.last@domain is made from it.
    if not isinstance(value, str) or len(value) > 64 or not _PERSON.fullmatch(value):
        raise _Invalid(f"expected a first and a last name in ASCII letters, such as 'Mark Jensen', got {_show(value)}")
    return value


def _company(value: Any) -> str:
    # It stands in headers as it is: printable ASCII, single spaces.
    if not isinstance(value, str) or len(value) > 64 or not _COMPANY.fullmatch(value):
        raise _Invalid(f"expected a company name in printable ASCII (no braces or quotes), got {_show(value)}")
    return value


@dataclass(frozen=True)
class Bait:
    """The bait mailboxes behind the IMAP and POP3 logins (looper/bait.py)."""

    # Folder of <Folder>/*.eml (INBOX, Sent, Drafts, Archive, Junk); a
    # relative path is from the working directory, as log.dir is.
    folder: str = _setting("config/bait", _name)
    # What the placeholders in the messages become (config/bait/README.md).
    domain: str = _setting("example.com", _mail_domain)
    company: str = _setting("Brightwater Logistics", _company)
    admin: str = _setting("Mark Jensen", _person)  # whose mailbox it is
    ceo: str = _setting("Claire Dubois", _person)
    finance: str = _setting("Priya Nair", _person)
    developer: str = _setting("Tom Becker", _person)


@dataclass(frozen=True)
class Log:
    dir: str = _setting("logs", _name)
    stdout: bool = _setting(False, _bool)
    # events.jsonl rotates at max_bytes, keeping `backups` old files:
    # the log is bounded like everything else.
    max_bytes: int = _setting(1 << 30, _int(1 << 16, 2**62))
    backups: int = _setting(10, _int(1, 1000))


# syslog's facility names (RFC 5424 section 6.2.1), by number.
SYSLOG_FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)


def _syslog_address(value: Any) -> Endpoint | str:
    # A path is a local daemon's socket (/dev/log); anything else a collector's host:port.
    if isinstance(value, str) and value.startswith("/"):
        return value
    try:
        return _endpoint(value)
    except _Invalid as problem:
        raise _Invalid(f"{problem}, or the path of a local socket such as /dev/log") from None


@dataclass(frozen=True, slots=True)
class Secret:
    """A password or key: check-config and error messages show only its length."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return f"(hidden, {len(self.value)} characters)"


def _secret(value: Any) -> Secret:
    if not isinstance(value, str) or not value:
        # Never echo what was given; a number or a date is YAML's reading of it.
        raise _Invalid("expected a non-empty string (in quotes, if YAML could read it as a number)")
    return Secret(value)


def _channel(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > 255:
        raise _Invalid(f"expected a channel name of 1-255 bytes, got {_show(value)}")
    return value


# Bytes a collector's sink may hold while the collector is slow or away.
_QUEUE_BYTES = _int(1 << 12, 1 << 30)


@dataclass(frozen=True)
class Syslog:
    # Every event as one syslog message (RFC 5424, the event's JSON as MSG)
    # to rsyslog or syslog-ng: host:port (an IP address), or the path of a
    # local daemon's socket (/dev/log; RFC 3164 framing, which every local
    # daemon parses). null: off.
    address: Endpoint | str | None = _setting(None, _optional(_syslog_address))
    # udp: one datagram per event, nothing queued (RFC 5426); tcp: octet
    # counting (RFC 6587) through a queue of queue_bytes, reconnecting.
    transport: str = _setting("udp", _choice("udp", "tcp"))
    facility: str = _setting("mail", _choice(*SYSLOG_FACILITIES))
    # Longest message; an event beyond it is cut (rsyslog's default
    # maxMessageSize is 8096; syslog-ng's log-msg-size 65536).
    max_message_bytes: int = _setting(8096, _int(480, 65000))
    queue_bytes: int = _setting(4 << 20, _QUEUE_BYTES)


@dataclass(frozen=True)
class Hpfeeds:
    # The honeypot community's broker: each event's JSON published on
    # `channel` as ident/secret. host null: off.
    host: str | None = _setting(None, _optional(_host_name))
    port: int = _setting(20000, _int(1, 65535))
    ident: str | None = _setting(None, _optional(_name))
    secret: Secret | None = _setting(None, _optional(_secret))
    channel: str = _setting("looper.events", _channel)
    queue_bytes: int = _setting(4 << 20, _QUEUE_BYTES)


@dataclass(frozen=True)
class Metrics:
    # Prometheus metrics on http://host:port/metrics; null: off.
    listen: Endpoint | None = _setting(None, _optional(_endpoint))


@dataclass(frozen=True)
class RunAs:
    # Started as root, `looper run` binds its ports, opens its files, makes
    # log.dir theirs, then runs as this user; started as anyone else, it
    # stays who it is. null for the whole section: stay root (a warning).
    user: str = _setting("looper", _name)
    # null: the user's own (primary) group.
    group: str | None = _setting(None, _optional(_name))


@dataclass(frozen=True)
class Capture:
    # The content of reflected mail kept in <log.dir>/messages/ like captured
    # mail: the first pass of each loop chain, every pass, or none.
    reflected: str = _setting("first", _choice("first", "all", "none"))


@dataclass(frozen=True)
class Analysis:
    # A loop chain with no pass for this long has ended: `vanished`, or
    # `hop_limit` (inferred) when it stopped at its relay's known limit.
    quiet_seconds: float = _setting(600.0, _seconds)


@dataclass(frozen=True)
class Transcripts:
    # Each spliced or emulated session's conversation, both directions with
    # timing, in <log.dir>/transcripts.jsonl (docs/transcripts.md; `looper
    # replay` shows one). A session keeps at most session_bytes of it (0:
    # only the counts); TLS that passes through a splice is only counted.
    enabled: bool = _setting(True, _bool)
    session_bytes: int = _setting(65536, _int(0, 1 << 30))
    # transcripts.jsonl rotates at max_bytes, keeping `backups` old files.
    max_bytes: int = _setting(1 << 30, _int(1 << 16, 2**62))
    backups: int = _setting(10, _int(1, 1000))


# Never on the blocklist: loopback, private, shared, link-local and
# documentation ranges (no relay on the Internet has one; a lab's would be
# listed by mistake). The trap's own addresses are never listed either.
DEFAULT_NEVER_LISTED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "::1/128", "fc00::/7", "fe80::/10", "2001:db8::/32",
)
BLOCKLIST_FORMATS = ("plain", "rbldnsd", "postfix", "csv", "json")
_TXT_FIELDS = frozenset({"verdict", "passes", "first", "last", "expires"})


def _answer_value(value: Any) -> str:
    try:
        address = ipaddress.IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise _Invalid(f"expected an address in 127.0.0.0/8 (RFC 5782: e.g. 127.0.0.2), got {_show(value)}")
    return str(address)


def _txt_template(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\r\n\x00"):
        raise _Invalid(f"expected one line of text, got {_show(value)}")
    problem = _template_problem(value)
    if problem is None:
        unknown = {name for _, name, _, _ in string.Formatter().parse(value) if name} - _TXT_FIELDS
        if unknown:
            problem = f"no field {{{sorted(unknown)[0]}}} (known: {', '.join(sorted(_TXT_FIELDS))})"
    if problem is None and re.search(r"\$[0-9]", value):
        problem = "$ and a digit is an rbldnsd substitution; $ alone is the address"
    if problem:
        raise _Invalid(f"{problem} in {_show(value)}")
    return value


def _hostmaster(value: Any) -> str:
    """A mailbox (hostmaster@example.net) or its DNS form (hostmaster.example.net)."""
    if isinstance(value, str) and value.count("@") == 1:
        local, _, domain = value.partition("@")
        if local and "." not in local:
            value = f"{local}.{domain}"
    return _host_name(value)


@dataclass(frozen=True)
class BlocklistZone:
    # The zone's name, as rbldnsd is told it (ZONE:combined:FILE); default
    # bl.<sensor>. ns: its name server (default: the sensor name);
    # hostmaster: who answers for it (default: hostmaster.<sensor>).
    name: str | None = _setting(None, _optional(_host_name))
    ns: str | None = _setting(None, _optional(_host_name))
    hostmaster: str | None = _setting(None, _optional(_hostmaster))
    # Seconds a resolver may keep an answer: a delisting takes this long to be seen.
    ttl: int = _setting(300, _int(1, 604800))


@dataclass(frozen=True)
class Blocklist:
    # The live feed: with a file, `looper run` rewrites it (atomically)
    # whenever an address is listed or expires; null: no live feed.
    file: str | None = _setting(None, _optional(_name))
    format: str = _setting("rbldnsd", _choice(*BLOCKLIST_FORMATS))
    # Accepted loop passes that list an address, and days it stays listed
    # after its last evidence.
    min_passes: int = _setting(1, _int(1, 1_000_000))
    expire_days: float = _setting(30.0, _positive_days)
    # Also list relays that only showed loop protection (proves no relaying).
    include_loop_protected: bool = _setting(False, _bool)
    never: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _setting(
        lambda: tuple(ipaddress.ip_network(n) for n in DEFAULT_NEVER_LISTED), _list_of(_network)
    )
    # The answer for a listed address (rbldnsd's A record) and its text:
    # {verdict} {passes} {first} {last} {expires}; $ is the address.
    value: str = _setting("127.0.0.2", _answer_value)
    txt: str = _setting("$ listed: {verdict}, last evidence {last}, accepted loop passes: {passes} (looper)",
                        _txt_template)
    # rbldnsd stops answering from a zone file this many seconds old (the
    # live feed renews it well before): a dead trap does not list forever.
    stale_after: float = _setting(86400.0, _seconds)
    zone: BlocklistZone = field(default_factory=BlocklistZone)


@dataclass(frozen=True)
class Dns:
    # DNS evidence on each client (looper.dns.client: PTR, forward-confirmed
    # reverse DNS, DNSBL listings, whether its HELO name resolves), and the
    # PTR name in the emulated relay's Received: line.
    # Name servers as ip, ip:port or [IPv6]:port; empty: the system's
    # (/etc/resolv.conf).
    nameservers: tuple[Endpoint, ...] = _setting(tuple, _list_of(_nameserver))
    # The longest one lookup may take (no answer by then: `unanswered`).
    timeout_s: float = _setting(3.0, _seconds)
    # How long after its connect the emulated greeting may wait for the
    # client's PTR name (as Postfix's does); 0: never waits. Nothing else
    # ever waits for DNS.
    budget_s: float = _setting(1.0, _non_negative_seconds)
    # DNSBL zones the client's address is looked up in.
    dnsbl: tuple[str, ...] = _setting(tuple, _list_of(_dns_zone))
    # Look up loopback, private and other non-global addresses too (labs
    # and tests); else they get no lookups and no looper.dns.client event.
    lookup_private: bool = _setting(False, _bool)
    # Answers kept at most (the least recently used go first), each for its
    # TTL but at most cache_max_ttl_s; "no such name/record" for negative_ttl_s.
    cache_entries: int = _setting(10_000, _int(0, 10_000_000))
    cache_max_ttl_s: float = _setting(3600.0, _non_negative_seconds)
    negative_ttl_s: float = _setting(60.0, _non_negative_seconds)


@dataclass(frozen=True)
class Config:
    sensor: str = _setting(socket.gethostname, _name)
    # On SIGTERM, how long sessions may go on before each protocol says its
    # goodbye (SMTP's 421) and the connection is closed.
    shutdown_grace_s: float = _setting(10.0, _non_negative_seconds)
    # The event loop `looper run` runs on: auto (uvloop where it is
    # installed, else the standard library's), uvloop or asyncio.
    event_loop: str = _setting("auto", _event_loop)
    # Who the trap runs as once its ports are bound, when started as root.
    run_as: RunAs | None = field(default_factory=RunAs, metadata={"nullable": True})
    listen: Listen = field(default_factory=Listen)
    dialback: Dialback = field(default_factory=Dialback)
    splice: Splice = field(default_factory=Splice)
    smtp: Smtp = field(default_factory=Smtp)
    # user:password pairs the emulated servers always accept (SMTP AUTH,
    # IMAP, POP3): none by default (see DEFAULT_CREDENTIALS).
    credentials: tuple[Credential, ...] = _setting(
        lambda: tuple(Credential(*pair) for pair in DEFAULT_CREDENTIALS), _list_of(_credential)
    )
    limits: Limits = field(default_factory=Limits)
    mail_access: MailAccess = field(default_factory=MailAccess)
    bait: Bait = field(default_factory=Bait)
    log: Log = field(default_factory=Log)
    analysis: Analysis = field(default_factory=Analysis)
    capture: Capture = field(default_factory=Capture)
    transcripts: Transcripts = field(default_factory=Transcripts)
    blocklist: Blocklist = field(default_factory=Blocklist)
    dns: Dns = field(default_factory=Dns)
    # Central collectors, each optional; a dead one never stops the trap.
    syslog: Syslog = field(default_factory=Syslog)
    hpfeeds: Hpfeeds = field(default_factory=Hpfeeds)
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def ehlo_mask_name(self) -> str | None:
        """The name to put in the relay's EHLO reply, or None to pass it."""
        if self.splice.ehlo_name != "mask":
            return None
        return self.splice.mask_name or self.sensor

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data."""
        return _plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, (Endpoint, Rate, Credential, Secret, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# -- loading -----------------------------------------------------------------


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix.rstrip(".") or "", f"expected a mapping, got {_show(raw)}")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if f"{prefix}{key}" in _MOVED:
            raise ConfigError(source, f"{prefix}{key}", _MOVED[f"{prefix}{key}"])
        if key not in known:
            raise ConfigError(source, f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue
        if "parse" not in f.metadata:  # a nested section
            if raw[name] is None and f.metadata.get("nullable"):  # `run_as: null`: none at all
                values[name] = None
                continue
            values[name] = _build(f.default_factory, raw[name], source, f"{prefix}{name}.")
            continue
        try:
            values[name] = f.metadata["parse"](raw[name])
        except _Invalid as problem:
            raise ConfigError(source, f"{prefix}{name}", str(problem)) from None
    return cls(**values)


# Keys that are no more, and where their job went.
_MOVED = {
    "log.syslog": "replaced by the syslog section: set syslog.address to /dev/log (the local daemon)"
                  " or to a collector's host:port",
}


class _KeyGivenTwice(Exception):
    def __init__(self, key: str, first_line: int, second_line: int) -> None:
        super().__init__(key)
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader, except that a key given twice in one mapping is an error.

    PyYAML keeps the last value silently, so a forgotten second
    `allow_private: true` below the first would quietly win. The check walks
    the composed document, where the dotted path and the line of each key are
    still known, before anything is constructed.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_keys_given_twice(node, "", set())
        return super().construct_document(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _refuse_keys_given_twice(node: yaml.Node, path: str, visited: set[int]) -> None:
    if id(node) in visited:  # an alias: checked where its anchor is (and may be recursive)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            child = path
            # A `<<` merge brings in keys the mapping may then set: YAML's own rule, not a repeat.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                child = f"{path}.{key_node.value}" if path else key_node.value
                line = key_node.start_mark.line + 1
                if key_node.value in first_lines:
                    raise _KeyGivenTwice(child, first_lines[key_node.value], line)
                first_lines[key_node.value] = line
            _refuse_keys_given_twice(value_node, child, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_keys_given_twice(item, f"{path} item {index + 1}", visited)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raises ConfigError."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except _KeyGivenTwice as twice:
        raise ConfigError(
            source, twice.key,
            f"given twice, on line {twice.first_line} and line {twice.second_line} (YAML would keep only the last)",
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(source, "", f"{where}invalid YAML: {problem}") from None
    except (ValueError, TypeError, LookupError, AttributeError, RecursionError) as err:
        # PyYAML's constructors raise these for some explicit tags (`!!int `
        # with no value: IndexError); the file is no less invalid for that.
        raise ConfigError(source, "", f"invalid YAML: {type(err).__name__}: {err}") from None
    return config_from_mapping(raw, source)


def config_from_mapping(raw: Any, source: str) -> Config:
    """Validate settings given as data (what the YAML holds); raises ConfigError."""
    config = _build(Config, raw, source, "")
    if config.limits.per_ip > config.limits.total:
        raise ConfigError(source, "limits.per_ip", f"cannot exceed limits.total ({config.limits.total})")
    if config.splice.ehlo_name == "mask" and not config.splice.strip_starttls:
        raise ConfigError(
            source, "splice.ehlo_name",
            "mask needs splice.strip_starttls: true: a relay that offers STARTTLS takes it, its EHLO after"
            " STARTTLS goes inside TLS where no name can be masked, and it then recognises itself",
        )
    if config.ehlo_mask_name is not None and not _HOST_NAME.fullmatch(config.ehlo_mask_name):
        raise ConfigError(
            source, "splice.mask_name",
            f"unset, so the sensor name {config.sensor!r} would stand in EHLO replies, and it is no host name:"
            " set splice.mask_name",
        )
    _check_collectors(config, source)
    if config.smtp.tls_key is not None and config.smtp.tls_cert is None:
        raise ConfigError(source, "smtp.tls_key", "set without smtp.tls_cert: a key is of no use without its certificate")
    return config


def _check_collectors(config: Config, source: str) -> None:
    if isinstance(config.syslog.address, str) and config.syslog.transport != "udp":
        raise ConfigError(
            source, "syslog.transport",
            f"{config.syslog.transport} is for a collector's host:port; {config.syslog.address} is a local"
            " socket, which takes datagrams (leave transport at udp)",
        )
    hpfeeds = config.hpfeeds
    if hpfeeds.host is not None:
        for key in ("ident", "secret"):
            if getattr(hpfeeds, key) is None:
                raise ConfigError(source, f"hpfeeds.{key}", "needed with hpfeeds.host: the broker admits no one without it")


def load_config(path: str | None) -> Config:
    """The configuration from `path`, or the defaults when path is None."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(path, "", f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "cannot read: not UTF-8 text") from None
    return parse_config(text, path)


# -- what `looper run` needs before it listens -------------------------------

# What `run` writes in log.dir, under the names their owners give them
# (eventlog.EVENTS_FILE, transcripts.TRANSCRIPTS_FILE; net/capture.MESSAGES_FOLDER,
# net/tls.TLS_FOLDER).
# config sits below those modules and may not import them: a test keeps
# these copies equal.
LOG_DIR_FILES = ("events.jsonl", "transcripts.jsonl", "looper.lock", "blocklist.state.json")
LOG_DIR_FOLDERS = ("messages", "tls", "delist")


def check_runtime(config: Config, source: str) -> None:
    """Raise ConfigError for anything on disk that `looper run` would trip
    over before it listens: the TLS certificate and key, log.dir, and the
    local syslog socket.

    `check-config` and `run` both call this, so that OK means `run` starts
    (whether its addresses can be bound is only known by binding them). It
    leaves nothing behind.
    """
    _check_tls_files(config.smtp, source)
    if config.blocklist.file is not None:
        problem = _feed_folder_problem(Path(config.blocklist.file))
        if problem is not None:
            raise ConfigError(source, "blocklist.file", problem)
    local_syslog = config.syslog.address
    if isinstance(local_syslog, str) and not _is_socket(local_syslog):
        raise ConfigError(source, "syslog.address", f"{local_syslog} is no socket: is the syslog daemon running?")
    problem = _log_dir_problem(Path(config.log.dir))
    if problem is not None:
        raise ConfigError(source, "log.dir", problem)


def _feed_folder_problem(path: Path) -> str | None:
    """The live blocklist is written beside itself and renamed into place:
    its folder must be there and writable (the folder of a server's data,
    such as rbldnsd's, is not made up here)."""
    folder = path.parent
    if path.is_dir():
        return f"{path} is a folder: name the file to write"
    if not folder.is_dir():
        return f"{folder} is not a folder (make it, writable by the trap's user)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write to {folder}: the file is written beside itself and renamed into place"
    return None
def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def log_dir_problem(folder: str) -> str | None:
    """What check_runtime finds wrong with log.dir, or None: `run` asks it
    again once it runs as run_as.user, who may not reach what root did."""
    return _log_dir_problem(Path(folder))


class TLSFileError(Exception):
    """A certificate or key file that cannot be used: `setting` names its
    setting (smtp.tls_cert or smtp.tls_key), the message says why."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(problem)
        self.setting = setting


class _KeyNeedsPassphrase(Exception):
    pass


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on a terminal a service has not.
    raise _KeyNeedsPassphrase


def load_tls_files(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """Load the certificate and its key into `context` (key None: the key is
    in the certificate's file, as Postfix allows), or raise TLSFileError
    naming the file at fault and why. The one way looper reads them: the
    server's context (net/tls.py) and check_runtime both come here."""
    for name, path in (("smtp.tls_cert", cert), ("smtp.tls_key", key)):
        if path is not None:
            try:  # ssl's own errors do not say which file
                with open(path, "rb"):
                    pass
            except OSError as err:
                raise TLSFileError(name, f"cannot read {path}: {err.strerror or err}") from None
    key_name, key_file = ("smtp.tls_key", key) if key is not None else ("smtp.tls_cert", cert)
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _KeyNeedsPassphrase:
        raise TLSFileError(
            key_name,
            f"the key in {key_file} needs a passphrase, which looper cannot ask for:"
            f" store it without one (openssl pkey -in {key_file} -out NEW.key)",
        ) from None
    except ssl.SSLError as err:
        # Which file? The certificate's, if it holds no certificate at all
        # (asked of a scratch context, not to touch the caller's).
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert)
        except ssl.SSLError:
            raise TLSFileError("smtp.tls_cert", f"{cert} holds no PEM certificate") from None
        raise TLSFileError(key_name, _key_problem(err, cert, key)) from None


def _check_tls_files(smtp: Smtp, source: str) -> None:
    if smtp.tls_cert is None:  # a self-signed pair is made in log.dir (a key alone is refused by parse_config)
        return
    # A plain server context takes what the server's own (net/tls.py) takes.
    try:
        load_tls_files(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), smtp.tls_cert, smtp.tls_key)
    except TLSFileError as err:
        raise ConfigError(source, err.setting, str(err)) from None


def _key_problem(err: ssl.SSLError, cert: str, key: str | None) -> str:
    if err.reason == "KEY_VALUES_MISMATCH":
        if key is None:
            return f"the key in {cert} is not the key of its certificate"
        return f"{key} is not the key of the certificate in {cert}"
    if err.reason is None:  # OpenSSL's "PEM lib": no key it could read
        if key is None:
            return f"{cert} holds a certificate but no private key: set smtp.tls_key to the key's file"
        return f"{key} holds no PEM private key"
    reason = err.reason.lower().replace("_", " ")  # e.g. EE_KEY_TOO_SMALL at OpenSSL's security level
    return f"cannot use {cert} with the key in {key or cert}: {reason}"


def _log_dir_problem(folder: Path) -> str | None:
    """Do in log.dir what run will do, on a small scale, and undo it:
    os.access cannot tell (to root it says yes even where mkdir fails)."""
    missing = _missing_folders(folder)
    if missing and not missing[0].parent.is_dir():
        return f"cannot create {folder}: {missing[0].parent} is not a folder"
    if not missing and not folder.is_dir():
        return f"{folder} is not a folder"
    made: list[Path] = []
    try:
        for path in missing:
            try:
                path.mkdir()
            except OSError as err:
                return f"cannot create {folder}: {err.strerror or err}"
            made.append(path)
        return _write_problem(folder)
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


def _missing_folders(folder: Path) -> list[Path]:
    """The folders that make `folder`, outermost first, that do not exist yet."""
    missing = []
    path = Path(os.path.abspath(folder))
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _write_problem(folder: Path) -> str | None:
    folders = [folder, *(folder / name for name in LOG_DIR_FOLDERS if os.path.lexists(folder / name))]
    for path in folders:  # what is not there yet, run makes where it could write
        if not path.is_dir():
            return f"{path} is not a folder"
        try:
            descriptor, probe = tempfile.mkstemp(dir=path, prefix=".looper-check-")
            os.close(descriptor)
            os.unlink(probe)
        except OSError as err:
            return f"cannot write to {path}: {err.strerror or err}"
    for path in (folder / name for name in LOG_DIR_FILES if os.path.lexists(folder / name)):
        try:
            with open(path, "ab"):  # appending nothing changes nothing
                pass
        except OSError as err:
            return f"cannot write {path}: {err.strerror or err}"
    return None
