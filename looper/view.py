"""Events as a person reads them: one short line each, coloured on a terminal.

`looper tail`, `looper demo` and `looper run` in a terminal all show this
view; the log itself stays JSON. Every text in an event may come from an
attacker: control characters are shown escaped, never sent to the terminal.
"""

from __future__ import annotations

import re
from typing import Any

from looper.events import COMMON_FIELDS, EVENT_FIELDS

# How each event reads; {field} is the event's field. An event not listed
# shows its own fields as key=value.
FORMATS: dict[str, str] = {
    "looper.session.connect": "connect from {src_ip}:{src_port} to port {dst_port}",
    "looper.session.closed": "closed: {mode}, {reason}, {duration:.2f} s, {bytes_in} bytes in, {bytes_out} out",
    "looper.session.refused": "refused: {reason} ({detail})",
    "looper.session.error": "ERROR in looper: {error}",
    "looper.dialback.ok": "dial-back to {target}: connected in {connect_ms:.1f} ms",
    "looper.dialback.failed": "dial-back to {target} failed: {reason} ({detail})",
    "looper.reflect.greeting": "relay server greets: {code} {text}",
    "looper.reflect.helo": "relay client: {verb} {name} -> {code}",
    "looper.reflect.ehlo_reply": "relay server names itself {name}{masked}{stripped}",
    "looper.reflect.mail": "relay client: MAIL FROM:<{address}> -> {code} {reply}",
    "looper.reflect.rcpt": "relay client: RCPT TO:<{address}> -> {code} {reply}",
    "looper.reflect.message": "PASS {received_hops} hops, {size} bytes -> {code} {reply}  [chain {chain}]",
    "looper.reflect.command": "relay client: {verb}{arg} -> {code} {reply}",
    "looper.reflect.tls": "relay went to TLS: the rest passes unread",
    "looper.reflect.unparsed": "cannot follow the {direction}: {why}",
    "looper.reflect.self_detected": "relay RECOGNISED ITSELF ({name} in the {where})",
    "looper.command.input": "> {input}",
    "looper.smtp.helo": "emulated: {verb} {name}",
    "looper.smtp.pregreet": "talked before the greeting: {bytes} bytes",
    "looper.smtp.mail": "emulated: MAIL FROM:<{address}> -> {code} {reply}",
    "looper.smtp.rcpt": "emulated: RCPT TO:<{address}> -> {code} {reply}",
    "looper.smtp.message": "CAPTURED {size} bytes from <{mail_from}> to {rcpt_to} as {queue_id}: {subject}",
    "looper.smtp.store_failed": "could not store a message: {reason}",
    "looper.smtp.message_cut": "message cut at {size} bytes: {reason}",
    "looper.smtp.limit": "limit: {limit}",
    "looper.smtp.forbidden": "forbidden input, hung up: {input}",
    "looper.login.success": "LOGIN ACCEPTED {mechanism} {username}:{password}",
    "looper.login.failed": "login failed {mechanism} {username}:{password} ({reason})",
    "looper.bait.read": "BAIT READ {folder} uid {uid} ({what}): {subject}",
    "looper.imap.change": "imap: {change} {folder} uid {uid} {how} {flags} {to}",
    "looper.imap.append": "APPENDED {size} bytes to {folder} as uid {uid}: {subject}",
    "looper.pop3.delete": "pop3 {action}: uids {uids}",
    "looper.tls.established": "TLS {version} {cipher}",
    "looper.tls.failed": "TLS failed: {error}",
    "looper.dns.client": "dns: ptr {ptr}, fcrdns {fcrdns}, dnsbl {dnsbl}, helo {helo} resolves {helo_resolves}",
    "looper.log.dropped": "{dropped} events were lost since {since}: {error}",
    "looper.relay.verdict": "VERDICT {relay_ip} is {verdict}: {evidence}",
    "looper.relay.delisted": "DELISTED {relay_ip} by {requested_by}: {reason}",
    "looper.chain.ended": "LOOP ENDED {relay_ip}: {end}{inferred} after {passes} passes, hops {first_hops}..{last_hops}"
                          " {end_code} {end_text}  [chain {chain}]",
}

# ANSI colours by what an event means to the operator.
_COLOURS = {
    "looper.relay.verdict": "1;35",  # bold magenta: the trap's conclusions
    "looper.chain.ended": "1;35",
    "looper.relay.delisted": "1;35",
    "looper.reflect.self_detected": "1;33",
    "looper.reflect.message": "1;36",  # bold cyan: a loop pass
    "looper.smtp.message": "1;33",  # bold yellow: a catch
    "looper.login.success": "1;31",
    "looper.login.failed": "31",
    "looper.session.error": "1;41",
    "looper.log.dropped": "1;41",
}
_AREA_COLOURS = {"session": "2", "dialback": "34", "reflect": "36", "command": "2", "smtp": "33", "tls": "32"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_TEXT = 160


class _Fields(dict):
    """format_map's view of an event: missing fields read as '-', texts cleaned."""

    def __missing__(self, key: str) -> str:
        return "-"


def _clean(value: Any) -> Any:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    text = escape_controls(str(value))
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def escape_controls(text: str) -> str:
    """`text` with its control characters shown as \\xNN: safe on a terminal."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def describe(record: dict[str, Any]) -> str:
    """The event's own part of the line: what happened, in words."""
    eventid = record.get("eventid", "?")
    fields = _Fields({k: _clean(v) for k, v in record.items()})
    fields["masked"] = f", masked as {fields['masked_as']}" if record.get("masked_as") else ""
    fields["stripped"] = ", STARTTLS stripped" if record.get("starttls_stripped") else ""
    fields["inferred"] = " (inferred)" if record.get("end_inferred") else ""
    fields["arg"] = f" {fields['argument']}" if record.get("argument") else ""
    template = FORMATS.get(eventid)
    if template is not None:
        try:
            return " ".join(template.format_map(fields).split())
        except (ValueError, TypeError):  # a damaged line: a number that is not one
            pass
    own = [k for k in record if k not in COMMON_FIELDS]
    return " ".join(f"{k}={fields[k]}" for k in own)


def render(record: dict[str, Any], *, colour: bool = False) -> str:
    """`09:37:00.567 a1b2c3d4e5f6 203.0.113.5     reflect.message  PASS 3 hops ...`"""
    eventid = str(record.get("eventid", "?"))
    stamp = str(record.get("timestamp") or "")[11:23]
    session = _clean(record.get("session")) if record.get("session") else "trap".ljust(12)
    who = _clean(record.get("src_ip") or record.get("relay_ip") or "")
    short = eventid.removeprefix("looper.")
    line = f"{stamp} {session} {who:<15} {short:<22} {describe(record)}"
    if not colour:
        return line
    area = eventid.split(".")[1] if eventid.count(".") >= 2 else ""
    code = _COLOURS.get(eventid) or _AREA_COLOURS.get(area)
    return f"\x1b[{code}m{line}\x1b[0m" if code else line


def known_formats() -> set[str]:
    """Event ids with a sentence of their own (a test keeps it complete)."""
    return set(FORMATS) & set(EVENT_FIELDS)
