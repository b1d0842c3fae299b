"""Shared parts of the bench suite: relay processes, measurements and reports.

Every scenario starts the relay under test in its own process, exactly as it
is deployed (``python -m t2t.server``, or ``python -m bench.reference`` for
the bare trio-websocket ceiling), and drives it from this process over
loopback. Relay CPU time and memory are read from ``/proc/<pid>``, so the
suite runs on Linux only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PACKAGES: Final = ("t2t", "trio", "trio-websocket", "wsproto", "msgspec", "pynacl", "anyio")
DEFAULT_RESULTS_DIR: Final = Path("bench/results")
STARTUP_TIMEOUT: Final = 20.0  # seconds for a relay process to start listening


# Relay processes -------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RelayProcess:
    """A relay running in a child process, with its CPU and memory counters."""

    process: trio.Process
    url: str
    data_dir: Path
    ca_file: Path | None  # the development CA, for t2t relays

    def cpu_seconds(self) -> float:
        """User plus system CPU time the relay process has used, in seconds."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _status_kib(self, key: str) -> int:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        return int(match.group(1)) if match else 0

    def rss_bytes(self) -> int:
        return self._status_kib("VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        return self._status_kib("VmHWM") * 1024

    def reset_peak_rss(self) -> None:
        """Reset VmHWM to the current RSS (Linux 4.0+), so a phase measures its own peak."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


async def _wait_listening(port: int, process: trio.Process) -> None:
    with trio.fail_after(STARTUP_TIMEOUT):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"relay exited with status {process.returncode} during start")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


@contextlib.asynccontextmanager
async def run_relay(
    kind: str, *, extra_args: Sequence[str] = (), log_level: str = "WARNING"
) -> AsyncIterator[RelayProcess]:
    """Start a relay process and stop it with SIGTERM when the block exits.

    Args:
        kind: ``"t2t"`` for ``python -m t2t.server`` or ``"reference"`` for
            the bare trio-websocket relay in ``bench/reference``.
        extra_args: More command line options for the relay.
    """
    with tempfile.TemporaryDirectory(prefix="t2t-bench-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        if kind == "t2t":
            command = [
                sys.executable, "-m", "t2t.server", "--port", str(port),
                "--data-dir", str(data_dir), "--log-level", log_level, *extra_args,
            ]  # fmt: skip
            ca_file: Path | None = data_dir / "dev-ca" / "ca.pub"
        elif kind == "reference":
            command = [sys.executable, "-m", "bench.reference", "--port", str(port), *extra_args]
            ca_file = None
        else:
            raise ValueError(f"unknown relay kind {kind!r}; use 't2t' or 'reference'")
        # BENCH_PROFILE=FILE runs the relay under cProfile, which writes FILE
        # when the relay exits after SIGTERM (read it with pstats).
        profile = os.environ.get("BENCH_PROFILE")
        if profile:
            command[1:1] = ["-m", "cProfile", "-o", f"{profile}.{kind}"]
        stderr = (data_dir / "relay.log").open("wb")
        process = await trio.lowlevel.open_process(command, stderr=stderr, cwd=Path.cwd())
        try:
            await _wait_listening(port, process)
            yield RelayProcess(process, f"ws://127.0.0.1:{port}", data_dir, ca_file)
        except BaseException:
            # The relay's log is deleted with its folder; show its end first.
            stderr.flush()
            tail = (data_dir / "relay.log").read_text(errors="replace").splitlines()[-15:]
            print(f"{kind} relay log, last lines:", *tail, sep="\n  ", file=sys.stderr)
            raise
        finally:
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.terminate()
                    with trio.move_on_after(10):
                        await process.wait()
                    if process.poll() is None:
                        process.kill()
                        await process.wait()
            stderr.close()


# Statistics ------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def latency_summary(latencies: Iterable[float]) -> dict[str, float]:
    """Return p50, p90, p99 and max of latencies given in seconds, in milliseconds."""
    values = sorted(latencies)
    return {
        "latency_p50_ms": percentile(values, 0.50) * 1000,
        "latency_p90_ms": percentile(values, 0.90) * 1000,
        "latency_p99_ms": percentile(values, 0.99) * 1000,
        "latency_max_ms": (values[-1] if values else 0.0) * 1000,
    }


# Reports ---------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Result:
    """One scenario run: its parameters, metrics and the environment."""

    scenario: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per relay or variant
    notes: list[str] = field(default_factory=list)
    command: str = field(default_factory=lambda: " ".join(["python", "-m", "bench", *sys.argv[1:]]))
    # Set when the result is built, which is when the run has finished.
    finished_at: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    machine: dict[str, Any] = field(default_factory=machine_info)
    versions: dict[str, str] = field(default_factory=package_versions)

    def write_json(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self.finished_at.replace(":", "").replace("-", "")
        path = folder / f"{self.scenario}-{stamp}.json"
        copy = 1
        while path.exists():  # two runs that finish in the same second
            copy += 1
            path = folder / f"{self.scenario}-{stamp}-{copy}.json"
        path.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")
        return path


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Format rows that share keys as a Markdown table; floats get 3 significant digits."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [key for key in row if key not in columns]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


class Progress:
    """A rich progress bar when the output is a terminal, else one line per stage."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=True)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def task(self, description: str, total: int) -> Any:
        """Return a callable ``advance(n)`` for one stage of ``total`` steps."""
        if self._bar is None:
            print(f"  {description} ({total:,} steps)", file=sys.stderr)
            return lambda n=1: None
        task_id = self._bar.add_task(description, total=total)
        return lambda n=1: self._bar.advance(task_id, n)
