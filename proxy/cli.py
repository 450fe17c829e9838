"""The `grayscale` command line."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from proxy import __version__
from proxy.api.admin_client import DEFAULT_ADMIN_URL, AdminError, call, status_table
from proxy.app.server import serve_until_signalled
from proxy.app.workers import Worker, die_with_parent, supervise
from proxy.config.loader import ConfigError, load_config, parse_duration
from proxy.config.model import Listen, LoadOptions
from proxy.config.values import LISTEN_FORM, parse_listen
from proxy.rollout.store import StateError
from proxy.runtime.event_loop import loop_factory
from proxy.telemetry import logs
from proxy.telemetry.metrics import COMPILED
from proxy.tools.demo.run import DEMO_CONFIG, run_demo
from proxy.tools.explain import explain
from proxy.tools.selftest import World
from proxy.tools.selftest import report as selftest_report
from proxy.tools.simulate import DAY, render

BUILD = "compiled" if COMPILED else "pure Python"  # told by --version


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every command takes, before or after its name: given `defaults` on the
    top-level parser, and on each command's without, so as not to undo one given before."""
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="log format on stderr (default text)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info" if defaults else argparse.SUPPRESS,
        help="(default info)",
    )


def _listen(text: str) -> Listen:
    """A `HOST:PORT` argument."""
    found = parse_listen(text)
    if found is None:
        raise argparse.ArgumentTypeError(LISTEN_FORM)
    return found


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, defaults=False)
    expand = argparse.ArgumentParser(add_help=False)
    expand.add_argument(
        "--expand-env",
        action="store_true",
        help="replace ${NAME} and ${NAME:-default} in the config's values with environment "
        "variables ($$ is a dollar sign); a reload reads the same environment",
    )
    parser = argparse.ArgumentParser(
        prog="grayscale",
        description="Gradual-release gateway for machine-learning model endpoints.",
    )
    _add_common(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"grayscale {__version__} ({BUILD})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common, expand],
        help="run the proxy",
        description="Run the proxy for a config.",
    )
    serve.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file")
    serve.add_argument(
        "--listen",
        type=_listen,
        metavar="HOST:PORT",
        help="the proxy's address, in place of the config's server.listen (kept on reloads)",
    )
    serve.add_argument(
        "--admin-listen",
        type=_listen,
        metavar="HOST:PORT",
        help="the admin API's address, in place of server.admin_listen (kept on reloads)",
    )

    check = commands.add_parser(
        "check",
        parents=[common, expand],
        help="validate config files",
        description="Validate config files; print every error and exit 1 if any is invalid.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")

    simulate = commands.add_parser(
        "simulate",
        parents=[common, expand],
        help="print each route's share step by step",
        description="Print each route's and segment's candidate share step by step (a day by "
        "default), check it against the buckets of synthetic user ids, and say when each ramp "
        "reaches its maximum.",
    )
    simulate.add_argument("--config", "-c", required=True, metavar="FILE")
    simulate.add_argument(
        "--step", default="1d", metavar="DURATION", help="time between rows (default 1d)"
    )
    span = simulate.add_mutually_exclusive_group()
    span.add_argument("--steps", type=int, help="rows after the start (default 14)")
    span.add_argument(
        "--days", type=float, help="how long to follow the ramps: as many rows as --step fits"
    )
    simulate.add_argument("--users", type=int, default=10_000, help="synthetic users (10000)")
    simulate.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="start of ramps without a start (ISO 8601, default now)",
    )

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--admin",
        default=os.environ.get("GRAYSCALE_ADMIN_URL", DEFAULT_ADMIN_URL),
        metavar="URL",
        help="admin API (default $GRAYSCALE_ADMIN_URL or %(default)s)",
    )
    admin.add_argument(
        "--token-env",
        default="GRAYSCALE_ADMIN_TOKEN",
        metavar="NAME",
        help="environment variable holding the admin token (default %(default)s)",
    )
    commands.add_parser(
        "status",
        parents=[common, admin],
        help="show every route's state, share and error rates",
        description="Show every route's rollout state, candidate share, and requests and error "
        "rates per variant, from a running proxy's admin API.",
    )
    selftest = commands.add_parser(
        "selftest",
        parents=[common, expand],
        help="measure what a route's analysis settings buy: false rollbacks and detection",
        description="Run each analysed route's analysis (the real checks and decision policy, on "
        "a simulated clock) on simulated traffic: how often equal candidates are rolled back, and "
        "how soon worse ones are: +5 points of errors, twice as slow, and twice what the route "
        "allows. Seeded: the same arguments print the same figures.",
    )
    selftest.add_argument("--config", required=True, metavar="FILE")
    selftest.add_argument("--route", help="only this route (default: every analysed route)")
    selftest.add_argument(
        "--rate", type=float, default=10.0, help="requests a second (default %(default)s)"
    )
    selftest.add_argument(
        "--share", type=float, default=0.1, help="the candidate's share (default %(default)s)"
    )
    selftest.add_argument("--runs", type=int, default=50, help="runs each (default %(default)s)")
    selftest.add_argument(
        "--hours", type=float, default=4.0, help="length of each run (default %(default)s)"
    )
    selftest.add_argument("--seed", type=int, default=0)
    selftest.add_argument(
        "--error-rate",
        type=float,
        default=0.01,
        help="both variants' error rate (default %(default)s)",
    )
    selftest.add_argument(
        "--incident",
        type=float,
        metavar="ERRORS",
        help="both variants fail this share of requests for 10 min, a third into each run",
    )
    selftest.add_argument(
        "--outcome-rate",
        type=float,
        metavar="RATE",
        help="the chance a request converts, for the outcome checks per: request",
    )
    selftest.add_argument(
        "--users-tail",
        type=float,
        metavar="SHAPE",
        help="heavy users: request rates of Pareto(SHAPE), e.g. 1.2 (every request simulated: "
        "slower)",
    )
    selftest.add_argument(
        "--users", type=int, default=1000, help="with --users-tail: how many (default %(default)s)"
    )
    explain = commands.add_parser(
        "explain",
        parents=[common, admin],
        help="say in words why the analysis decided what it did on a route",
        description="Print a route's latest analysis verdict in words: each check's estimates, "
        "bounds, thresholds and sample sizes, and what followed.",
    )
    explain.add_argument("route")
    explain.add_argument("--all", action="store_true", help="every verdict kept (20), newest first")
    for action, text in (
        ("pause", "freeze a route's ramp at its current share"),
        (
            "resume",
            "continue a paused ramp where it stopped; a rolled-back one starts a new run from "
            "the ramp's base (--keep-share: where it stopped)",
        ),
        ("promote", "send all of a route's traffic to the candidate"),
        ("rollback", "send all of a route's traffic to stable"),
    ):
        command = commands.add_parser(
            action, parents=[common, admin], help=text, description=text.capitalize() + "."
        )
        command.add_argument("route")
        command.add_argument("--reason", help="recorded with the change")
        if action == "resume":
            command.add_argument(
                "--keep-share",
                action="store_true",
                help="after a rollback, continue at the share it stopped at (default: a new "
                "run from the ramp's base)",
            )
    share = commands.add_parser(
        "set-share",
        parents=[common, admin],
        help="pause a route's ramp at a given share",
        description="Pause a route's ramp at a given candidate share (0..1) until resumed.",
    )
    share.add_argument("route")
    share.add_argument("share", type=float)
    share.add_argument("--reason", help="recorded with the change")

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run the proxy in front of two bundled demo model servers",
        description="Start two toy model servers (stable and candidate), the proxy in front of "
        "them, and synthetic users; print the live split. Ctrl-C stops it.",
    )
    demo.add_argument("--config", "-c", metavar="FILE", help="config (default: the bundled demo)")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    demo.add_argument(
        "--degrade-after",
        type=float,
        default=30.0,
        metavar="S",
        help="the candidate model goes bad after S seconds (default 30)",
    )
    demo.add_argument(
        "--healthy", action="store_true", help="keep the candidate model healthy throughout"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grayscale` console script."""
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    if args.command == "check":
        return _check(args.files, LoadOptions(args.expand_env))
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "serve":
        return _serve(args.config, LoadOptions(args.expand_env, args.listen, args.admin_listen))
    if args.command == "status":
        return _status(args.admin, args.token_env)
    if args.command == "selftest":
        return _selftest(args)
    if args.command == "explain":
        return _explain(args.admin, args.token_env, args.route, every=args.all)
    if args.command in ("pause", "resume", "promote", "rollback", "set-share"):
        return _act(args)
    # The demo's own table is the show: the proxy's log goes to a file beside it.
    log = Path(tempfile.gettempdir()) / f"grayscale-demo-{os.getpid()}.log"
    with log.open("w") as stream:
        logs.configure(args.log_format, args.log_level, stream)
        print(f"the proxy's log: {log}")
        return _demo(
            args.config, args.duration, args.rate, None if args.healthy else args.degrade_after
        )


def _check(files: Sequence[str], options: LoadOptions) -> int:
    status = 0
    for path in files:
        try:
            config = load_config(path, options)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"{path}: ok ({len(config.routes)} route{'s' if len(config.routes) != 1 else ''})")
    return status


def _simulate(args: argparse.Namespace) -> int:
    step = parse_duration(args.step)
    steps = 14 if args.steps is None else args.steps
    if args.days is not None and step > 0:
        steps = math.floor(args.days * DAY / step + 1e-9)  # (--days 3 --step 1h: 72 rows after)
    if steps < 0 or args.users < 1 or step <= 0:
        print(
            "--steps (or --days) must be >= 0, --users >= 1, and --step a duration like 2s, "
            "1h or 1d",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(args.config, LoadOptions(args.expand_env))
        start = datetime.fromisoformat(args.start).timestamp() if args.start else time.time()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError:
        print(f"--from: not an ISO 8601 time: {args.start}", file=sys.stderr)
        return 2
    print(render(config, start, steps, args.users, step))
    return 0


def _status(base: str, token_env: str) -> int:
    try:
        status = call(base, "GET", "/status", os.environ.get(token_env))
    except AdminError as exc:
        print(f"grayscale: {exc}", file=sys.stderr)
        return 1
    print(status_table(status))
    return 0


def _selftest(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, LoadOptions(args.expand_env))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    routes = [r for r in config.routes if r.analysis is not None]
    if args.route is not None:
        routes = [r for r in routes if r.name == args.route]
    if not routes:
        what = f"route {args.route!r} with analysis" if args.route else "analysed route"
        print(f"grayscale: no {what} in {args.config}", file=sys.stderr)
        return 2
    rates = (args.error_rate, args.incident or 0.0, args.outcome_rate or 0.0)
    if not (
        0.0 < args.share < 1.0
        and args.rate > 0
        and args.runs > 0
        and args.hours > 0
        and all(0.0 <= r < 1.0 for r in rates)
        and (args.users_tail is None or args.users_tail > 0)
        and args.users > 0
    ):
        print(
            "grayscale: --share in (0, 1); --error-rate, --incident, --outcome-rate in [0, 1); "
            "--rate, --runs, --hours, --users-tail, --users above 0",
            file=sys.stderr,
        )
        return 2
    world = World(
        args.rate,
        args.share,
        args.error_rate,
        args.incident,
        args.outcome_rate,
        args.users_tail,
        args.users,
    )
    for route in routes:
        figures = selftest_report(route, world, runs=args.runs, hours=args.hours, seed=args.seed)
        print(figures, flush=True)
    return 0


def _explain(base: str, token_env: str, route: str, *, every: bool) -> int:
    path = f"/routes/{urllib.parse.quote(route, safe='')}/verdicts"
    try:
        found = call(base, "GET", path, os.environ.get(token_env))
    except AdminError as exc:
        print(f"grayscale: explain {route}: {exc}", file=sys.stderr)
        return 1
    verdicts = found["verdicts"]
    if not found["analysis"]:
        print(f"{route}: no analysis is configured for this route")
        return 0
    if not verdicts:
        print(f"{route}: no verdict yet")
        return 0
    for record in verdicts if every else verdicts[:1]:
        print(f"{route} at {_moment(record['at'])}: {explain(record)}")
    return 0


def _moment(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _act(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env)
    if not token:
        print(f"grayscale: set ${args.token_env} to the admin token", file=sys.stderr)
        return 2
    action = "share" if args.command == "set-share" else args.command
    body: dict[str, object] = {}
    if args.reason:
        body["reason"] = args.reason
    if args.command == "set-share":
        body["share"] = args.share
    if getattr(args, "keep_share", False):
        body["keep_share"] = True
    path = f"/routes/{urllib.parse.quote(args.route, safe='')}/{action}"
    try:
        result = call(args.admin, "POST", path, token, body)
    except AdminError as exc:
        print(f"grayscale: {args.command} {args.route}: {exc}", file=sys.stderr)
        return 1
    said = f" ({result['reason']})" if result.get("reason") else ""
    print(
        f"{args.route}: {result['before']} -> {result['after']}, share {result['share']:.2%}{said}"
    )
    return 0


def _serve(path: str, options: LoadOptions) -> int:
    try:
        config = load_config(path, options)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    worker = Worker.from_env()
    if worker is not None:
        die_with_parent()
        config = worker.config(config)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            if worker is None and config.server.workers > 1:
                return runner.run(supervise(config, sys.argv[1:]))
            runner.run(serve_until_signalled(config, worker))
    except (StateError, OSError) as exc:
        print(f"grayscale: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(
    path: str | None, duration: float | None, rate: float, degrade_after: float | None
) -> int:
    try:
        config = load_config(path or DEMO_CONFIG)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_demo(config, duration, rate, degrade_after))
    except OSError as exc:
        print(f"grayscale: {exc}", file=sys.stderr)
        return 1
    return 0
