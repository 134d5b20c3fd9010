"""The path of MAIL FROM: and RCPT TO: (RFC 5321 4.1.2): the one parser, for
the emulated server (strict) and the observer of a splice (tolerant).

Both read as Postfix does: a space after the colon is tolerated, and so is
an address without its angle brackets (up to the first space); what
follows the path are its parameters, words split at ASCII white space.
Where they differ:
- strict (the emulated server decides on it, and answers as Postfix would):
  only spaces and tabs may follow the colon; "<" without its ">", a NUL,
  or a space outside a quoted local part make the address malformed (None),
  and so does an empty path;
- tolerant (the observer reports what a client said, whatever the relay's
  server makes of it): any ASCII white space may follow the colon, an
  unclosed "<" runs to the end, and nothing is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass

from looper.proto.text import words

_ASCII_SPACE = " \t\n\r\x0b\x0c"  # bytes.split()'s white space


@dataclass(frozen=True, slots=True)
class MailPath:
    raw: str  # what followed the keyword, less the blanks before it: the path and its parameters
    address: str | None  # without the angle brackets; None: malformed (strict only)
    params: list[str]

    @property
    def as_sent(self) -> str:
        """The path as the client wrote it, brackets and all, without its
        parameters (sendmail echoes it)."""
        if self.raw.startswith("<"):
            return self.raw[: self.raw.find(">") + 1]
        first = words(self.raw)[:1]  # none: only white space the command line kept (it strips its own ends)
        return first[0] if first else self.raw


def parse_path(argument: str, keyword: str, *, strict: bool) -> MailPath | None:
    """The path after `keyword` ("FROM:" or "TO:", any case) at the start of
    a MAIL or RCPT command's argument; None if the keyword is not there."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    raw = argument[len(keyword) :].lstrip(" \t" if strict else _ASCII_SPACE)
    if raw.startswith("<"):
        close = raw.find(">")
        if close < 0:
            if strict:
                return MailPath(raw, None, [])
            address, params = raw[1:], ""
        else:
            address, params = raw[1:close], raw[close + 1 :]
    else:
        address, _, params = raw.partition(" ")
    if strict and (not raw or "\0" in address or (" " in address and '"' not in address)):
        return MailPath(raw, None, words(params))
    return MailPath(raw, address, words(params))


# -- Exim's reading (parse_extract_address and the ESMTP options before it) --

# Exim 4.96's ADDRESS_MAXLENGTH.
EXIM_ADDRESS_MAX = 512
_EXIM_SPECIALS = set('()<>@,;:\\".[] \t')


@dataclass(frozen=True, slots=True)
class EximPath:
    argument: str  # what Exim names in an error: the path less the options it took
    address: str | None  # None: refused, for `reason`
    params: list[str]
    reason: str = ""
    # A refusal from the address parser itself (VRFY gives it without the
    # argument, and it counts as a syntax error; a missing domain does not).
    parse_error: bool = False


def exim_path(raw: str, options: frozenset[str], *, recipient: bool) -> EximPath:
    """A MAIL or RCPT argument (after the colon) as Exim reads it: the
    ESMTP options it knows are taken off the end, one by one, until one it
    does not know; what is left must be one address."""
    text = raw.strip(" \t")
    params: list[str] = []
    while True:
        head, space, last = text.rpartition(" ")
        if not space or last.partition("=")[0].upper() not in options or not head.strip(" \t"):
            break
        params.insert(0, last)
        text = head.rstrip(" \t")
    address, reason = _exim_address(text)
    if address is None:
        return EximPath(text, None, params, reason, parse_error=True)
    if len(address) > EXIM_ADDRESS_MAX:
        return EximPath(text, None, params, f"address is ridiculously long: {address[:64]}...", parse_error=True)
    if address and "@" not in address and not (recipient and address.lower() == "postmaster"):
        kind = "recipient" if recipient else "sender"
        return EximPath(text, None, params, f"{kind} address must contain a domain")
    if not address and recipient:
        return EximPath(text, None, params, "missing or malformed local part", parse_error=True)
    return EximPath(text, address, params)


def exim_mangled_recipient(raw: str) -> str:
    """An RCPT argument after Exim's extract_option() gave up on its last
    word: a last word without "=" has the space before it turned into "="
    (it puts back '=' where it cut the word off, and that was the space)."""
    text = raw.rstrip(" \t")
    cut = max(text.rfind(" "), text.rfind("\t"))
    if cut <= 0 or "=" in text[cut + 1 :] or text.count('"', cut) % 2:
        return raw
    return text[:cut] + "=" + text[cut + 1 :]


def _exim_address(text: str) -> tuple[str | None, str]:
    """The address in `text`, or None and Exim's reason."""
    bracket = text.startswith("<")
    i = 1 if bracket else 0
    if bracket and text[1:].strip(" \t") == ">":
        return "", ""
    if bracket and text[i : i + 1] == "@":  # a source route: @a,@b:local@domain
        colon = text.find(":", i)
        if colon < 0:
            return None, "missing or malformed local part"
        i = colon + 1
    local, i, last_word = _exim_dotted(text, i, quoted=True)
    if not local:
        return None, "missing or malformed local part"
    domain = None
    if text[i : i + 1] == "@":
        if text[i + 1 : i + 2] == "[":
            return None, "domain literals not allowed"
        domain, i, _ = _exim_dotted(text, i + 1, quoted=False)
        if not domain:
            return None, "domain missing or malformed"
    elif not (bracket and text[i : i + 1] == ">") and i < len(text):
        return None, f'"@" or "." expected after "{last_word}"'
    elif not bracket and i >= len(text):
        pass
    if bracket:
        if text[i : i + 1] != ">":
            if domain is None:
                return None, f'"@" or "." expected after "{last_word}"'
            if i < len(text):
                return None, f"malformed address: {text[i:][:32]} may not follow {text[:i]}"
            return None, "'>' missing at end of address"
        i += 1
    rest = len(text) - len(text[i:].lstrip(" \t"))
    if rest < len(text):
        return None, f"malformed address: {text[rest:][:32]} may not follow {text[:rest]}"
    address = local + ("@" + domain if domain is not None else "")
    return address, ""


def _exim_dotted(text: str, i: int, *, quoted: bool) -> tuple[str, int, str]:
    """Words joined by dots from text[i:]: (them, where they end, the last word)."""
    parts: list[str] = []
    word = ""
    while True:
        if quoted and text[i : i + 1] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                return "", i, word
            word = text[i : end + 1]
            i = end + 1
        else:
            start = i
            # a local part's atoms; a domain's labels are letters, digits, - and _
            while i < len(text) and (_exim_atom_char(text[i]) if quoted else _exim_label_char(text[i])):
                i += 1
            word = text[start:i]
        if not word:
            return ("." .join(parts) + "." if parts else ""), i, word
        parts.append(word)
        if text[i : i + 1] != ".":
            return ".".join(parts), i, word
        i += 1


def _exim_atom_char(char: str) -> bool:
    return char not in _EXIM_SPECIALS and char.isprintable()


def _exim_label_char(char: str) -> bool:
    return (char.isascii() and char.isalnum()) or char in "-_"
