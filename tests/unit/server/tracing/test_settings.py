"""Trace settings: validation of API values and --trace-config flags, scopes, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from nereid.server.errors import InvalidArgument
from nereid.server.tracing import TraceManager
from nereid.server.tracing.manager import check_flags
from nereid.server.tracing.settings import TraceSettings, parse_flags, parse_updates


def test_defaults_are_off_with_triton_wire_form():
    assert TraceSettings().to_wire() == {
        "trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
        "trace_file": "", "trace_mode": "triton",
    }  # fmt: skip
    assert not TraceManager().active


def test_parse_updates_converts_and_clears():
    updates = parse_updates({"trace_level": "timestamps", "trace_rate": "10", "trace_count": None}, None)
    assert updates == {"trace_level": ("TIMESTAMPS",), "trace_rate": 10, "trace_count": None}


@pytest.mark.parametrize(
    "values",
    [{"trace_rate": "0"}, {"trace_rate": -1}, {"trace_rate": True}, {"trace_level": []},
     {"trace_level": ["SOMETIMES"]}, {"log_frequency": "-1"}, {"trace_count": "-3"},
     {"trace_mode": "zipkin"}, {"trace_rate": ["1", "2"]}, {"nope": "1"}],
)  # fmt: skip
def test_parse_updates_refuses(values):
    with pytest.raises(InvalidArgument):
        parse_updates(values, None)


def test_trace_file_stays_inside_the_allowed_folder(tmp_path: Path):
    inside = parse_updates({"trace_file": "sub/t.json"}, tmp_path)["trace_file"]
    assert inside == str((tmp_path / "sub" / "t.json").resolve())
    for bad in ("/etc/cron.d/x", "../x.json", str(tmp_path) + "-other/x.json"):
        with pytest.raises(InvalidArgument, match="trace folder"):
            parse_updates({"trace_file": bad}, tmp_path)
    with pytest.raises(InvalidArgument, match="without a trace folder"):
        parse_updates({"trace_file": "x.json"}, None)


def test_flags_in_triton_form():
    updates, exporter = parse_flags(
        ["level=TIMESTAMPS", "rate=100", "count=5", "triton,file=/tmp/t.json", "mode=opentelemetry",
         "opentelemetry,url=http://collector:4318/v1/traces", "opentelemetry,resource=service.name=svc"]
    )  # fmt: skip
    assert updates == {"trace_level": "TIMESTAMPS", "trace_rate": "100", "trace_count": "5",
                       "trace_file": "/tmp/t.json", "trace_mode": "opentelemetry"}  # fmt: skip
    assert exporter == {"url": "http://collector:4318/v1/traces", "resource": "service.name=svc"}
    for bad in (["rate"], ["colour=red"], ["rate=0"], ["level=LOUD"]):
        with pytest.raises(ValueError, match="--trace-config"):
            check_flags(bad)


def test_sampling_by_rate_count_and_model_scope():
    manager = TraceManager(["level=TIMESTAMPS", "rate=3"])
    assert manager.active
    hits = [manager.begin("m", None, None, "http") is not None for _ in range(9)]
    assert hits == [True, False, False] * 3
    manager.update("m", {"trace_level": ["OFF"]})
    assert manager.begin("m", None, None, "http") is None and manager.active  # the global scope still traces
    manager.update("", {"trace_level": ["OFF"]})
    assert not manager.active
    with pytest.raises(InvalidArgument, match="traceparent"):
        manager.begin("m", "bogus", None, "http")  # refused even while not tracing
