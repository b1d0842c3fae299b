"""Command line for the bench suite: ``python -m bench SCENARIO [options]``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Final

import trio

from bench import fanout, idle, login, micro
from bench.common import DEFAULT_RESULTS_DIR, Progress, Result, markdown_table

# Scenarios that "all" runs, in this order: micro first, while the machine is
# quiet, and the long fanout last.
STANDARD_ORDER: Final = ("micro", "login", "idle", "fanout")
CDF_POINTS: Final = 1001  # latency quantiles kept per fanout row for the CDF plot


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="folder for the JSON result and PNG plots (default: %(default)s)",
    )
    parser.add_argument("--plot", action="store_true", help="also write PNG plots to --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _scenario_parser(
    scenarios: Any, name: str, summary: str, module: Any
) -> argparse.ArgumentParser:
    return scenarios.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_fanout(scenarios: Any) -> None:
    fan = _scenario_parser(
        scenarios, "fanout", "N members in one group, S senders, M messages each", fanout
    )
    defaults = fanout.FanoutParams()
    fan.add_argument(
        "--members",
        type=int,
        default=defaults.members,
        help="members in the group (default: %(default)s)",
    )
    fan.add_argument(
        "--senders",
        type=int,
        default=defaults.senders,
        help="members that send (default: %(default)s)",
    )
    fan.add_argument(
        "--messages",
        type=int,
        default=defaults.messages,
        help="messages per sender (default: %(default)s)",
    )
    fan.add_argument(
        "--body-size",
        type=int,
        default=defaults.body_size,
        help="text bytes per message (default: %(default)s)",
    )
    fan.add_argument(
        "--rate", type=float, help="total messages per second over all senders; omit for blast"
    )
    fan.add_argument(
        "--window",
        type=int,
        default=defaults.window,
        help="unacknowledged messages per sender (default: %(default)s)",
    )
    fan.add_argument(
        "--full-receivers",
        type=int,
        help=(
            "client mode: receivers that run the full t2t client, the rest use raw frames; "
            "one load process cannot verify every copy the way separate devices do "
            "(default: all members)"
        ),
    )
    fan.add_argument(
        "--mode",
        choices=["raw", "client", "both"],
        default="both",
        help=(
            "raw frames against both relays, the full client against t2t, "
            "or both (default: %(default)s)"
        ),
    )
    _add_common(fan)


def _add_login(scenarios: Any) -> None:
    parser = _scenario_parser(
        scenarios, "login", "C clients log in at once, as new or returning users", login
    )
    defaults = login.LoginParams()
    parser.add_argument(
        "--clients",
        type=int,
        default=defaults.clients,
        help="clients that connect and log in at once (default: %(default)s)",
    )
    parser.add_argument(
        "--kind",
        choices=login.KINDS,
        default=defaults.kind,
        help=(
            "new accounts, returning users, or new then returning against the same "
            "relay (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--hash-ops",
        type=int,
        help="argon2id passes (t) for the relay's password hashes (default: the relay's, 2)",
    )
    parser.add_argument(
        "--hash-memory",
        type=int,
        help="argon2id memory (m) for the relay's password hashes, in MiB (default: the relay's, 19)",  # noqa: E501
    )
    parser.add_argument(
        "--hash-threads",
        type=int,
        help="password hashes the relay computes at once (default: the relay's, 2)",
    )
    parser.add_argument(
        "--resume-ttl",
        type=float,
        help=(
            "the relay's resume token lifetime in seconds; 0 turns tokens off, so returning "
            "users hash their password again (default: the relay's, 7 days)"
        ),
    )
    parser.add_argument(
        "--max-pending-logins",
        type=int,
        help=(
            "password checks the relay queues before it rejects logins with close code 1013 "
            "(default: the relay's, 64)"
        ),
    )
    _add_common(parser)


def _add_idle(scenarios: Any) -> None:
    parser = _scenario_parser(
        scenarios, "idle", "hold K logged-in connections that only send heartbeats", idle
    )
    defaults = idle.IdleParams()
    parser.add_argument(
        "--connections",
        type=int,
        default=defaults.connections,
        help="logged-in connections to hold (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=defaults.seconds,
        help="seconds to hold them once all are logged in (default: %(default)s)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=defaults.heartbeat,
        help=(
            "seconds between one connection's pings; the default is the t2t client's "
            "heartbeat_interval (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--heartbeat-kind",
        choices=idle.HEARTBEAT_KINDS,
        default=defaults.heartbeat_kind,
        help=(
            "websocket: RFC 6455 ping frames, as the t2t client sends; frame: the Ping frame "
            "of older clients (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--login-concurrency",
        type=int,
        default=defaults.login_concurrency,
        help="connections logging in at once while the K connect (default: %(default)s)",
    )
    parser.add_argument(
        "--roster-debounce",
        type=float,
        default=defaults.roster_debounce,
        help=(
            "the relay's --roster-debounce, in seconds; the default is longer than the run, "
            "so no roster is pushed (default: %(default)s)"
        ),
    )
    _add_common(parser)


def _add_micro(scenarios: Any) -> None:
    parser = _scenario_parser(
        scenarios, "micro", "per-frame codec and crypto cost, against a pydantic codec", micro
    )
    defaults = micro.MicroParams()
    parser.add_argument(
        "--iterations",
        type=int,
        default=defaults.iterations,
        help="timed calls per operation and round (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="rounds per operation; the fastest counts (default: %(default)s)",
    )
    parser.add_argument(
        "--body-size",
        type=int,
        default=defaults.body_size,
        help="text bytes in the sample group message (default: %(default)s)",
    )
    _add_common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark the t2t relay. The relay runs in its own process "
            "(python -m t2t.server) and this process generates the load over loopback."
        ),
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    _add_fanout(scenarios)
    _add_login(scenarios)
    _add_idle(scenarios)
    _add_micro(scenarios)

    every = scenarios.add_parser(
        "all",
        aliases=["standard"],
        help="run " + ", ".join(STANDARD_ORDER) + " at their default sizes, in that order",
        description="Run every scenario at its default size, one after another.",
    )
    _add_common(every)

    plot = scenarios.add_parser(
        "plot",
        help="draw the PNG plots of saved JSON results",
        description=(
            "Draw the plots of each JSON result, and with two or more fanout results "
            "of different group sizes, fanout throughput against members."
        ),
    )
    plot.add_argument("files", type=Path, nargs="+", metavar="RESULT.json")
    plot.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="folder for the PNG plots (default: %(default)s)",
    )
    return parser


# Scenarios -------------------------------------------------------------------


def _quantiles(values: list[float], points: int = CDF_POINTS) -> list[float]:
    """Return ``points`` evenly spaced order statistics, or every value if there are fewer."""
    ordered = sorted(values)
    if len(ordered) <= points:
        return ordered
    last = len(ordered) - 1
    return [ordered[round(k * last / (points - 1))] for k in range(points)]


async def _run_fanout(
    args: argparse.Namespace, params: fanout.FanoutParams, progress: Progress
) -> Result:
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    latencies: dict[str, list[float]] = {}

    def without_latencies(label: str, mode_metrics: dict[str, Any]) -> dict[str, Any]:
        # Raw latencies go to the CDF plot only, as quantiles, not into the table.
        values = mode_metrics.pop("latencies_ms", None)
        if values:
            latencies[label] = _quantiles(values)
        return mode_metrics

    if args.mode in ("raw", "both"):
        reference = without_latencies(
            "reference relay, raw clients", await fanout.run_raw("reference", params, progress)
        )
        t2t_raw = without_latencies(
            "t2t relay, raw clients", await fanout.run_raw("t2t", params, progress)
        )
        rows.append({"relay": "reference (bare trio-websocket)", "mode": "raw", **reference})
        rows.append({"relay": "t2t", "mode": "raw", **t2t_raw})
        ratio = t2t_raw["deliveries_per_s"] / max(reference["deliveries_per_s"], 1e-9)
        metrics.update(raw_reference=reference, raw_t2t=t2t_raw, throughput_ratio=ratio)
    if args.mode in ("client", "both"):
        client = without_latencies(
            "t2t relay, t2t clients", await fanout.run_client(params, progress)
        )
        rows.append({"relay": "t2t", "mode": "client", **client})
        metrics["client_t2t"] = client
    if latencies:
        metrics["latencies_ms"] = latencies
    return Result("fanout", vars(params), metrics, rows)


def _params(args: argparse.Namespace) -> Any:
    """Build the scenario's parameters; raises ValueError for an invalid option."""
    if args.scenario == "fanout":
        return fanout.FanoutParams(
            members=args.members,
            senders=args.senders,
            messages=args.messages,
            body_size=args.body_size,
            rate=args.rate,
            window=args.window,
            full_receivers=args.full_receivers,
        )
    if args.scenario == "login":
        return login.LoginParams(
            clients=args.clients,
            kind=args.kind,
            hash_ops=args.hash_ops,
            hash_memory=args.hash_memory,
            hash_threads=args.hash_threads,
            resume_ttl=args.resume_ttl,
            max_pending_logins=args.max_pending_logins,
        )
    if args.scenario == "idle":
        return idle.IdleParams(
            connections=args.connections,
            seconds=args.seconds,
            heartbeat=args.heartbeat,
            heartbeat_kind=args.heartbeat_kind,
            login_concurrency=args.login_concurrency,
            roster_debounce=args.roster_debounce,
        )
    if args.scenario == "micro":
        return micro.MicroParams(
            iterations=args.iterations, rounds=args.rounds, body_size=args.body_size
        )
    raise AssertionError(f"no parameters for scenario {args.scenario!r}")  # argparse restricts it


def _run_scenario(args: argparse.Namespace, params: Any, progress: Progress) -> Result:
    if args.scenario == "fanout":
        return trio.run(_run_fanout, args, params, progress)
    if args.scenario == "login":
        return trio.run(login.run, params, progress)
    if args.scenario == "idle":
        return trio.run(idle.run, params, progress)
    if args.scenario == "micro":
        return micro.run(params, progress)
    raise AssertionError(f"no runner for scenario {args.scenario!r}")  # argparse restricts it


# Reports ---------------------------------------------------------------------


def _report(result: Result, args: argparse.Namespace) -> None:
    print(markdown_table(result.rows))
    if "throughput_ratio" in result.metrics:
        print(f"\nt2t / reference throughput ratio: {result.metrics['throughput_ratio']:.3f}")
    for note in result.notes:
        print(f"note: {note}")
    path = result.write_json(args.out)
    print(f"\nresult: {path}")
    if args.plot:
        _write_plots([result], args.out)


def _write_plots(results: list[Result], folder: Path) -> None:
    from bench import plots

    for result in results:
        paths = plots.plot_result(result, folder)
        for path in paths:
            print(f"plot: {path}")
        if result.scenario == "fanout" and "latencies_ms" not in result.metrics:
            print(
                "plot: no fanout latency CDF, because the fanout metrics carry no "
                "latencies_ms list",
                file=sys.stderr,
            )
    throughput = plots.fanout_throughput(results, folder)
    if throughput is not None:
        print(f"plot: {throughput}")


def _run_all(args: argparse.Namespace) -> int:
    common = ["--out", str(args.out)]
    if args.plot:
        common.append("--plot")
    if args.no_progress:
        common.append("--no-progress")
    status = 0
    started = time.monotonic()
    for name in STANDARD_ORDER:
        print(f"\n## {name}\n", flush=True)
        scenario_started = time.monotonic()
        try:
            status = max(status, main([name, *common]))
        except Exception:
            # Report the failure and go on, so one broken scenario does not
            # hide the figures of the others; the exit status still shows it.
            traceback.print_exc()
            print(f"\n{name} failed", flush=True)
            status = max(status, 1)
        print(f"\n{name} took {time.monotonic() - scenario_started:.0f} s", flush=True)
    print(f"\nall scenarios took {time.monotonic() - started:.0f} s")
    return status


def _forward_to_sigint(signum: int, frame: object) -> None:
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Run one command line; return the exit status (2 for invalid options)."""
    # Turn SIGTERM (timeout, CI cancellation) into SIGINT, which trio turns
    # into KeyboardInterrupt at a safe point, so the cleanup that stops the
    # relay process runs instead of orphaning it.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _forward_to_sigint)
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(arguments)
    if args.scenario in ("all", "standard"):
        return _run_all(args)
    if args.scenario == "plot":
        from bench import plots

        try:
            results = [plots.load_result(path) for path in args.files]
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _write_plots(results, args.out)
        return 0
    try:
        params = _params(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    with Progress(not args.no_progress) as progress:
        result = _run_scenario(args, params, progress)
    result.command = shlex.join(["python", "-m", "bench", *arguments])
    _report(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
