"""``nereid bench``: progress bar on stderr, an end-of-run summary with percentiles, a PNG plot."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np

from nereid.clients.bench import main as bench_main
from nereid.clients.plot import series


def test_bench_prints_progress_summary_and_writes_a_plot(repo, start_server, tmp_path, capsys, monkeypatch):
    repo.add_sub()
    server = start_server(repo.root)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    plot = tmp_path / "run.png"
    argv = [
        "-m",
        "add_sub",
        "-u",
        server.http_url,
        "--concurrency",
        "1,2",
        "--duration",
        "1",
        "--warmup",
        "0.1",
    ]
    assert bench_main([*argv, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "Summary:" in out and "p50" in out and "p99" in out and "0 failed" in out
    assert "[#" in stderr.getvalue() and "measuring" in stderr.getvalue()
    data = plot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 664)
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    pixels = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * 3)[:, 1:]
    blue = np.all(pixels.reshape(height, width, 3) == (37, 99, 235), axis=2)
    assert blue.sum() > 50  # the throughput line was drawn


def test_series_buckets_rate_and_percentiles():
    completions = [(int(0.1e9), int(2e6)), (int(0.2e9), int(4e6)), (int(0.6e9), int(1e6))]
    times, rate, p50, p99 = series(completions, 0, bucket_s=0.5)
    assert list(times) == [0.25, 0.75] and list(rate) == [4.0, 2.0]
    assert list(p50) == [2.0, 1.0] and list(p99) == [4.0, 1.0]
    assert all(len(x) == 0 for x in series([], 0))
