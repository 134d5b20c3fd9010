"""Fuzz target: the configuration loader (looper.config.parse_config).

Input: YAML text (UTF-8; invalid bytes become U+FFFD, as a file read as
UTF-8 never holds them).

Checks:
- parse_config raises ConfigError or nothing: `looper check-config` and
  `looper run` turn a ConfigError into one line naming the file and key;
  anything else is a traceback;
- a configuration it accepts can be printed (to_yaml, what check-config
  shows) and reads back as the same configuration;
- what it accepts, the machines accept: the reflect path's Observer takes
  the EHLO mask name, and the emulated relay renders every reply text the
  operator overrode (as looper/net/emulate.py builds its settings) into
  SMTP reply lines.
"""

from __future__ import annotations

from _harness import check, instrumented, main

with instrumented(__name__ == "__main__", "looper", "yaml"):
    from looper.config import Config, ConfigError, parse_config
    from looper.proto.observer import Observer
    from looper.proto.reply import parse_reply_line
    from looper.proto.smtpd import ClientInfo, SmtpServer
# Not instrumented: how the running trap builds the machine's settings.
from looper.net.emulate import smtp_settings  # noqa: E402


class Environment:
    def now_s(self) -> float:
        return 1_795_000_000.0

    def serial(self) -> int:
        return 1

    def cram_challenge(self) -> str:
        return "<1@mx.trap.example.net>"

    def random_bytes(self, count: int) -> bytes:
        return bytes(count)

    def date(self) -> str:
        return "Sun, 22 Nov 2026 10:00:00 +0000"


def check_machines_accept(config: Config) -> None:
    if config.ehlo_mask_name is not None:
        Observer(relay_ip="192.0.2.25", mask_name=config.ehlo_mask_name)
    smtp = config.smtp
    settings = smtp_settings(config, smtp.hostname or "mx.trap.example.net")  # as the running trap builds them
    machine = SmtpServer(settings, ClientInfo("192.0.2.7", name="spam.example.org"), Environment())
    for key in smtp.replies:
        said = machine._line(key)  # what every reply goes through
        lines = [parse_reply_line(line) for line in said[:-2].split(b"\r\n")]
        check(
            all(lines) and lines[-1].final and not any(line.final for line in lines[:-1]),
            f"smtp.replies.{key} makes the relay say {said!r}, not one whole SMTP reply",
        )


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as err:
        check(str(err).startswith("fuzz.yaml: "), f"a ConfigError that does not name the file: {err}")
        return
    printed = config.to_yaml()
    check(parse_config(printed, "printed.yaml") == config, "the printed configuration reads back differently")
    check_machines_accept(config)


if __name__ == "__main__":
    main("config", test_one_input, dictionary="config.dict")
