"""bfloat16 projections on CPU through oneDNN with weights reordered once at load (``dtype: bfloat16``).

``F.linear`` on bfloat16 CPU tensors reorders the weight into oneDNN's blocked layout on every call, which at
one decode token costs as much as the multiply itself: a single stream gets no faster than float32. Doing the
reorder once (``mkldnn._reorder_linear_weight``) and multiplying with ``mkldnn._linear_pointwise`` — the pair
Inductor's CPU freezing pass emits — runs the AMX / AVX512-BF16 kernels directly. The product is oneDNN's
either way (equal to ``F.linear`` in bfloat16 up to accumulation order). Measurements: bench/RESULTS.md
("bfloat16 with prepacked weights").
"""

from __future__ import annotations

import torch
from torch import nn

from nereid.backends.llm.models.llama import LlamaForCausalLM

_PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this torch build and CPU have oneDNN's bfloat16 kernels for `dtype` on `device`."""
    return (
        dtype == torch.bfloat16
        and device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


class PrepackedLinear(nn.Module):
    """``x @ weight.T + bias`` with the weight held in oneDNN's layout (an opaque ``torch._mkldnn`` tensor)."""

    packed: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer(
            "packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach()), persistent=False
        )
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def of(cls, linear: nn.Linear) -> PrepackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)


def pack(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Replace every projection and the LM head by a `PrepackedLinear`, in place, when `available`.

    A tied LM head gets its own packed copy (the embedding table stays as it is for lookups).
    """
    weight = model.model.embed_tokens.weight
    if not available(weight.dtype, weight.device):
        return model
    for layer in model.model.layers:
        for path in _PROJECTIONS:
            parent_name, _, child = path.rpartition(".")
            parent = layer.get_submodule(parent_name)
            setattr(parent, child, PrepackedLinear.of(getattr(parent, child)))
    model.lm_head = PrepackedLinear.of(model.lm_head)  # type: ignore[assignment]
    return model
