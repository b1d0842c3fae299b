"""PNG plots of bench results, drawn with matplotlib's Agg backend.

Each function takes results (see :class:`bench.common.Result`) and a folder,
writes one PNG there and returns its path, or None when the result lacks the
data for that plot. :func:`plot_result` picks the plots for one result.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Result


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stamp(result: Result) -> str:
    return result.finished_at.replace(":", "").replace("-", "")


def _save(plt: Any, figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def load_result(path: Path) -> Result:
    """Read a result that :meth:`Result.write_json` wrote.

    Keys this version does not know are ignored, and ``started_at`` from
    older results is read as ``finished_at``, which is what it held.

    Raises:
        ValueError: naming the file, if it is not a result file.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a bench result: {exc}") from None
    required = ("scenario", "params", "metrics")
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise ValueError(f"{path}: not a bench result (it needs the keys {', '.join(required)})")
    if "started_at" in data:
        data.setdefault("finished_at", data.pop("started_at"))
    known = {field.name for field in dataclasses.fields(Result)}
    return Result(**{key: value for key, value in data.items() if key in known})


def fanout_latency_cdf(result: Result, folder: Path) -> Path | None:
    """Plot one latency CDF per fanout row from ``metrics["latencies_ms"]``.

    ``latencies_ms`` maps a row label to latencies in milliseconds: all of
    them, or evenly spaced quantiles, which draw the same curve.
    """
    latencies: dict[str, list[float]] = result.metrics.get("latencies_ms") or {}
    if not latencies:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, values in latencies.items():
        ordered = sorted(values)
        if not ordered:
            continue
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, fractions, where="post", label=label)
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("fraction of deliveries")
    axes.set_ylim(0, 1.01)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    params = result.params
    axes.set_title(
        f"fanout latency: {params.get('members')} members, {params.get('senders')} senders"
    )
    return _save(plt, figure, folder / f"fanout-latency-{_stamp(result)}.png")


_FANOUT_SERIES = {
    "raw_reference": "reference relay, raw clients",
    "raw_t2t": "t2t relay, raw clients",
    "client_t2t": "t2t relay, t2t clients",
}


def fanout_throughput(results: Sequence[Result], folder: Path) -> Path | None:
    """Plot deliveries per second against group members, one line per relay and mode."""
    fanouts = sorted(
        (r for r in results if r.scenario == "fanout"), key=lambda r: r.params["members"]
    )
    if len({r.params["members"] for r in fanouts}) < 2:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, label in _FANOUT_SERIES.items():
        points = [
            (r.params["members"], r.metrics[key]["deliveries_per_s"])
            for r in fanouts
            if key in r.metrics
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=label)
    axes.set_xlabel("members in the group")
    axes.set_ylabel("deliveries per second")
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title("fanout throughput against group size")
    return _save(plt, figure, folder / f"fanout-throughput-{_stamp(fanouts[-1])}.png")


def login_timeline(result: Result, folder: Path) -> Path | None:
    """Plot clients online against seconds since the phase started, per phase."""
    phases = {
        name: phase["online_times_s"]
        for name, phase in result.metrics.items()
        if isinstance(phase, dict) and phase.get("online_times_s")
    }
    if not phases:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, times in phases.items():
        ordered = sorted(times)
        axes.step(ordered, range(1, len(ordered) + 1), where="post", label=f"{name} accounts")
    axes.set_xlabel("seconds since the first connect")
    axes.set_ylabel("clients online")
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title(f"login of {result.params.get('clients')} concurrent clients")
    return _save(plt, figure, folder / f"login-timeline-{_stamp(result)}.png")


def idle_memory(result: Result, folder: Path) -> Path | None:
    """Plot relay RSS against logged-in connections."""
    curve = result.metrics.get("rss_curve") or []
    if not curve:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    xs = [0, *(point[0] for point in curve)]
    ys = [result.metrics["relay_rss_before_mib"], *(point[1] for point in curve)]
    axes.plot(xs, ys, marker=".")
    axes.set_xlabel("logged-in connections")
    axes.set_ylabel("relay RSS (MiB)")
    axes.grid(True, alpha=0.3)
    axes.set_title("relay memory while connections log in")
    return _save(plt, figure, folder / f"idle-memory-{_stamp(result)}.png")


def micro_codecs(result: Result, folder: Path) -> Path | None:
    """Plot ns per encode and decode of each frame type, msgspec beside pydantic."""
    rows = [row for row in result.rows if row.get("pydantic_ns_per_op") not in (None, "")]
    if not rows:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
    positions = range(len(rows))
    height = 0.4
    axes.barh(
        [p - height / 2 for p in positions],
        [row["ns_per_op"] for row in rows],
        height,
        label="msgspec MessagePack",
    )
    axes.barh(
        [p + height / 2 for p in positions],
        [row["pydantic_ns_per_op"] for row in rows],
        height,
        label="pydantic JSON",
    )
    axes.set_yticks(list(positions), [row["operation"] for row in rows])
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("ns per operation (log scale)")
    axes.grid(True, axis="x", which="both", alpha=0.3)
    axes.legend()
    axes.set_title("frame encode and decode")
    return _save(plt, figure, folder / f"micro-codecs-{_stamp(result)}.png")


def plot_result(result: Result, folder: Path) -> list[Path]:
    """Write every plot that applies to ``result``; return the paths written."""
    plotters = {
        "fanout": [fanout_latency_cdf],
        "login": [login_timeline],
        "idle": [idle_memory],
        "micro": [micro_codecs],
    }.get(result.scenario, [])
    paths = [plotter(result, folder) for plotter in plotters]
    return [path for path in paths if path is not None]
