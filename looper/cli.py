"""Command line: `looper run`, `looper check-config`, `looper report`, `looper blocklist`, `looper tail`,
`looper replay`.

A trap that cannot start says why in one line on stderr, naming the file,
the key and the problem, never in a traceback: exit status 2 for the
configuration and what it names on disk (check-config finds the same with
the same check), 1 for an address that cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import logging
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass

from looper import __version__
from looper.bait import check_bait
from looper.config import BLOCKLIST_FORMATS, Config, ConfigError, check_runtime, load_config
from looper.eventlog import open_event_log, reopen_log_files
from looper.loops import event_loop_factory, resolved_event_loop
from looper.privileges import RunAsUser, become, hand_over, run_as_user
from looper.sinks import collector_sinks

log = logging.getLogger("looper")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
EXIT_STDOUT_CLOSED = 1  # what Python's docs do (signal module, "Note on SIGPIPE")

DEFAULTS_SOURCE = "built-in defaults"  # the "file" named in errors when there is no -c

# What to do when bind() fails, by errno; {key} is the listen key.
LISTEN_HINTS = {
    errno.EACCES: "run as root or grant CAP_NET_BIND_SERVICE",
    errno.EADDRINUSE: "stop the program that listens there, or change {key}",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: change {key}",
}


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
        if name == "run":
            command.add_argument("--no-view", action="store_true",
                                 help="in a terminal, do not show the events on stderr as they happen")
    text = "see the trap at work in half a minute: loops through simulated relays on loopback, unprivileged"
    demo = commands.add_parser("demo", help=text, description=text)
    demo.add_argument("--keep", action="store_true", help="keep the demo's log and captured mail")
    text = "follow an event log, one readable line per event"
    tail = commands.add_parser("tail", help=text, description=text)
    tail.add_argument("log", nargs="?", metavar="LOG", help="the event log (default: <log.dir>/events.jsonl)")
    tail.add_argument("-c", "--config", metavar="FILE", help="YAML configuration (for log.dir)")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="show the last N events first (10)")
    tail.add_argument("--no-follow", action="store_true", help="print the last events and stop")
    tail.add_argument("--json", action="store_true", help="pass the JSON lines through unchanged")
    tail.add_argument("--event", action="append", metavar="PREFIX",
                      help="only events whose id starts so (reflect, looper.login., ...; repeatable)")
    tail.add_argument("--ip", action="append", metavar="ADDRESS", help="only this address's events (repeatable)")
    text = "analyse event logs: open relays, loop chains, what the emulated servers caught"
    report = commands.add_parser("report", help=text, description=text)
    report.add_argument("logs", nargs="*", metavar="LOG",
                        help="event logs, plain or gzip (default: <log.dir>/events.jsonl*)")
    report.add_argument("-c", "--config", metavar="FILE", help="YAML configuration (for log.dir)")
    report.add_argument("--since", metavar="WHEN", help="only events from then on (2026-12-01, 2026-12-01T10:00Z)")
    report.add_argument("--until", metavar="WHEN", help="only events until then (a date: to its end)")
    report.add_argument("--sensor", action="append", metavar="NAME", help="only this sensor's events (repeatable)")
    report.add_argument("--ip", action="append", metavar="ADDRESS", help="only this address's events (repeatable)")
    report.add_argument("--format", choices=("text", "json", "html"), default="text")
    report.add_argument("-o", "--output", metavar="FILE", help="write the report here (default: standard output)")
    report.add_argument("--quiet-seconds", type=float, metavar="S",
                        help="a chain with no pass for this long has ended (default: analysis.quiet_seconds)")
    text = "the open-relay blocklist from event logs: for rbldnsd, Postfix, people and scripts; or delist an address"
    blocklist = commands.add_parser("blocklist", help=text, description=text)
    blocklist.add_argument("logs", nargs="*", metavar="LOG",
                           help="event logs, plain or gzip, of one or many sensors (default: <log.dir>/events.jsonl*)")
    blocklist.add_argument("-c", "--config", metavar="FILE", help="YAML configuration (log.dir, blocklist)")
    blocklist.add_argument("--since", metavar="WHEN", help="only events from then on (2026-12-01, 2026-12-01T10:00Z)")
    blocklist.add_argument("--until", metavar="WHEN", help="only events until then (a date: to its end)")
    blocklist.add_argument("--sensor", action="append", metavar="NAME", help="only this sensor's events (repeatable)")
    blocklist.add_argument("--ip", action="append", metavar="ADDRESS", help="only this address's events (repeatable)")
    blocklist.add_argument("--format", choices=BLOCKLIST_FORMATS, help="default: blocklist.format (rbldnsd)")
    blocklist.add_argument("--min-passes", type=_positive_int, metavar="N",
                           help="accepted loop passes that list an address (default: blocklist.min_passes, 1)")
    blocklist.add_argument("--expire-days", type=_positive_float, metavar="D",
                           help="days listed after the last evidence (default: blocklist.expire_days, 30)")
    blocklist.add_argument("--include", action="append", choices=("loop_protected",), default=[],
                           help="also list relays that only showed loop protection")
    blocklist.add_argument("-o", "--output", metavar="FILE",
                           help="write it here, atomically (default: standard output)")
    blocklist.add_argument("--delist", metavar="IP",
                           help="take this address off the list until new evidence: logged as looper.relay.delisted")
    blocklist.add_argument("--reason", metavar="TEXT", help="with --delist: why (kept in the event)")
    text = "show what was said in one session, both directions, with timing"
    replay = commands.add_parser("replay", help=text, description=text)
    replay.add_argument("session", metavar="SESSION", help="the session id (of its events), or the start of it")
    replay.add_argument("logs", nargs="*", metavar="LOG",
                        help="transcripts, plain or gzip (default: <log.dir>/transcripts.jsonl*)")
    replay.add_argument("-c", "--config", metavar="FILE", help="YAML configuration (for log.dir)")
    replay.add_argument("--speed", type=_speed, metavar="X",
                        help="play it back in real time, X times as fast (0.5: half as fast)")
    replay.add_argument("--json", action="store_true", help="the session's lines as they are stored")
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return number


def _speed(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        speed = 0.0
    if not 0 < speed < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return speed


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _command(_parser().parse_args(argv))
        finally:
            sys.stdout.flush()  # here, where a closed pipe can be caught, not at exit
    except BrokenPipeError:
        # The reader has gone (`looper check-config | head -1`): stop quietly.
        # stdout now leads nowhere, so that the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED


def _command(args: argparse.Namespace) -> int:
    source = getattr(args, "config", None) or DEFAULTS_SOURCE
    if args.command == "report":
        return _report(args, source)
    if args.command == "blocklist":
        return _delist(args, source) if args.delist else _blocklist(args, source)
    if args.command == "tail":
        return _tail(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "demo":
        from looper.demo import main as demo

        return demo(keep=args.keep)
    try:
        config = load_config(args.config)
        check_runtime(config, source)  # the same check for both commands: OK means run starts
        check_bait(config, source)  # the mailbox IMAP and POP3 open, when they listen
        who = run_as_user(config, source)  # started as root: the user it becomes (it must exist)
    except ConfigError as err:
        return _cannot_start(err)
    if args.command == "check-config":
        print(f"# {source}: OK")
        print(config.to_yaml(), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s looper: %(message)s", stream=sys.stderr)
    from looper.tail import colour_wanted

    return _run(config, source, view=not args.no_view and colour_wanted(sys.stderr), who=who)


def _tail(args: argparse.Namespace) -> int:
    from looper.tail import tail

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _cannot_start(err)
    path = args.log or os.path.join(config.log.dir, "events.jsonl")
    if args.no_follow and not os.path.exists(path):
        print(f"looper tail: {path}: no such file", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        tail(path, count=args.lines, keep_following=not args.no_follow, as_json=args.json, prefixes=args.event,
             ips=set(args.ip) if args.ip else None)
    except KeyboardInterrupt:
        return 0
    except OSError as err:
        print(f"looper tail: {path}: {_os_problem(err)}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def _replay(args: argparse.Namespace) -> int:
    from looper.replay import ReplayError, default_transcripts, find_session, replay

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _cannot_start(err)
    paths = args.logs or default_transcripts(config.log.dir)
    if not paths:
        print(f"looper replay: no transcripts in {config.log.dir}/ (give the files to read)", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        lines = find_session(paths, args.session)
    except ReplayError as err:
        print(f"looper replay: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        replay(lines, sys.stdout, speed=args.speed, as_json=args.json)
    except KeyboardInterrupt:
        return 0
    return 0


@dataclass(frozen=True)
class _LogInputs:
    """What `report` and `blocklist` read: the files and the filters."""

    paths: list[str]
    since: str | None
    until: str | None
    sensors: frozenset[str] | None
    ips: frozenset[str] | None


def _log_inputs(args: argparse.Namespace, config: Config) -> _LogInputs | str:
    """The logs and filters a command was given, or what is wrong with them."""
    from looper.analysis.logs import default_logs, parse_when

    paths = args.logs or default_logs(config.log.dir)
    if not paths:
        return f"no event log in {config.log.dir}/ (give the files to read)"
    try:
        return _LogInputs(
            paths,
            parse_when(args.since) if args.since else None,
            parse_when(args.until, end_of_day=True) if args.until else None,
            frozenset(args.sensor) if args.sensor else None,
            frozenset(str(ipaddress.ip_address(ip)) for ip in args.ip) if args.ip else None,
        )
    except ValueError as err:
        return str(err)


def _put_out(command: str, output: str | None, text: str) -> int:
    """To -o FILE, written whole and renamed into place (a reader never sees
    half of it), or to standard output."""
    if not output:
        sys.stdout.write(text)
        return 0
    from looper.files import write_atomically

    try:
        write_atomically(output, text.encode("utf-8"))
    except OSError as err:
        print(f"looper {command}: {output}: {_os_problem(err)}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def _report(args: argparse.Namespace, source: str) -> int:
    from looper.analysis.logs import LogError, analyse
    from looper.analysis.report import build_report, render_text, report_json

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _cannot_start(err)
    inputs = _log_inputs(args, config)
    if isinstance(inputs, str):
        print(f"looper report: {inputs}", file=sys.stderr)
        return EXIT_CONFIG
    quiet = args.quiet_seconds if args.quiet_seconds is not None else config.analysis.quiet_seconds
    progress = _Progress() if sys.stderr.isatty() else None
    try:
        analysis, stats = analyse(inputs.paths, quiet_seconds=quiet, since=inputs.since, until=inputs.until,
                                  sensors=inputs.sensors, ips=inputs.ips,
                                  on_line=progress.show if progress else None)
    except LogError as err:
        print(f"looper report: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if progress:
            progress.done()
    document = build_report(analysis, stats)
    if args.format == "json":
        text = report_json(document)
    elif args.format == "html":
        from looper.analysis.html import render_html

        text = render_html(document)
    else:
        text = render_text(document)
    return _put_out("report", args.output, text)


def _blocklist(args: argparse.Namespace, source: str) -> int:
    from looper.analysis.blocklist import Book
    from looper.analysis.logs import LogError, read_events
    from looper.analysis.zones import listing_rules, render, zone_settings

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _cannot_start(err)
    if args.reason and not args.delist:
        print("looper blocklist: --reason goes with --delist", file=sys.stderr)
        return EXIT_CONFIG
    inputs = _log_inputs(args, config)
    if isinstance(inputs, str):
        print(f"looper blocklist: {inputs}", file=sys.stderr)
        return EXIT_CONFIG
    settings = config.blocklist
    own = tuple(e.host for e in (*config.listen.smtp, *config.listen.submissions))
    rules = listing_rules(settings, own_addresses=own, min_passes=args.min_passes, expire_days=args.expire_days,
                          include_loop_protected=True if "loop_protected" in args.include else None)
    book = Book(rules)
    wanted = frozenset({"looper.reflect.message", "looper.relay.verdict", "looper.relay.delisted"})
    try:
        for record in read_events(inputs.paths, wanted=wanted, since=inputs.since, until=inputs.until,
                                  sensors=inputs.sensors, ips=inputs.ips):
            book.feed(record)
    except LogError as err:
        print(f"looper blocklist: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    now = time.time()
    text = render(args.format or settings.format, book.listed(now), zone_settings(settings, config.sensor), rules, now)
    return _put_out("blocklist", args.output, text)


def _delist(args: argparse.Namespace, source: str) -> int:
    from looper import delisting

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _cannot_start(err)
    try:
        fields = delisting.delisted_fields(args.delist, args.reason, delisting.who_asks())
    except ValueError:
        print(f"looper blocklist: --delist {args.delist!r} is not an IP address", file=sys.stderr)
        return EXIT_CONFIG
    log_dir = config.log.dir
    try:
        if delisting.trap_running(log_dir):
            path = delisting.request(log_dir, fields)
            for _ in range(50):  # the trap takes requests once a second
                if not os.path.exists(path):
                    print(f"delisted {fields['relay_ip']}: the running trap logged it and updated its feed")
                    return 0
                time.sleep(0.1)
            print(f"looper blocklist: the request is in {path}; the trap has not taken it yet"
                  " (it takes requests once a second)", file=sys.stderr)
            return EXIT_RUNTIME
        delisting.append_event(log_dir, config.sensor, fields)
    except OSError as err:
        print(f"looper blocklist: {log_dir}: {_os_problem(err)}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"delisted {fields['relay_ip']}: logged in {os.path.join(log_dir, 'events.jsonl')}"
          " (no trap is running on it; a trap started later honours it)")
    return 0


class _Progress:
    """A progress bar on stderr, for inputs big enough to wait for."""

    MIN_BYTES = 64 << 20

    def __init__(self) -> None:
        self.shown = False

    def show(self, stats) -> None:
        if stats.size < self.MIN_BYTES:
            return
        done = min(stats.bytes_read() / stats.size, 1.0)
        bar = "#" * int(done * 40)
        sys.stderr.write(f"\rreading {len(stats.files)} file(s): [{bar:<40}] {done:4.0%} {stats.lines} lines")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _cannot_start(err: ConfigError) -> int:
    print(err, file=sys.stderr)
    return EXIT_CONFIG


def cannot_listen_line(source: str, key: str, address: str, error_number: int | None) -> str:
    """The one line for a listener that cannot be bound: where, why, what to do."""
    problem = os.strerror(error_number) if error_number else "cannot bind"
    line = f"{source}: {key}: cannot listen on {address}: {problem}"
    hint = LISTEN_HINTS.get(error_number)
    return f"{line}; {hint.format(key=key)}" if hint else line


def _listener_that_failed(config: Config, err: OSError) -> tuple[str, str]:
    """(key, address) of the listener in asyncio's bind error ("... bind on
    address ('127.0.0.1', 25): ..."); every listener when none is found."""
    for key in ("smtp", "submissions"):
        for endpoint in getattr(config.listen, key):
            address = f"({endpoint.host!r}, {endpoint.port}"  # IPv6 adds flowinfo and scope id
            if f"{address})" in str(err) or f"{address}," in str(err):
                return f"listen.{key}", str(endpoint)
    return "listen", ", ".join(map(str, config.listen.smtp + config.listen.submissions))


def _os_problem(err: OSError) -> str:
    return f"cannot write {err.filename}: {err.strerror}" if err.filename else str(err.strerror or err)


def _raise_file_limit() -> None:
    """Each session holds two sockets: take all the descriptors we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(config: Config, source: str, *, view: bool = False, who: RunAsUser | None = None) -> int:
    """`view`: show each event on stderr as it happens (a terminal).
    `who`: the user to become once every listener is bound and every file
    open (run_as, started as root)."""
    from looper.net.server import Trap  # the CLI's only path into net/
    from looper.net.tls import TLSSetupError
    from looper.sinks.metrics import MetricsBindError

    _raise_file_limit()
    # check_runtime has passed, but os.access can say yes where open() says
    # no (NFS, ACLs), and the disk may change meanwhile: still one line.
    try:
        eventlog = open_event_log(
            config.sensor,
            config.log.dir,
            max_bytes=config.log.max_bytes,
            backups=config.log.backups,
            stdout=config.log.stdout,
            collectors=collector_sinks(config),
        )
    except OSError as err:
        return _cannot_start(ConfigError(source, "log.dir", _os_problem(err)))

    if view:
        from looper.view import render

        def show(record: dict) -> None:
            try:
                sys.stderr.write(render(record, colour=True) + "\n")
            except OSError:  # the terminal has gone (and SIGHUP no longer ends the trap): the view stops
                eventlog.listeners.remove(show)

        eventlog.listeners.append(show)

    async def serve() -> int:
        trap = Trap(config, eventlog)
        try:
            await trap.start(accepting=who is None)  # as root: not one connection before the drop
        except TLSSetupError as err:
            await trap.stop()
            # Without smtp.tls_cert the trap makes its own in log.dir.
            return _cannot_start(ConfigError(source, "smtp.tls_cert" if config.smtp.tls_cert else "log.dir", str(err)))
        except MetricsBindError as err:  # the trap has stopped what it had started
            print(cannot_listen_line(source, "metrics.listen", str(err.endpoint), err.errno), file=sys.stderr)
            return EXIT_RUNTIME
        except OSError as err:
            if err.filename is not None:  # a file (the message store's folder), not an address
                await trap.stop()
                return _cannot_start(ConfigError(source, "log.dir", _os_problem(err)))
            key, address = _listener_that_failed(config, err)
            print(cannot_listen_line(source, key, address, err.errno), file=sys.stderr)
            return EXIT_RUNTIME
        # Every port bound, every file open (events, messages, TLS key): root is done.
        if who is not None:
            try:
                hand_over(config.log.dir, who, source)
                become(who, config.log.dir, source)
            except ConfigError as err:
                await trap.stop()
                return _cannot_start(err)
            log.info("running as %s", who)
            await trap.accept()
        elif os.geteuid() == 0:
            log.warning("running as root (run_as: null): set run_as.user to a user of its own, so that a flaw"
                        " in looper is not a flaw of root's")
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, shutdown.set)

        def reopen() -> None:  # SIGHUP, from logrotate: the log files anew, no session disturbed
            eventlog.flush()  # what was logged before the signal, in the file it was logged to
            log.info("SIGHUP: reopened %s", ", ".join(reopen_log_files()) or "no log file")

        loop.add_signal_handler(signal.SIGHUP, reopen)
        log.info(
            "listening on %s, dialing back on port %d, events in %s/events.jsonl, on %s's event loop",
            ", ".join(map(str, trap.listening)), config.dialback.port, config.log.dir,
            resolved_event_loop(config.event_loop),
        )
        await shutdown.wait()
        log.info("stopping: closing %d sessions", len(trap.sessions))
        await trap.stop()
        return 0

    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            return runner.run(serve())
    finally:
        eventlog.close()


if __name__ == "__main__":
    sys.exit(main())
