"""What Exim makes of a QUIT between chunks, by what the chunks held: the
cases recorded from the real Exim 4.96 (tests/data/exim/bdat_quit_*.json,
bdat_then_data.json, bdat_bad_keyword.json, replayed whole in
test_personas.py) and the rules of its header reader between them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from looper.proto.exim_chunking import QuitBetweenChunks, quit_between_chunks

HEADERS = b"From: sender@example.test\r\nTo: rcpt@example.net\r\nSubject: looper ground truth\r\n\r\n"
LOST, ACCEPTED, DEAF = QuitBetweenChunks.LOST, QuitBetweenChunks.ACCEPTED, QuitBetweenChunks.DEAF


@pytest.mark.parametrize(("content", "outcome"), [
    # recorded
    (b"Hello.\r\n", DEAF),  # bdat_quit_direct, bdat_quit_then_talk, bdat_then_data
    (b"Hello.\r", DEAF),  # bdat_quit_cr
    (b"Hello", LOST),  # bdat_bad_keyword
    (HEADERS, LOST),  # bdat_quit_headers
    (HEADERS + b"Hello.\r\n", LOST),  # bdat_quit_body_line
    (b"From: sender@example.test\r\n", ACCEPTED),  # bdat_quit_header_line
    # the reader's rules between them
    (b"", LOST),
    (b"From: a\r\nTo: b\r\n", ACCEPTED),
    (b"From: a\nTo: b\n", ACCEPTED),  # bare LF ends a line too
    (b"Subject: a\r\n folded\r\n", ACCEPTED),
    (b"Subject: a\r\n folded", LOST),
    (b"Subject : spaced name\r\n", ACCEPTED),
    (b" Subject: starts with a blank\r\n", DEAF),
    (b"From: a\r\nnot a header\r\n", DEAF),
    (b"not a header\r\nFrom: a\r\n", LOST),  # the body holds the rest
    (b"From: a\rTo: b\r\n", ACCEPTED),  # a bare CR ends a line
    (b"\r\n", LOST),
    (b"Subject\r\n : name and colon split by a fold\r\n", ACCEPTED),
])
def test_outcome(content, outcome):
    assert quit_between_chunks(content) is outcome


@given(st.binary(max_size=300))
def test_any_content_has_an_outcome(content):
    assert quit_between_chunks(content) in QuitBetweenChunks


@given(st.lists(st.sampled_from([b"From: a", b"X-Y:z", b"body", b" fold", b"", b"\r\n", b"\n", b"\r", b":"]), max_size=30))
def test_line_shaped_content_has_an_outcome(pieces):
    assert quit_between_chunks(b"".join(pieces)) in QuitBetweenChunks


def test_a_header_past_exim_s_header_maxsize_is_lost():
    """Exim would have refused it before any QUIT; the reading stops there."""
    from looper.proto.exim_chunking import HEADER_MAXSIZE

    lines = b"X-Filler: 1234567890\r\n" * (HEADER_MAXSIZE // 22 + 2)
    assert quit_between_chunks(lines) is LOST
    assert quit_between_chunks(b"X-Long: " + b"a" * HEADER_MAXSIZE + b"\r\n") is LOST
    assert quit_between_chunks(b"X-Folded: a\r\n" + b" b\r\n" * (HEADER_MAXSIZE // 4 + 2)) is LOST
    assert quit_between_chunks(lines[: HEADER_MAXSIZE // 2 // 22 * 22]) is ACCEPTED  # under it: a header line
