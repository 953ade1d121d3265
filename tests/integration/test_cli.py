"""`nereid serve` as a user runs it: the start-up table, the ports, and a clean SIGTERM."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NEREID = shutil.which("nereid") or str(Path(sys.executable).with_name("nereid"))


def read_until(process: subprocess.Popen, pattern: str, timeout: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"never saw {pattern!r}; output:\n{seen}")


def test_serve_prints_the_table_and_drains_on_sigterm(repo):
    repo.add_sub()
    repo.config("broken", 'platform: "onnxruntime_onnx"\nmax_batch_size: -3\n')
    process = subprocess.Popen(
        [
            NEREID,
            "serve",
            "--model-repository",
            str(repo.root),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--exit-on-error=false",
            "--http-address",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = read_until(process, r"started http service at 127\.0\.0\.1:(\d+)")
        assert re.search(r"\| add_sub\s+\| 1\s+\| READY", output)
        assert re.search(r"\| broken\s+\|\s+\| UNAVAILABLE: .*config.pbtxt.*max_batch_size", output)
        port = re.search(r"started http service at 127\.0\.0\.1:(\d+)", output).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=10) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_exit_on_error_exits_non_zero(repo):
    repo.config("broken", "max_batch_size: -3\n")
    result = subprocess.run(
        [
            NEREID,
            "serve",
            "--model-repository",
            str(repo.root),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout and "--exit-on-error=false" in result.stderr


@pytest.mark.parametrize("argv,message", [([], "required"), (["--http-port", "x"], "invalid int value")])
def test_usage_errors(argv, message):
    result = subprocess.run([NEREID, "serve", *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr
