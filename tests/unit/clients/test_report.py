"""Percentiles, latency summaries and the table/JSON shapes of a load result."""

from __future__ import annotations

import io
import json

import pytest

from nereid.clients.report import LatencyStats, LoadResult, ProgressLine, Row, format_table, percentile


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1


def test_percentile_of_small_samples_rounds_up():
    assert percentile([10, 20, 30], 50) == 20
    assert percentile([10, 20, 30], 90) == 30
    assert percentile([10, 20], 50) == 10
    assert percentile([7], 99) == 7


@pytest.mark.parametrize("p", [-1, 101])
def test_percentile_rejects_out_of_range(p):
    with pytest.raises(ValueError):
        percentile([1, 2, 3], p)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_stats_from_nanoseconds():
    stats = LatencyStats.from_ns([4000, 1000, 3000, 2000])
    assert stats is not None
    assert stats.count == 4
    assert stats.min_us == 1.0 and stats.max_us == 4.0
    assert stats.mean_us == 2.5
    assert stats.p50_us == 2.0
    assert stats.p99_us == 4.0
    assert LatencyStats.from_ns([]) is None


def _row(level: float, mode: str = "concurrency", errors: int = 0) -> Row:
    return Row(
        mode=mode,
        level=level,
        duration_s=1.0,
        completed=10,
        errors=errors,
        throughput=10.0,
        latency=LatencyStats.from_ns([1_000_000] * 10),
        error_messages={"HTTP 400: bad": errors} if errors else {},
        send_rate=12.0 if mode == "request_rate" else None,
        client_cpu_us=50.0,
    )


def test_table_has_one_line_per_row_and_lists_errors():
    text = format_table([_row(1), _row(8, errors=2)], "title")
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[1].split()[:3] == ["Concurrency", "Infer/s", "p50"]
    assert len(lines) == 2 + 2 + 1
    assert "2 x HTTP 400: bad" in lines[-1]
    assert "server CPU" not in text  # only shown when measured


def test_rate_table_shows_the_send_rate():
    text = format_table([_row(100.0, "request_rate")])
    assert text.splitlines()[0].split()[0] == "Rate/s"
    assert "Sent/s" in text and "12.0" in text


def test_load_result_serializes_to_json():
    result = LoadResult(
        "h:1", "http", "m", "", 1, {"X": [1, 2]}, "raw", "2026-01-01T00:00:00+00:00", [_row(1)]
    )
    document = json.loads(json.dumps(result.to_dict()))
    assert document["rows"][0]["latency"]["p99_us"] == 1000.0
    assert {"throughput", "errors", "completed", "level", "mode"} <= set(document["rows"][0])
    assert document["machine"]["cpus"] >= 1


def test_progress_line_overwrites_and_clears():
    stream = io.StringIO()
    line = ProgressLine(stream)
    line("long status text")
    line("short")
    line.clear()
    out = stream.getvalue()
    assert out.startswith("\rlong status text")
    assert "\rshort" + " " * len("long status text"[len("short") :]) in out
    assert out.endswith("\r")
