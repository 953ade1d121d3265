"""The canary controller: steps a candidate's traffic share up while it holds up, else rolls back.

Runs on the core's event loop (no locks). Every evaluation window it compares the candidate
with the stable version — error rate, p99 latency ratio and, with shadow traffic, agreement
of outputs — then promotes one step or rolls the share back to 0 at once. Every decision is
logged with its numbers and kept in :attr:`CanaryController.decisions`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nereid.server.routing.config import Canary

log = logging.getLogger("nereid.canary")

MAX_SAMPLES = 20_000  # latency samples kept per version per window


@dataclass(slots=True)
class WindowStats:
    count: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)

    def add(self, ok: bool, latency_ns: int) -> None:
        self.count += 1
        if not ok:
            self.errors += 1
        elif len(self.latencies_ns) < MAX_SAMPLES:
            self.latencies_ns.append(latency_ns)

    def p99_ms(self) -> float | None:
        if not self.latencies_ns:
            return None
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e6


@dataclass(frozen=True, slots=True)
class Decision:
    at: float  # wall-clock seconds
    action: str  # promote | rollback | wait | manual-promote | manual-rollback
    share: float  # the candidate's share after the decision
    numbers: dict[str, Any]


class CanaryController:
    """One model's canary: ``share`` is the candidate's percentage of unversioned traffic."""

    def __init__(self, model: str, canary: Canary) -> None:
        self.model = model
        self.canary = canary
        self.step = 0
        self.share = canary.steps[0]
        self.status = "running"  # running | promoted | rolled_back
        self.decisions: deque[Decision] = deque(maxlen=32)
        self._stable_p99_ms: float | None = None
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.window_start = now
        self.stable = WindowStats()
        self.candidate = WindowStats()
        self.compared = 0
        self.agreed = 0

    # ---- observations ------------------------------------------------------------------------

    def record(self, version: int, ok: bool, latency_ns: int) -> None:
        if self.status != "running":
            return
        if version == self.canary.candidate:
            self.candidate.add(ok, latency_ns)
        elif version == self.canary.stable:
            self.stable.add(ok, latency_ns)
        self.tick()

    def record_agreement(self, agreed: bool) -> None:
        if self.status != "running":
            return
        self.compared += 1
        self.agreed += agreed
        self.tick()

    def tick(self, now: float | None = None) -> None:
        """Evaluate once the window has passed (called on every observation and by a timer)."""
        now = time.monotonic() if now is None else now
        if self.status == "running" and now - self.window_start >= self.canary.window_s:
            self.evaluate(now)

    # ---- decisions ---------------------------------------------------------------------------

    def evaluate(self, now: float) -> None:
        c = self.canary
        numbers = self.numbers()
        evidence = max(self.candidate.count, self.compared if c.min_agreement is not None else 0)
        if evidence < c.min_requests:
            numbers["reason"] = f"{evidence} candidate observations < min_requests {c.min_requests}"
            self._decide("wait", numbers)
            self.window_start = now  # keep counting; decide when the evidence is there
            return
        failed = []
        if numbers["error_rate"] > c.max_error_rate:
            failed.append(f"error_rate {numbers['error_rate']:.4f} > {c.max_error_rate}")
        ratio = numbers["p99_ratio"]
        if ratio is not None and ratio > c.max_p99_ratio:
            failed.append(f"p99_ratio {ratio:.2f} > {c.max_p99_ratio}")
        agreement = numbers["agreement"]
        if c.min_agreement is not None and agreement is not None and agreement < c.min_agreement:
            failed.append(f"agreement {agreement:.4f} < {c.min_agreement}")
        if failed:
            numbers["reason"] = "; ".join(failed)
            self.rollback(numbers, manual=False)
        else:
            self.promote(numbers, manual=False)
        self._reset(now)

    def numbers(self) -> dict[str, Any]:
        """The current window's evidence, as logged with each decision."""
        stable_p99 = self.stable.p99_ms()
        if stable_p99 is not None:
            self._stable_p99_ms = stable_p99
        candidate_p99 = self.candidate.p99_ms()
        reference = self._stable_p99_ms
        return {
            "step": self.step,
            "share": self.share,
            "candidate_requests": self.candidate.count,
            "candidate_errors": self.candidate.errors,
            "error_rate": self.candidate.errors / self.candidate.count if self.candidate.count else 0.0,
            "stable_requests": self.stable.count,
            "candidate_p99_ms": candidate_p99,
            "stable_p99_ms": reference,
            "p99_ratio": candidate_p99 / reference if candidate_p99 is not None and reference else None,
            "compared": self.compared,
            "agreement": self.agreed / self.compared if self.compared else None,
        }

    def promote(self, numbers: dict[str, Any] | None = None, manual: bool = True) -> None:
        """One step up (the last step passed: the candidate takes all traffic); manual: all at once."""
        numbers = numbers if numbers is not None else self.numbers()
        if manual or self.step + 1 >= len(self.canary.steps):
            self.step, self.share, self.status = len(self.canary.steps) - 1, 100.0, "promoted"
        else:
            self.step += 1
            self.share = self.canary.steps[self.step]
        self._decide("manual-promote" if manual else "promote", numbers)

    def rollback(self, numbers: dict[str, Any] | None = None, manual: bool = True) -> None:
        """The candidate's share goes to 0 at once and stays there."""
        numbers = numbers if numbers is not None else self.numbers()
        self.share, self.status = 0.0, "rolled_back"
        self._decide("manual-rollback" if manual else "rollback", numbers)

    def _decide(self, action: str, numbers: dict[str, Any]) -> None:
        self.decisions.append(Decision(time.time(), action, self.share, numbers))
        level = logging.WARNING if "rollback" in action else logging.INFO
        log.log(
            level,
            "canary %s: %s candidate %d -> %.1f%% (%s)",
            self.model,
            action,
            self.canary.candidate,
            self.share,
            ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items()),
        )

    def state(self) -> dict[str, Any]:
        return {
            "stable": self.canary.stable,
            "candidate": self.canary.candidate,
            "status": self.status,
            "step": self.step,
            "steps": list(self.canary.steps),
            "share": self.share,
            "window_s": self.canary.window_s,
            "window": self.numbers(),
            "decisions": [
                {"at": d.at, "action": d.action, "share": d.share, "numbers": d.numbers}
                for d in self.decisions
            ],
        }


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
