"""Requests an ``llm`` model answers from its tokenizer alone, without the engine: vLLM's ``/tokenize`` and
``/detokenize``. The request parameter :data:`TASK` names the task (typed form, in process only).

``tokenize``: the prompt is ``text_input`` (encoded with the tokenizer's special tokens unless the parameter
``add_special_tokens`` is false) or typed chat ``messages`` (rendered with the chat template, with
``add_generation_prompt`` unless it is false, encoded without special tokens unless ``add_special_tokens``);
the response carries ``token_ids``, ``count``, ``max_model_len`` and, with ``return_token_strs``,
``token_strs``. ``detokenize``: ``input_ids`` in, ``text_output`` out (special tokens kept, as vLLM).
"""

from __future__ import annotations

from typing import Any

from nereid.backends.llm.responses import text_tensor
from nereid.backends.llm.tokenizer import Tokenizer
from nereid.server.errors import InvalidArgument
from nereid.server.textgen import MESSAGES, TOKEN_IDS, ChatMessage
from nereid.server.types import InferRequest, InferResponse

TASK = "task"
TASKS = frozenset({"tokenize", "detokenize"})


def run_task(request: InferRequest, tokenizer: Tokenizer, max_model_len: int) -> InferResponse:
    """The one response of a tokenizer task; InvalidArgument for a malformed one."""
    task = request.parameters[TASK]
    if task == "detokenize":
        ids = request.input("input_ids")
        if ids is None:
            raise InvalidArgument("detokenize needs the input 'input_ids'")
        tokens = [int(t) for t in ids.data.reshape(-1)]
        if any(not 0 <= t < tokenizer.vocab_size for t in tokens):
            raise InvalidArgument(f"token ids must be in [0, {tokenizer.vocab_size})")
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        return InferResponse(id=request.id, outputs=[text_tensor(text)], parameters={})
    tokens = _tokenize(request, tokenizer)
    params: dict[str, Any] = {TOKEN_IDS: tokens, "count": len(tokens), "max_model_len": max_model_len}
    if request.parameters.get("return_token_strs") is True:
        params["token_strs"] = [tokenizer.id_to_token(t) or "" for t in tokens]
    return InferResponse(id=request.id, outputs=[], parameters=params)


def _tokenize(request: InferRequest, tokenizer: Tokenizer) -> list[int]:
    flags = request.parameters
    messages = flags.get(MESSAGES)
    if isinstance(messages, list) and all(isinstance(m, ChatMessage) for m in messages):
        try:
            rendered = tokenizer.apply_chat_template(
                [m.as_dict() for m in messages],
                add_generation_prompt=flags.get("add_generation_prompt") is not False,
            )
        except ValueError as exc:
            raise InvalidArgument(f"messages: {exc}") from None
        return tokenizer.encode(rendered, add_special_tokens=flags.get("add_special_tokens") is True)
    tensor = request.input("text_input")
    if tensor is None:
        raise InvalidArgument("tokenize needs the input 'text_input' or chat messages")
    value = tensor.data.reshape(-1)[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return tokenizer.encode(text, add_special_tokens=flags.get("add_special_tokens") is not False)
