"""Command line for the bench suite: ``python -m bench SCENARIO [options]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

from bench import fanout
from bench.common import DEFAULT_RESULTS_DIR, Progress, Result, markdown_table


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="folder for the JSON result and PNG plots",
    )
    parser.add_argument("--plot", action="store_true", help="also write PNG plots to --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark the t2t relay. The relay runs in its own process "
            "(python -m t2t.server) and this process generates the load over loopback."
        ),
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    fan = scenarios.add_parser(
        "fanout",
        help="N members in one group, S senders, M messages each",
        description=fanout.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--mode",
        choices=["raw", "client", "both"],
        default="both",
        help=(
            "raw frames against both relays, the full client against t2t, "
            "or both (default: %(default)s)"
        ),
    )
    _add_common(fan)
    return parser


async def _run_fanout(args: argparse.Namespace, progress: Progress) -> Result:
    params = fanout.FanoutParams(
        members=args.members,
        senders=args.senders,
        messages=args.messages,
        body_size=args.body_size,
        rate=args.rate,
        window=args.window,
    )
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    if args.mode in ("raw", "both"):
        reference = await fanout.run_raw("reference", params, progress)
        t2t_raw = await fanout.run_raw("t2t", params, progress)
        rows.append({"relay": "reference (bare trio-websocket)", "mode": "raw", **reference})
        rows.append({"relay": "t2t", "mode": "raw", **t2t_raw})
        ratio = t2t_raw["deliveries_per_s"] / max(reference["deliveries_per_s"], 1e-9)
        metrics.update(raw_reference=reference, raw_t2t=t2t_raw, throughput_ratio=ratio)
    if args.mode in ("client", "both"):
        client = await fanout.run_client(params, progress)
        rows.append({"relay": "t2t", "mode": "client", **client})
        metrics["client_t2t"] = client
    return Result("fanout", vars(params), metrics, rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Progress(not args.no_progress) as progress:
            if args.scenario == "fanout":
                result = trio.run(_run_fanout, args, progress)
            else:  # pragma: no cover - argparse restricts the choices
                raise AssertionError(args.scenario)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(markdown_table(result.rows))
    if "throughput_ratio" in result.metrics:
        print(f"\nt2t / reference throughput ratio: {result.metrics['throughput_ratio']:.3f}")
    path = result.write_json(args.out)
    print(f"\nresult: {path}")
    return 0


sys.exit(main())
