"""torch's process-wide thread pools: the first model that sets a key wins."""

from __future__ import annotations

import logging

from nereid.backends.pytorch.threads import INTER_OP, INTRA_OP, ThreadSettings


def recording() -> tuple[ThreadSettings, list[tuple[str, int]]]:
    calls: list[tuple[str, int]] = []
    settings = ThreadSettings(
        setters={
            INTRA_OP: lambda n: calls.append((INTRA_OP, n)),
            INTER_OP: lambda n: calls.append((INTER_OP, n)),
        }
    )
    return settings, calls


def test_first_model_wins_and_later_values_are_logged(caplog):
    settings, calls = recording()
    settings.apply("a", {INTRA_OP: 2, INTER_OP: 1})
    with caplog.at_level(logging.WARNING):
        settings.apply("b", {INTRA_OP: 4})
        settings.apply("c", {INTRA_OP: 2})
    assert calls == [(INTRA_OP, 2), (INTER_OP, 1)]
    assert settings.applied == {INTRA_OP: (2, "a"), INTER_OP: (1, "a")}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert (
        "model 'b': INTRA_OP_THREAD_COUNT=4 ignored" in warnings[0]
        and "model 'a' already set 2" in warnings[0]
    )


def test_a_refused_setting_is_logged_and_left_for_the_next_model(caplog):
    attempts: list[int] = []

    def fixed_pool(n: int) -> None:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("cannot set number of interop threads after parallel work has started")

    settings = ThreadSettings(setters={INTRA_OP: lambda n: None, INTER_OP: fixed_pool})
    with caplog.at_level(logging.WARNING):
        settings.apply("a", {INTER_OP: 3})
    assert "cannot apply INTER_OP_THREAD_COUNT=3" in caplog.text and INTER_OP not in settings.applied
    settings.apply("b", {INTER_OP: 5})
    assert settings.applied[INTER_OP] == (5, "b")
