"""Structured output: grammars compiled with xgrammar, token masks applied in the sampler.

`Grammars` (one per engine) turns a request's :class:`GuidedDecodingParams` into a fresh matcher at
`add_request`, raising ValueError (the request's 400) for a grammar it cannot compile or one past the size
limits, before anything is scheduled. Each step, :func:`apply_masks` sets the logits of tokens the grammar
forbids to -inf on the rows of sequences that have a matcher (others pay nothing), and :func:`advance` feeds
the sampled tokens to the matchers. End-of-sequence is allowed only where the grammar accepts; once a matcher
has taken it, it is terminated and the engine finishes the sequence.

Why xgrammar: `bench/grammar_masks.py` measures its mask at ~7 µs per token on SmolLM2's 49k vocabulary,
against ~30-60 µs for llguidance and ~35 µs for outlines-core, and it is vLLM's default backend (the same
EBNF dialect for `guided_grammar`).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import xgrammar as xgr

from nereid.backends.llm.sampling import GuidedDecodingParams
from nereid.backends.llm.sequence import Sequence
from nereid.backends.llm.tokenizer import Tokenizer

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # xgrammar's "[time] file.cc:line: " before a message


class Grammars:
    """Compiles guided-decoding specs for one tokenizer; xgrammar caches compiled grammars by their text."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        max_bytes: int,
        max_depth: int,
    ) -> None:
        try:  # imported with the first guided request: ~2 s, and most servers never need it
            import xgrammar as xgr
        except ImportError:
            raise ValueError(
                "structured output needs xgrammar on the server: pip install 'nereid[structured]'"
            ) from None

        special = {i for i, t in tokenizer.tokenizer.get_added_tokens_decoder().items() if t.special}
        # Special tokens get no bytes: the grammar never emits them as text (xgrammar only allows them as stops).
        vocab = [b"" if i in special else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        info = xgr.TokenizerInfo(vocab, vocab_size=vocab_size, stop_token_ids=tokenizer.eos_token_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_limit_bytes=64 << 20)
        self.vocab_size = vocab_size
        self.max_bytes, self.max_depth = max_bytes, max_depth

    def matcher(self, spec: GuidedDecodingParams) -> xgr.GrammarMatcher:
        """A new matcher for `spec`; ValueError naming the kind of grammar when it cannot be used."""
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compile(spec))

    def compile(self, spec: GuidedDecodingParams) -> xgr.CompiledGrammar:
        kind, text = _source(spec)
        size = len(text.encode())
        if size > self.max_bytes:
            raise ValueError(
                f"guided {kind} is {size} bytes; the limit is {self.max_bytes} (max_grammar_bytes)"
            )
        if spec.json is not None:
            depth = _depth(spec.json)
            if depth > self.max_depth:
                raise ValueError(
                    f"guided json schema nests {depth} levels; the limit is {self.max_depth} (max_schema_depth)"
                )
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(spec.json)
            except SchemaError as exc:
                raise ValueError(f"guided json is not a valid JSON Schema: {exc.message}") from None
        try:
            if spec.json is not None or spec.json_object:  # compact JSON: small models loop on whitespace
                return self.compiler.compile_json_schema(text, any_whitespace=False)
            if spec.regex is not None:
                return self.compiler.compile_regex(text)
            return self.compiler.compile_grammar(text)
        except Exception as exc:  # xgrammar reports every bad grammar as RuntimeError or its own errors
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            first = _LOG_PREFIX.sub("", lines[0])
            raise ValueError(f"guided {kind} cannot be compiled: {first}") from None


def _source(spec: GuidedDecodingParams) -> tuple[str, str]:
    """(kind, the text xgrammar compiles): a choice becomes an EBNF alternation of string literals."""
    if spec.json is not None:
        return "json schema", json.dumps(spec.json)
    if spec.json_object:
        return "json object", '{"type": "object"}'
    if spec.regex is not None:
        return "regex", spec.regex
    if spec.choice is not None:
        return "choice", "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice)
    assert spec.grammar is not None
    return "grammar", spec.grammar


def _depth(value: Any) -> int:
    """Nesting depth of dicts and lists (a flat object is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def apply_masks(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place: -inf on every token the matcher of each guided row forbids; rows without one are untouched."""
    rows = [i for i, s in enumerate(seqs) if s.grammar is not None]
    if not rows:
        return
    vocab = logits.shape[-1]
    bitmask = torch.full((len(rows), (vocab + 31) // 32), -1, dtype=torch.int32)  # xgrammar's layout
    for k, row in enumerate(rows):
        seqs[row].grammar.fill_next_token_bitmask(bitmask, k)
    forbidden = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab] == 0
    if logits.device.type == "cpu":  # numpy: microseconds, where torch's threaded ops wait on a busy CPU
        view = logits.numpy()
        for k, row in enumerate(rows):
            np.copyto(view[row], -np.inf, where=forbidden[k])
        return
    mask = torch.from_numpy(forbidden).to(logits.device, non_blocking=True)
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(mask, float("-inf"))


def advance(seqs: list[Sequence], token_ids: list[int]) -> None:
    """Feed each guided sequence its sampled token (always one the mask allowed)."""
    for seq, token in zip(seqs, token_ids, strict=True):
        if seq.grammar is not None and not seq.grammar.accept_token(token):
            raise RuntimeError(f"grammar rejected token {token} of request {seq.request_id!r}")
