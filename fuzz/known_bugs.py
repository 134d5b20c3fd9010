"""Bugs the fuzz targets found that are reported and not fixed yet.

While such a bug is open, every run would stop at it again and find
nothing else. So a fuzz run (not --replay, not the tests) treats an
exception that matches an entry here as a pass; LOOPER_FUZZ_KNOWN=fail
makes them crashes again, to check a fix or to collect reproducers.

Each entry names its regression test in tests/test_fuzz_regressions.py
(xfail until the fix): when the fix lands and that test is flipped,
delete the entry here.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    test: str  # its regression test
    exception: type[BaseException]
    message: str  # a regular expression searched in str(exception)
    where: str  # a regular expression searched in "path/file.py:function" of the innermost frame


KNOWN: list[Known] = [
    Known(
        "test_a_yaml_tag_pyyaml_cannot_construct_is_a_config_error",
        Exception, "", r"/yaml/constructor\.py:",
    ),
    Known(
        "test_a_mask_name_the_config_accepts_is_one_the_observer_takes",
        ValueError, "mask_name must be one word of printable ASCII", r"looper/proto/observer\.py:__init__$",
    ),
    Known(
        "test_a_reply_text_the_config_accepts_is_one_the_relay_can_say",
        Exception, "", r"looper/proto/smtpd\.py:_fill$",
    ),
    Known(
        "test_auth_split_at_unicode_white_space_logs_no_secret",
        AssertionError, "AUTH logged with its initial response", r"fuzz/_harness\.py:check$",
    ),
    Known(
        "test_a_message_stored_after_the_client_half_closed_is_still_logged",
        KeyError, r"Mode\.CLOSED.*Step\.RESUMED", r"looper/proto/smtpd\.py:_move$",
    ),
    Known(
        "test_a_size_or_chunk_in_digits_int_refuses_gets_a_syntax_reply",
        ValueError, r"invalid literal for int\(\)", r"looper/proto/smtpd\.py:_(bdat|mail)_cmd$",
    ),
    Known(
        "test_a_rate_in_digits_int_refuses_is_a_config_error",
        ValueError, r"invalid literal for int\(\)", r"looper/config\.py:_rate$",
    ),
    Known(
        "test_a_reply_text_the_config_accepts_is_one_whole_smtp_reply",
        AssertionError, r"not one whole SMTP reply", r"fuzz/_harness\.py:check$",
    ),
]


def known(err: BaseException) -> Known | None:
    """The entry that err matches, if it matches one and they are tolerated."""
    if os.environ.get("LOOPER_FUZZ_KNOWN") == "fail":
        return None
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return None
    innermost = f"{frames[-1].filename}:{frames[-1].name}"
    for entry in KNOWN:
        if isinstance(err, entry.exception) and re.search(entry.message, str(err)) and re.search(entry.where, innermost):
            return entry
    return None
