from __future__ import annotations

import pytest

from nereid.backends.llm.detokenizer import IncrementalDetokenizer
from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.tokenizer import Tokenizer

TEXT = "Hello world, hello tokens! Stop here. Café 東京 😀 done"


@pytest.fixture(scope="module")
def tokenizer(llama_dir) -> Tokenizer:
    return Tokenizer.from_dir(llama_dir)


def stream(tokenizer: Tokenizer, text: str, **params: object) -> tuple[list[str], str | None]:
    """Feed `text`'s tokens one at a time; return the streamed deltas and the stop string hit."""
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, [1, 2], SamplingParams(**params))  # type: ignore[arg-type]
    deltas, stop = [], None
    for token in ids:
        stop = detok.add_token(token)
        deltas.append(detok.pop_delta(finished=stop is not None))
        if stop:
            break
    else:
        deltas.append(detok.pop_delta(finished=True))
    return deltas, stop


def test_round_trip_and_special_tokens(tokenizer):
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_ids == [0]
    ids = tokenizer.encode("<|im_start|>user")
    assert ids[0] == 1
    assert tokenizer.decode(ids) == "user"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|im_start|>user"


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    assert (
        tokenizer.apply_chat_template(messages) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False).endswith("Hi<|im_end|>\n")


def test_chat_template_errors(tokenizer):
    strict = Tokenizer(
        tokenizer.tokenizer, chat_template="{{ raise_exception('only ' + bos_token + 'x') }}", bos_token="<s>"
    )
    with pytest.raises(ValueError, match="only <s>x"):
        strict.apply_chat_template([])
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(tokenizer.tokenizer).apply_chat_template([])


def test_streaming_emits_only_complete_utf8(tokenizer):
    deltas, stop = stream(tokenizer, TEXT)
    assert stop is None and "".join(deltas) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    assert any(d == "" for d in deltas)  # multi-byte characters span tokens and wait for completion


def test_stop_string_across_token_boundaries(tokenizer):
    ids = tokenizer.encode(TEXT)
    pieces = [tokenizer.decode([t]) for t in ids]
    assert not any("o tok" in p for p in pieces)  # the stop string spans several tokens
    deltas, stop = stream(tokenizer, TEXT, stop=["zzz", "o tok"])
    assert stop == "o tok" and "".join(deltas) == "Hello world, hell"
    assert not any("o t" in d for d in deltas)  # nothing of the stop string was streamed
    deltas, stop = stream(tokenizer, TEXT, stop=["o tok"], include_stop_str_in_output=True)
    assert "".join(deltas) == "Hello world, hello tok"


def test_earliest_stop_string_wins(tokenizer):
    deltas, stop = stream(tokenizer, TEXT, stop=["here", "Stop"])
    assert stop == "Stop" and "".join(deltas) == "Hello world, hello tokens! "


def test_token_bytes_join_back_into_the_text(tokenizer):
    text = TEXT + " Ωμ ☃ 🎉"  # characters the tokenizer never saw: split into single-byte tokens
    ids = tokenizer.encode(text)
    assert b"".join(tokenizer.token_bytes(t) for t in ids) == text.encode()
    partial = [t for t in ids if tokenizer.decode([t]) == "\ufffd"]
    assert partial
    assert all(tokenizer.token_bytes(t) != "\ufffd".encode() for t in partial)
    assert tokenizer.token_bytes(1) == b"<|im_start|>"  # a special token: its own text
