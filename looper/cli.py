"""Command line: `looper run`, `looper check-config`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys

from looper import __version__
from looper.config import ConfigError, load_config
from looper.eventlog import open_event_log

log = logging.getLogger("looper")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="looper", description="A reflective relay trap for open SMTP relays.")
    parser.add_argument("--version", action="version", version=f"looper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "start the trap"),
        ("check-config", "validate the configuration and print the effective settings"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("-c", "--config", metavar="FILE", help="YAML configuration (default: built-in defaults)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"# {args.config or 'built-in defaults'}: OK")
        print(config.to_yaml(), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s looper: %(message)s", stream=sys.stderr)
    return _run(config)


def _raise_file_limit() -> None:
    """Each session holds two sockets: take all the descriptors we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(config) -> int:
    from looper.net.server import Trap  # the CLI's only path into net/

    _raise_file_limit()
    eventlog = open_event_log(
        config.sensor,
        config.log.dir,
        max_bytes=config.log.max_bytes,
        backups=config.log.backups,
        stdout=config.log.stdout,
        syslog=config.log.syslog,
    )

    async def serve() -> int:
        trap = Trap(config, eventlog)
        try:
            await trap.start()
        except OSError as err:
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if err.errno == 13 else ""
            log.error("cannot listen on %s: %s%s", ", ".join(map(str, config.listen.smtp)), err.strerror or err, hint)
            return EXIT_RUNTIME
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, shutdown.set)
        log.info(
            "listening on %s, dialing back on port %d, events in %s/events.jsonl",
            ", ".join(map(str, trap.listening)), config.dialback.port, config.log.dir,
        )
        await shutdown.wait()
        log.info("stopping: closing %d sessions", len(trap.sessions))
        await trap.stop()
        return 0

    try:
        return asyncio.run(serve())
    finally:
        eventlog.close()


if __name__ == "__main__":
    sys.exit(main())
