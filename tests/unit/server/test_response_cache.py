"""The response cache's pieces: --cache-config parsing, the request key, and the byte-bounded LRU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nereid.proto import model_config_pb2 as mc
from nereid.server.response_cache import ResponseCache, cache_wanted, parse_cache_config, request_key
from nereid.server.serve import run
from nereid.server.settings import parse_settings
from nereid.server.types import InferRequest, InferResponse, RequestedOutput, Tensor


def request(value: float = 1.0, **parameters: object) -> InferRequest:
    data = np.full((1, 4), value, np.float32)
    return InferRequest("m", [Tensor("X", "FP32", (1, 4), data)], parameters=dict(parameters))


def response(nbytes: int = 64) -> InferResponse:
    return InferResponse(outputs=[Tensor("Y", "UINT8", (nbytes,), np.zeros(nbytes, np.uint8))])


@pytest.mark.parametrize(
    ("argv", "size"),
    [
        (["--cache-config", "local,size=1048576"], 1048576),
        (["--cache-config=local,size=2048"], 2048),
        (["--cache_config", "local,size=10"], 10),
        (["--response-cache-byte-size", "4096"], 4096),  # Triton's deprecated flag
        ([], 0),
    ],
)
def test_cache_config_spellings(argv, size):
    assert parse_settings(["--model-repository", "/m", *argv]).response_cache_bytes() == size


def test_the_variable_separates_values_with_semicolons(monkeypatch):
    monkeypatch.setenv("NEREID_CACHE_CONFIG", "local,size=4096")
    settings = parse_settings(["--model-repository", "/m"])
    assert settings.cache_config == ["local,size=4096"] and settings.response_cache_bytes() == 4096


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("redis,size=10", "unknown cache implementation 'redis'"),
        ("local", "sets no key"),
        ("local,size=abc", "whole number of bytes"),
        ("local,size=0", "positive"),
        ("local,bytes=10", "unknown key 'bytes'"),
    ],
)
def test_bad_cache_config_is_a_startup_error(spec, expected, capsys):
    with pytest.raises(ValueError, match=expected):
        parse_cache_config([spec])
    assert run(["--model-repository", "/m", "--cache-config", spec]) == 2
    assert expected in capsys.readouterr().err


def test_the_key_covers_inputs_outputs_and_answer_changing_parameters():
    base = request_key("m", "1", request())
    assert request_key("m", "1", request()) == base
    assert request_key("m", "2", request()) != base
    assert request_key("other", "1", request()) != base
    assert request_key("m", "1", request(2.0)) != base
    assert request_key("m", "1", request(flavour="x")) != base
    reshaped = request()
    reshaped.inputs[0] = Tensor("X", "FP32", (4, 1), reshaped.inputs[0].data.reshape(4, 1))
    assert request_key("m", "1", reshaped) != base
    retyped = request()
    retyped.inputs[0] = Tensor("X", "INT32", (1, 4), retyped.inputs[0].data.view(np.int32))
    assert request_key("m", "1", retyped) != base
    # Scheduling and encoding choices cannot change the answer.
    quiet = request(priority=2, timeout=100, sequence_id=0, binary_data_output=True)
    assert request_key("m", "1", quiet) == base
    wanted = request()
    wanted.outputs = [RequestedOutput("Y", {"binary_data": True})]
    plain = request()
    plain.outputs = [RequestedOutput("Y")]
    assert request_key("m", "1", wanted) == request_key("m", "1", plain) != base


def test_bytes_inputs_are_keyed_by_element_boundaries():
    def text(*items: bytes) -> InferRequest:
        data = np.array(items, dtype=object)
        return InferRequest("m", [Tensor("T", "BYTES", (len(items),), data)])

    assert request_key("m", "1", text(b"ab", b"c")) != request_key("m", "1", text(b"a", b"bc"))


def test_lru_by_bytes_evicts_the_least_recently_used():
    cache = ResponseCache(capacity=3 * (64 + 16))
    keys = [request_key("m", "1", request(float(i))) for i in range(4)]
    for key in keys[:3]:
        cache.insert(key, response())
    assert cache.lookup("m", "1", request(0.0)).response is not None  # 0 is now the newest
    cache.insert(keys[3], response())
    assert len(cache) == 3 and cache.evictions == 1 and cache.used <= cache.capacity
    assert cache.lookup("m", "1", request(1.0)).response is None  # 1 was the oldest
    hit = cache.lookup("m", "1", request(0.0))
    assert hit.response is not None and hit.response.outputs[0].name == "Y"
    assert cache.hits == 2 and cache.misses == 1


def test_a_response_larger_than_the_cache_is_not_stored():
    cache = ResponseCache(capacity=100)
    cache.insert(b"k" * 16, response(1000))
    assert len(cache) == 0 and cache.used == 0


def test_stored_outputs_are_copies():
    cache = ResponseCache(capacity=10_000)
    answer = response()
    key = request_key("m", "1", request())
    cache.insert(key, answer)
    answer.outputs[0].data[:] = 9  # a backend reusing its output buffer
    assert not cache.lookup("m", "1", request()).response.outputs[0].data.any()


def test_concurrent_use_keeps_the_byte_count_consistent():
    cache = ResponseCache(capacity=20 * 80)

    def work(offset: int) -> None:
        for i in range(200):
            probe = request(float((i + offset) % 50))
            if cache.lookup("m", "1", probe).response is None:
                cache.insert(request_key("m", "1", probe), response())

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.used == 80 * len(cache) <= cache.capacity
    assert cache.hits + cache.misses == 800


@pytest.mark.parametrize(
    ("text", "server", "wanted"),
    [
        ("response_cache { enable: true }", True, True),
        ("response_cache { enable: true }", False, False),
        ("", True, False),
        ("response_cache { enable: true } sequence_batching { }", True, False),
        ('platform: "ensemble" response_cache { enable: true }', True, False),
    ],
)
def test_which_models_use_the_cache(text, server, wanted):
    from google.protobuf import text_format

    config = text_format.Parse(text, mc.ModelConfig())
    assert cache_wanted(config, "m", server) is wanted
