"""The bench suite (``python -m bench``) at tiny sizes.

Rules under test:

- Every scenario runs to the end through ``bench.__main__.main``, exits 0,
  writes a JSON result, and reports each of its metrics.
- Fanout delivers every message exactly once in every mode: 0 lost and 0
  duplicated.
- ``--plot`` writes the PNGs of each scenario, and the fanout plots draw
  from a latency list and from several results.
- An invalid option exits with status 2 before any relay starts.

No figure is checked against a threshold: the machine's speed is not under
test. Each scenario starts its relays as subprocesses on 127.0.0.1 and
bounds every wait, so each test ends in seconds.
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

# bench/ is not an installed package, so import it from the repository root.
# Appending keeps an installed t2t ahead of the source tree on sys.path.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

from bench import plots  # noqa: E402
from bench.__main__ import _quantiles, main  # noqa: E402
from bench.common import Result  # noqa: E402
from t2t.frames import Frame  # noqa: E402

FANOUT_KEYS = {
    "deliveries_per_s",
    "sends_per_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "relay_cpu_s_per_1k_deliveries",
    "relay_peak_rss_mib",
    "deliveries",
    "lost",
    "duplicated",
}
LOGIN_KEYS = {
    "clients",
    "failed_logins",
    "busy_rejections",
    "seconds_to_all_online",
    "logins_per_s",
    "median_login_s",
    "roster_versions_published",
    "roster_pushes_per_client",
    "roster_bytes",
    "roster_bytes_per_login",
    "last_roster_bytes",
    "unsized_roster_pushes",
    "rejected_events",
    "relay_cpu_s",
    "relay_cpu_ms_per_login",
    "generator_cpu_s",
    "settled",
    "failures",
    "online_times_s",
}
IDLE_KEYS = {
    "connections",
    "failed_logins",
    "setup_s",
    "logins_per_s",
    "generator_cpu_setup_s",
    "hold_s",
    "relay_rss_before_mib",
    "relay_rss_after_mib",
    "relay_rss_end_mib",
    "rss_per_connection_kib",
    "rss_per_connection_marginal_kib",
    "relay_cpu_s",
    "relay_cpu_percent",
    "relay_cpu_ms_per_ping",
    "heartbeat_kind",
    "heartbeat_s",
    "pings_in_hold",
    "pings_per_s",
    "pings_sent",
    "pongs_received",
    "closed_by_relay",
    "closed_in_hold",
    "roster_bytes_received",
    "open_file_limit",
    "rss_curve",
}
MICRO_OPERATION_KEYS = {"bytes", "ns_per_op", "ops_per_s"}
MICRO_CODEC_KEYS = MICRO_OPERATION_KEYS | {"pydantic_bytes", "pydantic_ns_per_op", "pydantic_ratio"}
MICRO_CRYPTO_OPERATIONS = {
    "seal_message",
    "open_message",
    "seal_login",
    "open_login",
    "ed25519 sign",
    "ed25519 verify",
    "ClientProtocol.seal",
    "ClientProtocol.receive GroupMessage",
}


def run_bench(tmp_path: Path, *argv: str) -> dict[str, Any]:
    """Run ``python -m bench ARGV`` in process and return the JSON result it wrote."""
    status = main([*argv, "--out", str(tmp_path), "--no-progress"])
    assert status == 0
    written = sorted(tmp_path.glob(f"{argv[0]}-*.json"))
    assert len(written) == 1, written
    result: dict[str, Any] = json.loads(written[0].read_text())
    return result


def pngs(tmp_path: Path, prefix: str) -> list[Path]:
    return sorted(tmp_path.glob(f"{prefix}-*.png"))


def test_fanout_delivers_each_message_once(tmp_path: Path):
    result = run_bench(tmp_path, "fanout", "--members", "3", "--senders", "1", "--messages", "20")
    metrics = result["metrics"]
    for mode in ("raw_reference", "raw_t2t", "client_t2t"):
        assert FANOUT_KEYS - set(metrics[mode]) == set(), mode
        assert metrics[mode]["lost"] == 0, mode
        assert metrics[mode]["duplicated"] == 0, mode
        assert metrics[mode]["deliveries"] == 20 * 2, mode
    assert "throughput_ratio" in metrics
    assert len(result["rows"]) == 3
    for row in result["rows"]:
        assert "latencies_ms" not in row


def test_login_new_and_returning(tmp_path: Path):
    result = run_bench(tmp_path, "login", "--clients", "3", "--plot")
    metrics = result["metrics"]
    assert set(metrics) == {"new", "returning"}
    for phase in ("new", "returning"):
        assert LOGIN_KEYS - set(metrics[phase]) == set(), phase
        assert metrics[phase]["failed_logins"] == 0, phase
        assert len(metrics[phase]["online_times_s"]) == 3, phase
        assert metrics[phase]["roster_pushes_per_client"] >= 1, phase
        assert metrics[phase]["roster_bytes"] > 0, phase
        assert metrics[phase]["unsized_roster_pushes"] == 0, phase
    assert [row["accounts"] for row in result["rows"]] == ["new", "returning"]
    assert len(pngs(tmp_path, "login-timeline")) == 1


def test_login_returning_only(tmp_path: Path):
    result = run_bench(tmp_path, "login", "--clients", "2", "--kind", "returning")
    assert set(result["metrics"]) == {"returning"}
    assert result["metrics"]["returning"]["failed_logins"] == 0


@pytest.mark.parametrize("kind", ["websocket", "frame"])
def test_idle_holds_connections(tmp_path: Path, kind: str):
    result = run_bench(
        tmp_path,
        "idle",
        "--connections",
        "5",
        "--seconds",
        "1",
        "--heartbeat",
        "0.2",
        "--heartbeat-kind",
        kind,
        "--plot",
    )
    metrics = result["metrics"]
    assert IDLE_KEYS - set(metrics) == set()
    assert metrics["heartbeat_kind"] == kind
    assert metrics["connections"] == 5
    assert metrics["failed_logins"] == 0
    assert metrics["closed_by_relay"] == 0
    assert metrics["pings_in_hold"] > 0
    assert metrics["pongs_received"] == metrics["pings_sent"]
    assert any("RLIMIT_NOFILE" in note for note in result["notes"])
    assert len(pngs(tmp_path, "idle-memory")) == 1


def test_micro_covers_every_frame(tmp_path: Path):
    result = run_bench(tmp_path, "micro", "--iterations", "3", "--rounds", "1", "--plot")
    operations = result["metrics"]["operations"]
    for frame_type in typing.get_args(Frame):
        for verb in ("encode", "decode"):
            operation = f"{verb} {frame_type.__name__}"
            assert operation in operations
            assert MICRO_CODEC_KEYS - set(operations[operation]) == set(), operation
    for operation in MICRO_CRYPTO_OPERATIONS:
        assert operation in operations
        assert MICRO_OPERATION_KEYS - set(operations[operation]) == set(), operation
    assert isinstance(result["metrics"]["generated_samples"], list)
    assert len(pngs(tmp_path, "micro-codecs")) == 1


def test_invalid_option_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["login", "--clients", "0", "--out", str(tmp_path)]) == 2
    assert "--clients must be at least 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def fanout_result(members: int, finished_at: str) -> Result:
    rate = {"deliveries_per_s": 1000.0 * members}
    return Result(
        "fanout",
        {"members": members, "senders": 1},
        {
            "raw_reference": rate,
            "raw_t2t": rate,
            "client_t2t": rate,
            "latencies_ms": {"t2t relay, raw clients": [0.5, 1.0, 2.0, 8.0]},
        },
        finished_at=finished_at,
    )


def test_fanout_plots(tmp_path: Path):
    small = fanout_result(5, "2026-01-01T00:00:00Z")
    large = fanout_result(50, "2026-01-01T00:01:00Z")
    cdf = plots.fanout_latency_cdf(small, tmp_path)
    assert cdf is not None and cdf.stat().st_size > 0
    throughput = plots.fanout_throughput([small, large], tmp_path)
    assert throughput is not None and throughput.stat().st_size > 0
    assert plots.fanout_throughput([small], tmp_path) is None


def test_fanout_plot_without_latencies(tmp_path: Path):
    result = fanout_result(5, "2026-01-01T00:00:00Z")
    del result.metrics["latencies_ms"]
    assert plots.fanout_latency_cdf(result, tmp_path) is None


def test_plot_command_redraws_saved_results(tmp_path: Path):
    files = []
    for result in (
        fanout_result(5, "2026-01-01T00:00:00Z"),
        fanout_result(50, "2026-01-01T00:01:00Z"),
    ):
        files.append(str(result.write_json(tmp_path)))
    assert main(["plot", *files, "--out", str(tmp_path)]) == 0
    assert len(pngs(tmp_path, "fanout-latency")) == 2
    assert len(pngs(tmp_path, "fanout-throughput")) == 1


def test_quantiles_keep_ends():
    values = [float(v) for v in range(10_000, 0, -1)]
    quantiles = _quantiles(values, points=101)
    assert len(quantiles) == 101
    assert quantiles[0] == 1.0
    assert quantiles[-1] == 10_000.0
    assert quantiles == sorted(quantiles)
    assert _quantiles([3.0, 1.0], points=101) == [1.0, 3.0]


def test_plot_rejects_non_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    not_a_result = tmp_path / "other.json"
    not_a_result.write_text("{}")

    assert main(["plot", str(not_a_result), "--out", str(tmp_path)]) == 2
    assert "not a bench result" in capsys.readouterr().err


def test_load_result_reads_older_keys(tmp_path: Path):
    path = tmp_path / "old.json"
    old = {
        "scenario": "fanout",
        "params": {"members": 3},
        "metrics": {},
        "started_at": "2026-12-04T20:00:00Z",
        "added_by_a_newer_version": True,
    }
    path.write_text(json.dumps(old))

    result = plots.load_result(path)

    assert result.finished_at == "2026-12-04T20:00:00Z"
    assert result.params == {"members": 3}


def test_same_second_results_kept(tmp_path: Path):
    first = fanout_result(3, "2026-12-04T20:00:00Z").write_json(tmp_path)
    second = fanout_result(4, "2026-12-04T20:00:00Z").write_json(tmp_path)

    assert first != second
    assert json.loads(first.read_text())["params"]["members"] == 3
    assert json.loads(second.read_text())["params"]["members"] == 4
