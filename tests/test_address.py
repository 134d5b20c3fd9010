"""The MAIL FROM: / RCPT TO: path parser (looper/proto/address.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from looper.proto.address import MailPath, parse_path
from looper.proto.text import as_text


def test_a_path_in_brackets_with_parameters():
    assert parse_path("FROM:<a@b.example> SIZE=10 BODY=8BITMIME", "FROM:", strict=True) == MailPath(
        "<a@b.example> SIZE=10 BODY=8BITMIME", "a@b.example", ["SIZE=10", "BODY=8BITMIME"]
    )


def test_the_keyword_is_any_case_and_a_space_after_it_is_tolerated():
    for strict in (True, False):
        assert parse_path("to: <c@d.example>", "TO:", strict=strict).address == "c@d.example"
        assert parse_path("from:<>", "FROM:", strict=strict).address == ""
        assert parse_path("FROM <a@b>", "FROM:", strict=strict) is None


def test_an_address_without_brackets_runs_to_the_first_space():
    for strict in (True, False):
        path = parse_path("TO:c@d.example NOTIFY=NEVER", "TO:", strict=strict)
        assert (path.address, path.params) == ("c@d.example", ["NOTIFY=NEVER"])
        assert path.as_sent == "c@d.example"


def test_strict_refuses_what_tolerant_reads():
    assert parse_path("FROM:<a@b", "FROM:", strict=True).address is None
    assert parse_path("FROM:<a@b", "FROM:", strict=False).address == "a@b"
    assert parse_path("FROM:<a b@c>", "FROM:", strict=True).address is None
    assert parse_path('FROM:<"a b"@c>', "FROM:", strict=True).address == '"a b"@c'
    assert parse_path("FROM:<a\0b>", "FROM:", strict=True).address is None
    assert parse_path("FROM:", "FROM:", strict=True).address is None
    assert parse_path("FROM:", "FROM:", strict=False).address == ""
    # Only spaces and tabs before the path, strictly; any ASCII white space tolerantly.
    assert parse_path("FROM:\r<a@b>", "FROM:", strict=True).address == "\r<a@b>"
    assert parse_path("FROM:\r<a@b>", "FROM:", strict=False).address == "a@b"


def test_the_path_as_sent_keeps_its_brackets():
    assert parse_path("TO: <x@y> ORCPT=rfc822;x@y", "TO:", strict=True).as_sent == "<x@y>"


def test_parameters_split_at_ascii_white_space_only():
    # \x1c and U+00A0 are white space to str.split(), not to SMTP.
    assert parse_path("FROM:<a@b> X=1\x1cY=2\u00a0Z", "FROM:", strict=True).params == ["X=1\x1cY=2\u00a0Z"]


# The two parsers this one replaced, as they were: it must read every input as they did.


def _observer_read_path(rest: bytes, keyword: bytes) -> tuple[str | None, list[str]]:
    if rest[: len(keyword)].upper() != keyword:
        return None, []
    path = rest[len(keyword) :].lstrip()
    if path.startswith(b"<"):
        close = path.find(b">")
        address, params = (path[1:], b"") if close < 0 else (path[1:close], path[close + 1 :])
    else:
        address, _, params = path.partition(b" ")
    return as_text(address), [as_text(param) for param in params.split()]


def _smtpd_words(text: str) -> list[str]:
    return [word.decode("utf-8") for word in text.encode("utf-8").split()]


def _smtpd_path(argument: str, keyword: str) -> tuple[str | None, tuple[str | None, list[str]]]:
    if argument[: len(keyword)].upper() != keyword:
        return None, (None, [])
    path = argument[len(keyword) :].lstrip(" \t")
    if not path:
        return path, (None, [])
    if path.startswith("<"):
        close = path.find(">")
        if close < 0:
            return path, (None, [])
        address, params = path[1:close], _smtpd_words(path[close + 1 :])
    else:
        address, _, rest = path.partition(" ")
        params = _smtpd_words(rest)
    if "\0" in address or (" " in address and '"' not in address):
        return path, (None, params)
    return path, (address, params)


PIECES = st.lists(
    st.one_of(
        st.sampled_from(["FROM:", "from:", "TO:", "<", ">", " ", "\t", "\r", "\x0b", "\0", '"', "@", "a", "SIZE=1"]),
        st.text(max_size=6),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(PIECES, st.sampled_from(["FROM:", "TO:"]))
def test_strict_reads_as_the_emulated_server_did(argument, keyword):
    raw, (address, params) = _smtpd_path(argument, keyword)
    path = parse_path(argument, keyword, strict=True)
    if raw is None:
        assert path is None
    else:
        assert (path.raw, path.address, path.params) == (raw, address, params)
        if path.address is not None and argument == argument.strip(" \t\r\n\x0b\x0c"):
            assert path.as_sent  # as the emulated server reads it: the command line has no white space at its ends
        path.as_sent  # and never an exception


@settings(max_examples=500, deadline=None)
@given(st.one_of(PIECES.map(lambda text: text.encode("utf-8")), st.binary(max_size=40)), st.sampled_from(["FROM:", "TO:"]))
def test_tolerant_reads_as_the_observer_did(rest, keyword):
    address, params = _observer_read_path(rest, keyword.encode())
    path = parse_path(as_text(rest), keyword, strict=False)
    assert ((path.address, path.params) if path is not None else (None, [])) == (address, params)
