"""Bugs the fuzz targets (fuzz/) found, one test each, with the input that
showed it. A test stays xfail(strict=True) until its bug is fixed: then it
passes, strict xfail fails the run, and whoever fixed it removes the mark
and the bug's entry in fuzz/known_bugs.py (which lets fuzz runs go past it
meanwhile). All those found so far are fixed."""

from __future__ import annotations

import base64
from dataclasses import replace
import json

import pytest

from looper.config import ConfigError, parse_config
from looper.proto.actions import Close, Send, Store
from looper.proto.observer import Observer
from looper.proto.personas import PERSONAS
from looper.proto.reply import parse_reply_line
from looper.proto.smtpd import ClientInfo, SmtpServer, SmtpSettings
from tests.smtp_replay import FixedEnvironment
from tests.test_smtpd import SETTINGS, Client


def config_error(text: str) -> ConfigError:
    """The ConfigError parse_config raises for text (and nothing else)."""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "looper.yaml")
    return raised.value


# -- looper/config.py --------------------------------------------------------


@pytest.mark.parametrize("text", ["!!int ", "sensor: !!float", "!!timestamp x", "!!bool x"])
def test_a_yaml_tag_pyyaml_cannot_construct_is_a_config_error(text: str):
    # fuzz_config found b"!!int " (PyYAML 6.0: construct_yaml_int reads value[0] of "").
    assert config_error(text).source == "looper.yaml"


@pytest.mark.parametrize(
    "text",
    [
        "splice: {ehlo_name: mask, mask_name: träp.example.net}",
        "sensor: träp-1\nsplice: {ehlo_name: mask}",
        'splice: {ehlo_name: mask, mask_name: "trap\\x01"}',
    ],
)
def test_a_mask_name_the_config_accepts_is_one_the_observer_takes(text: str):
    # fuzz_config found it: a splice.mask_name with bytes that are not UTF-8 (read as U+FFFD).
    try:
        config = parse_config(text, "looper.yaml")
    except ConfigError:
        return  # refused at start, with a line that says why: fine
    Observer(relay_ip="192.0.2.25", mask_name=config.ehlo_mask_name)


@pytest.mark.parametrize("text", ["220 }", "220 {", "220 {0}", "220 {host.nope}", "220 {host[99]}", "220 {host:d}"])
def test_a_reply_text_the_config_accepts_is_one_the_relay_can_say(text: str):
    # fuzz_config found it: a greeting override with a "}" the mutations added.
    try:
        config = parse_config(f"smtp: {{replies: {{greeting: {json.dumps(text)}}}}}", "looper.yaml")
    except ConfigError:
        return  # refused at start: fine
    settings = SmtpSettings(
        hostname="mx.trap.example.net",
        persona=PERSONAS[config.smtp.persona],
        reply_overrides=dict(config.smtp.replies),
    )
    machine = SmtpServer(settings, ClientInfo("192.0.2.7"), FixedEnvironment())  # says the greeting
    assert machine.actions()


@pytest.mark.parametrize("count", ["²", "①", "1²"])
def test_a_rate_in_digits_int_refuses_is_a_config_error(count: str):
    # fuzz_config, with the Unicode digits of fuzz/dicts/config.dict.
    assert config_error(f"limits: {{rate: '{count}/minute'}}").key == "limits.rate"


@pytest.mark.parametrize("text", ["083 mx ESMTP", "999 x", "²50 x", "250-x", "250-a\n250 b"])
def test_a_reply_text_the_config_accepts_is_one_whole_smtp_reply(text: str):
    # fuzz_config found "083 mx.trap.example.net ESMTP" as smtp.replies.greeting.
    try:
        config = parse_config(f"smtp: {{replies: {{noop: {json.dumps(text)}}}}}", "looper.yaml")
    except ConfigError:
        return  # refused at start: fine
    settings = SmtpSettings(hostname="mx.trap.example.net", persona=PERSONAS["postfix"],
                            reply_overrides=dict(config.smtp.replies))  # fmt: skip
    client = Client(settings)
    lines = client.say(b"NOOP\r\n").split(b"\r\n")[:-1]
    parsed = [parse_reply_line(line) for line in lines]
    assert all(parsed) and parsed[-1].final and not any(p.final for p in parsed[:-1])


# -- looper/proto/smtpd.py ---------------------------------------------------


@pytest.mark.parametrize("space", [b"\x1f", b"\x1c", b"\xc2\x85", b"\xc2\xa0", b"\xe3\x80\x80"])
def test_auth_split_at_unicode_white_space_logs_no_secret(space: bytes):
    # fuzz_smtpd found b"AUTH CRAM-M\x1fD5\r\n" (the check: an AUTH command is logged without its
    # initial response); with PLAIN it logs the credentials' base64 and logs the client in.
    secret = base64.b64encode(b"\0admin\0admin")
    client = Client()
    client.say(b"EHLO x\r\nAUTH PLAIN" + space + secret + b"\r\n")
    logged = [event["input"] for event in client.of("looper.command.input")]
    assert not any(secret.decode() in line for line in logged)


def test_a_message_stored_after_the_client_half_closed_is_still_logged():
    # fuzz_smtpd found it (a Store left pending across the next input, then EOF). The adapter
    # does this when a client's bytes and its EOF came before the session took over
    # (SmtpSession.attach(early_bytes, early_eof=True)), or arrive together over TLS.
    machine = SmtpServer(SETTINGS, ClientInfo("192.0.2.7"), FixedEnvironment())
    machine.actions()
    machine.receive_data(
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    assert any(isinstance(action, Store) for action in machine.actions())
    machine.receive_data(b"")  # EOF while the message is being written
    assert machine.actions() == []  # the store's outcome, and the QUIT behind it, come first
    machine.stored("/logs/messages/x.eml")
    assert [event.fields["path"] for event in machine.events() if event.eventid == "looper.smtp.message"] == [
        "/logs/messages/x.eml"
    ]
    actions = machine.actions()
    sent = b"".join(action.data for action in actions if isinstance(action, Send))
    assert sent.startswith(b"250 2.0.0 Ok: queued as ") and sent.endswith(b"221 2.0.0 Bye\r\n")
    assert isinstance(actions[-1], Close)


@pytest.mark.parametrize(
    "line",
    [b"MAIL FROM:<a@b.example> SIZE=\xc2\xb2", b"BDAT \xc2\xb2", b"BDAT 4\xe2\x91\xa02 LAST"],
)
def test_a_size_or_chunk_in_digits_int_refuses_gets_a_syntax_reply(line: bytes):
    # fuzz_smtpd found b"BDAT 4\xe2\x91\xa02" (with the Unicode digits of fuzz/dicts/smtp.dict).
    client = Client()
    client.say(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n" if line.startswith(b"BDAT") else b"EHLO x\r\n")
    reply = client.say(line + b"\r\n")
    assert reply[:1] == b"5"


def test_a_bdat_refusal_that_is_one_error_too_many_closes_without_reading_its_chunk():
    # fuzz_smtpd found it after the exim/sendmail rules landed: three bad
    # commands, then a BDAT without recipients. Exim's refusal was one error
    # too many, the persona hung up, and then the chunk was announced to a
    # closed machine (a KeyError in the transition table).
    client = Client(replace(SETTINGS, persona=PERSONAS["exim"], max_message_bytes=52428800), ClientInfo("192.0.2.7"))
    client.say(b"EHLO x\r\nMAIL FROM:<>\r\n")
    assert client.say(b"XYZ\r\nXYZ\r\nXYZ\r\n") == b"500 unrecognized command\r\n" * 3
    reply = client.say(b"BDAT 42\r\n")
    assert reply == b"503-valid RCPT command must precede BDAT\r\n503 Too many syntax or protocol errors\r\n"
    assert client.closed
    assert client.say(b"x" * 42 + b"NOOP\r\n") == b""  # nothing more is read


@pytest.mark.parametrize("line", [b"XAUTH.0\r\x8a\r\n", b"X\x8d\x8aY\r\n"])
def test_sendmail_s_top_bit_stripping_cannot_end_a_reply_line_early(line: bytes):
    # fuzz_smtpd found b"...AUTH.0\r\x8a\n": the echo loses its top bit (0x8A
    # reads LF), and the CR before it made a line break inside the reply.
    client = Client(replace(SETTINGS, persona=PERSONAS["sendmail"]), ClientInfo("192.0.2.7"))
    client.say(b"EHLO x\r\n")
    reply = client.say(line)
    assert reply.endswith(b"\r\n") and b"\r\n" not in reply[:-2]
    assert parse_reply_line(reply[:-2]) is not None


@pytest.mark.parametrize("pieces", [[b"line one\r\nline two\n"], [b"line one\r\n", b"line two\n"]])
def test_a_message_cut_at_a_bare_line_end_counts_what_came_before_it(pieces: list[bytes]):
    # fuzz_smtpd found it: sendmail's 421 to a bare LF in a message logged
    # the size received so far, which left out the lines that came in the
    # same read as the bare LF (51 bytes cut in pieces, 0 in one read).
    client = Client(replace(SETTINGS, persona=PERSONAS["sendmail"]), ClientInfo("192.0.2.7"))
    for command in (b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n"):
        client.say(command)  # one at a time: sendmail takes nothing pipelined behind EHLO
    assert client.say(b"DATA\r\n")[:3] == b"354"
    replies = b"".join(client.say(piece) for piece in pieces)
    assert replies == b"421 4.5.0 Bare linefeed (LF) not allowed\r\n"
    assert [cut["size"] for cut in client.of("looper.smtp.message_cut")] == [len(b"line one\r\nline two")]


def test_a_starttls_answered_at_an_idle_timeout_then_tls_up_on_the_closed_session():
    # fuzz_smtpd found it: sendmail answers the partial line it holds when
    # the client idles out; a STARTTLS there is answered, the session then
    # closes, and the adapter's handshake reported TLS up to a closed
    # machine (a KeyError in the transition table).
    client = Client(replace(SETTINGS, persona=PERSONAS["sendmail"]), ClientInfo("192.0.2.7"))
    client.say(b"EHLO x\r\n")
    client.machine.receive_data(b"STARTTLS")
    client.machine.timed_out()
    assert client.take() == b"220 2.0.0 Ready to start TLS\r\n"
    assert client.closed
