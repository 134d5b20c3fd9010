"""The line reader (looper/proto/lines.py): each policy by example, then a
hypothesis sweep against a model that reads the whole stream at once."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.proto.lines import Ending, LineReader, Overlong, Refused

NUL = re.compile(rb"\x00")


def read(reader: LineReader, *chunks: bytes, forbidden: re.Pattern[bytes] | None = None) -> list:
    """Every line of the chunks, in order; a line "RAW n" makes the next n
    bytes raw (they come out as one ("raw", bytes) entry)."""
    out: list = []
    for chunk in chunks:
        position = 0
        while position < len(chunk):
            if reader.raw_left:
                piece, position = reader.read_raw(chunk, position)
                if out and type(out[-1]) is tuple and out[-1][2]:
                    out[-1] = ("raw", out[-1][1] + piece, reader.raw_left > 0)
                else:
                    out.append(("raw", piece, reader.raw_left > 0))
                continue
            line, position = reader.read_line(chunk, position, forbidden=forbidden)
            assert reader.buffered <= reader.max_line_bytes
            if line is None:
                assert position == len(chunk)
                break
            out.append(line)
            size = _raw_size(line, reader.max_line_bytes)
            if size is not None:
                reader.expect(size)
                if not size:
                    out.append(("raw", b"", False))
    return [entry[:2] if type(entry) is tuple else entry for entry in out]


def _raw_size(line: bytes | Refused, max_line_bytes: int) -> int | None:
    if type(line) is bytes and len(line) < max_line_bytes - 1 and re.fullmatch(rb"RAW [0-9]", line):
        return int(line[4:])
    return None


def model(stream: bytes, max_line_bytes: int, ending: Ending, overlong: Overlong, forbidden=None) -> list:
    """What the reader must make of `stream`, read in one piece by the rules
    in lines.py's docstring."""
    out: list = []
    position = 0
    end_mark = b"\n" if ending is Ending.LF else b"\r\n"
    while position < len(stream):
        found = stream.find(end_mark, position)
        lf = -1 if found < 0 else found + len(end_mark) - 1
        before_lf = stream[position:] if lf < 0 else stream[position:lf]  # the line's bytes, a CR included
        head = before_lf[:max_line_bytes]
        if forbidden is not None and forbidden.search(head):
            out.append(Refused.FORBIDDEN_BYTE)
        elif len(before_lf) > max_line_bytes and overlong is Overlong.SPLIT:
            out.append(Refused.TOO_LONG)  # and the rest is the next line
            position += max_line_bytes
            continue
        elif len(before_lf) > max_line_bytes:
            out.append(Refused.TOO_LONG if overlong is Overlong.REFUSE else head)
            size = _raw_size(head, max_line_bytes) if overlong is Overlong.TRUNCATE else None
            assert size is None  # a truncated line is never short enough to be "RAW n"
        elif lf < 0:
            break  # a partial line, never completed
        else:
            line = before_lf[:-1] if before_lf.endswith(b"\r") else before_lf
            out.append(line)
            size = _raw_size(line, max_line_bytes)
            if size is not None:
                raw = stream[lf + 1 : lf + 1 + size]
                if raw or not size:  # raw bytes cut short by the stream's end come out as far as they go
                    out.append(("raw", raw))
                position = lf + 1 + size
                continue
        if lf < 0:
            break
        position = lf + 1
    return out


def test_lf_ends_a_line_and_a_cr_before_it_goes():
    assert read(LineReader(100), b"EHLO a\r\nMAIL b\nc\r\r\nrest") == [b"EHLO a", b"MAIL b", b"c\r"]


def test_crlf_only_keeps_a_bare_lf_in_the_line():
    reader = LineReader(100, ending=Ending.CRLF)
    assert read(reader, b"one\ntwo\r\nthree\r", b"\nfour\n\r\n") == [b"one\ntwo", b"three", b"four\n"]


def test_the_limit_counts_the_cr_and_not_the_lf():
    assert read(LineReader(5), b"1234\r\n") == [b"1234"]
    assert read(LineReader(5), b"12345\r\nok\n") == [Refused.TOO_LONG, b"ok"]
    assert read(LineReader(5), b"12345\n") == [b"12345"]


def test_an_overlong_line_is_refused_once_and_skipped_to_its_end():
    reader = LineReader(4)
    assert read(reader, b"abcde", b"fgh", b"ij\r\nok\r\n") == [Refused.TOO_LONG, b"ok"]


def test_an_overlong_line_is_truncated_like_postfix():
    reader = LineReader(4, overlong=Overlong.TRUNCATE)
    assert read(reader, b"abcdefgh\r\nok\r\n") == [b"abcd", b"ok"]
    assert read(reader, b"ab", b"cde", b"f\nx\n") == [b"abcd", b"x"]


def test_too_long_is_known_at_the_first_byte_past_the_limit():
    reader = LineReader(4)
    assert reader.read_line(b"abcd") == (None, 4)
    assert reader.read_line(b"e") == (Refused.TOO_LONG, 0)
    assert reader.buffered == 0


def test_a_forbidden_byte_is_refused_before_the_line_ends():
    reader = LineReader(10)
    assert reader.read_line(b"ab\x00cd", forbidden=NUL) == (Refused.FORBIDDEN_BYTE, 2)
    assert read(reader, b"ef\r\nok\r\n") == [b"ok"]


def test_a_forbidden_byte_past_the_limit_does_not_count():
    assert read(LineReader(3), b"abc\x00\n", forbidden=NUL) == [Refused.TOO_LONG]


def test_raw_bytes_are_taken_whole_line_ends_and_all():
    reader = LineReader(100)
    assert read(reader, b"RAW 7\r\nab\r", b"\ncd.\r\nnext\r\n") == [b"RAW 7", ("raw", b"ab\r\ncd."), b"", b"next"]


def test_raw_whole_data_is_not_copied():
    reader = LineReader(10)
    reader.expect(3)
    data = b"abc"
    piece, position = reader.read_raw(data)
    assert piece is data and position == 3 and reader.raw_left == 0


def test_misuse_is_an_exception():
    reader = LineReader(10)
    reader.read_line(b"half")
    with pytest.raises(RuntimeError):
        reader.expect(3)
    reader.clear()
    reader.expect(3)
    with pytest.raises(RuntimeError):
        reader.read_line(b"x\n")
    with pytest.raises(ValueError):
        LineReader(0)


def test_head_sees_the_first_bytes_across_reads():
    reader = LineReader(100)
    reader.read_line(b"2")
    assert reader.head(b"50 ok\r\n", 0, 4) == b"250 "
    assert LineReader(100).head(b"25\nx", 0, 4) == b"25"


def test_clear_forgets_a_partial_line_and_a_skip():
    reader = LineReader(3)
    assert reader.read_line(b"abcdef") == (Refused.TOO_LONG, 3)
    reader.clear()
    assert read(reader, b"x\n") == [b"x"]


STREAM = st.lists(
    st.one_of(
        st.sampled_from([b"\r\n", b"\n", b"\r", b"RAW 3\r\n", b"RAW 0\n", b"\x00", b"abc", b"x" * 9]),
        st.binary(max_size=12),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(
    STREAM,
    st.lists(st.integers(min_value=0, max_value=200), max_size=12),
    st.integers(min_value=1, max_value=12),
    st.sampled_from(Ending),
    st.sampled_from(Overlong),
    st.booleans(),
)
def test_split_anywhere_reads_as_whole_and_as_the_model(stream, cuts, max_line_bytes, ending, overlong, forbid):
    forbidden = NUL if forbid else None
    cut_points = sorted({min(cut, len(stream)) for cut in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *cut_points], [*cut_points, len(stream)])]
    whole = read(LineReader(max_line_bytes, ending=ending, overlong=overlong), stream, forbidden=forbidden)
    split = read(LineReader(max_line_bytes, ending=ending, overlong=overlong), *chunks, forbidden=forbidden)
    byte_by_byte = read(
        LineReader(max_line_bytes, ending=ending, overlong=overlong),
        *(stream[i : i + 1] for i in range(len(stream))),
        forbidden=forbidden,
    )
    assert split == whole == byte_by_byte
    assert whole == model(stream, max_line_bytes, ending, overlong, forbidden)
