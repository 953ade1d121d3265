"""A latency/throughput-over-time PNG for ``nereid bench --plot``, drawn with numpy (no plotting library).

Two panels share the time axis: throughput per interval (requests/s) and latency p50/p99 per interval
(ms). Labels use a built-in 3x5 pixel font, so the picture needs nothing beyond numpy and zlib.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nereid.clients.report import percentile

WIDTH, PANEL, MARGIN, SCALE = 900, 260, 48, 2
BLUE, ORANGE, RED, GREY, BLACK = (37, 99, 235), (217, 119, 6), (192, 57, 43), (225, 228, 232), (40, 40, 40)
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "/": "001001010100100",
    " ": "000000000000000", "p": "000111101111100", "m": "000111111101101", "s": "000011010001110",
    "r": "000110101100100", "e": "000111111100111", "q": "000111101111001", "t": "010111010010011",
    "i": "010000010010010", "l": "010010010010011", "a": "000111011101111", "c": "000111100100111",
    "n": "000110101101101", "y": "000101111001111", "h": "100100111101101", "u": "000101101101111",
    "o": "000111101101111", "g": "000111101111011", "k": "100101110101101", "d": "001001111101111",
    "w": "000101101111111", "-": "000000111000000", "_": "000000000000111", "b": "100100111101111",
    "f": "011010111010010", "v": "000101101101010", "x": "000101010101101", ":": "000010000010000",
}  # fmt: skip


def series(
    completions: Sequence[tuple[int, int]], start_ns: int, bucket_s: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bucket times s, requests/s, p50 ms, p99 ms) from ``(end_ns, latency_ns)`` of each success."""
    if not completions:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    ends = np.array([(end - start_ns) / 1e9 for end, _ in completions])
    latencies = np.array([lat / 1e6 for _, lat in completions])
    count = max(1, int(np.ceil(ends.max() / bucket_s)))
    index = np.minimum((ends / bucket_s).astype(int), count - 1)
    times = (np.arange(count) + 0.5) * bucket_s
    rate = np.bincount(index, minlength=count) / bucket_s
    p50, p99 = np.full(count, np.nan), np.full(count, np.nan)
    for b in range(count):
        values = np.sort(latencies[index == b])
        if len(values):
            p50[b], p99[b] = percentile(values, 50), percentile(values, 99)
    return times, rate, p50, p99


def write_plot(path: Path, completions: Sequence[tuple[int, int]], start_ns: int, title: str = "") -> None:
    """Write the two-panel PNG for one run's successful requests."""
    times, rate, p50, p99 = series(completions, start_ns)
    height = 2 * PANEL + 3 * MARGIN
    image = np.full((height, WIDTH, 3), 255, dtype=np.uint8)
    _text(image, MARGIN, 10, (title or "nereid bench").lower(), BLACK)
    tmax = float(times[-1] + 0.125) if len(times) else 1.0
    top = MARGIN
    _panel(image, top, times, [(rate, BLUE)], tmax, "throughput req/s")
    _panel(image, top + PANEL + MARGIN, times, [(p50, ORANGE), (p99, RED)], tmax, "latency ms p50 p99")
    _text(image, WIDTH // 2 - 20, height - 18, f"time s 0-{tmax:.1f}", BLACK)
    path.write_bytes(_png(image))


def _panel(
    image: np.ndarray, top: int, times: np.ndarray, lines: list[tuple[np.ndarray, tuple[int, int, int]]],
    tmax: float, label: str,
) -> None:  # fmt: skip
    left, right, bottom = MARGIN, WIDTH - 16, top + PANEL
    finite = np.concatenate([v[np.isfinite(v)] for v, _ in lines]) if lines else np.zeros(0)
    ymax = float(finite.max()) * 1.1 if len(finite) and finite.max() > 0 else 1.0
    for k in range(5):
        y = bottom - int(k / 4 * (PANEL - 10))
        image[y, left:right] = GREY
        _text(image, 2, y - 5, _short(k / 4 * ymax), BLACK)
    image[top : bottom + 1, left] = BLACK
    image[bottom, left:right] = BLACK
    _text(image, left + 8, top - 14, label, BLACK)
    for values, color in lines:
        xs = left + (times / tmax * (right - left)).astype(int)
        ys = bottom - (np.nan_to_num(values, nan=-1) / ymax * (PANEL - 10)).astype(int)
        for i in range(1, len(xs)):
            if np.isfinite(values[i - 1]) and np.isfinite(values[i]):
                _line(image, xs[i - 1], ys[i - 1], xs[i], ys[i], color)


def _short(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def _line(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    xs = np.linspace(x0, x1, steps + 1).round().astype(int)
    ys = np.linspace(y0, y1, steps + 1).round().astype(int)
    for dy in (0, 1):  # two pixels thick
        image[np.clip(ys + dy, 0, image.shape[0] - 1), np.clip(xs, 0, image.shape[1] - 1)] = color


def _text(image: np.ndarray, x: int, y: int, text: str, color: tuple[int, int, int]) -> None:
    for char in text:
        glyph = _GLYPHS.get(char, _GLYPHS[" "])
        for row in range(5):
            for col in range(3):
                if glyph[row * 3 + col] == "1":
                    y0, x0 = y + row * SCALE, x + col * SCALE
                    image[max(y0, 0) : y0 + SCALE, max(x0, 0) : x0 + SCALE] = color
        x += 4 * SCALE


def _png(image: np.ndarray) -> bytes:
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
