"""What a peer sent, as text: the one way every core decodes and splits it."""

from __future__ import annotations


def as_text(raw: bytes) -> str:
    """Bytes as logged: UTF-8, anything else replaced (8-bit junk stays visible as U+FFFD)."""
    return raw.decode("utf-8", "replace")


def words(text: str) -> list[str]:
    """Words as SMTP has them: split at ASCII white space only, as Postfix
    does (and as the command line was split). str.split() would also split
    at \\x1c-\\x1f and Unicode spaces, so that a command logged as one word
    could be read as two: an AUTH's secret would reach the log."""
    return [word.decode("utf-8") for word in text.encode("utf-8").split()]
