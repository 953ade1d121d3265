#!/usr/bin/env bash
# Nereid GPU check: install what is missing, then build / serve / compare / time every engine path
# (ONNX CPU, ONNX CUDA EP, ONNX TensorRT EP, TensorRT plan, PyTorch CPU/CUDA, torch.export CUDA) and
# run `pytest tests/gpu`. Made for a rented x86-64 GPU machine with a CUDA build of torch; the whole
# run stays inside GPU_CHECK_BUDGET seconds (default 570, i.e. under 10 minutes).
#
#   bash bench/gpu_check.sh                     # on the GPU machine, from anywhere
#   bash bench/gpu_check.sh --download-wheels   # on a machine WITH internet: fill .whl/ for an offline one
#   bash bench/gpu_check.sh --download-wheels --with-gpu-wheels   # also tensorrt + onnxruntime-gpu (GBs)
#
# Packages: missing ones are installed with pip into a private folder ($GPU_CHECK_SITE, put first on
# PYTHONPATH, so the machine's own torch/numpy stay as they are): from .whl/ (no index) when that folder
# exists, else from the package index. Offline and without wheels, the phases that need a package
# are reported as skipped. Nereid itself: `pip install -e .` (no build isolation, no deps); if that
# fails (or GPU_CHECK_LINK_ONLY=1), a symlinked `nereid` namespace in $GPU_CHECK_SITE.
#
# Output: phase headers and a summary on stdout; report files in $OUT (or bench/out/gpu_check):
# gpu_check_report.txt/.json (run phase), gpu_check_server.log, gpu_check_pytest.log, gpu_check_summary.txt.
# Exit status: 0 when every phase passed, 1 otherwise (each phase runs even when an earlier one failed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$ROOT/bench/out/gpu_check}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.whl}"
SITE="${GPU_CHECK_SITE:-/tmp/nereid_gpu_check_site}"
BUDGET="${GPU_CHECK_BUDGET:-570}"
mkdir -p "$OUT_DIR" "$SITE"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export OUT="$OUT_DIR"

# --------------------------------------------------------------------------------------------
# Phases: each bounded by its own limit and by what is left of the budget; failures are recorded.

START="${GPU_CHECK_START:-$(date +%s)}"  # children (one per phase) share the parent's clock
export GPU_CHECK_START="$START"
declare -a SUMMARY=()
FAILED=0

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

phase() {  # phase NAME LIMIT FUNCTION: FUNCTION runs in a child bash under `timeout`
  local name="$1" limit="$2" rc=0 began
  shift 2
  local remaining
  remaining=$(left)
  if (( remaining < 15 )); then
    echo; echo "=== $name: SKIPPED (only ${remaining}s of the budget left) ==="
    SUMMARY+=("SKIPPED  $name (out of time)"); FAILED=1; return 0
  fi
  (( limit > remaining - 5 )) && limit=$(( remaining - 5 ))
  echo; echo "=== $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed) ==="
  began=$(date +%s)
  PHASE_LIMIT="$limit" timeout --kill-after=15 "$limit" bash "$ROOT/bench/gpu_check.sh" --phase "$1" || rc=$?
  local took=$(( $(date +%s) - began ))
  if (( rc == 0 )); then
    SUMMARY+=("ok       $name (${took}s)")
  else
    local why="exit $rc"
    (( rc == 124 || rc == 137 )) && why="timed out after ${limit}s"
    SUMMARY+=("FAILED   $name ($why, ${took}s)"); FAILED=1
  fi
  return 0
}

pip_install() {  # pip_install REQUIREMENT... into $SITE, offline from $WHEELS when it exists
  local source=()
  if [[ -d "$WHEELS" ]]; then
    source=(--no-index --find-links "$WHEELS")
  fi
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-compile --upgrade --timeout 20 \
    --retries 1 --target "$SITE" "${source[@]}" "$@"
}

install_missing() {
  local missing=() failed=0
  mapfile -t missing < <("$PY" bench/gpu_check.py deps)
  if (( ${#missing[@]} == 0 )); then
    echo "nothing missing"; return 0
  fi
  echo "missing: ${missing[*]}"
  if [[ ! -d "$WHEELS" ]] && ! timeout 40 "$PY" -m pip download -q --no-deps --timeout 8 --retries 0 \
      -d "$(mktemp -d)" pip >/dev/null 2>&1; then
    echo "no $WHEELS folder and the package index is unreachable: cannot install ${missing[*]}"
    echo "(prepare wheels elsewhere with: bash bench/gpu_check.sh --download-wheels)"
    return 1
  fi
  # One by one, so that one unavailable package (e.g. a GPU wheel offline) does not block the rest.
  for requirement in "${missing[@]}"; do
    if pip_install "$requirement"; then echo "installed $requirement"; else echo "could not install $requirement"; failed=1; fi
  done
  # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels that torch brought, once torch is loaded.
  "$PY" - <<'EOF' || true
import importlib
for name in ("tensorrt", "onnxruntime", "tritonclient.http", "uvicorn"):
    try:
        module = importlib.import_module(name)
        print(f"  {name}: {getattr(module, '__version__', 'ok')}")
    except Exception as exc:
        print(f"  {name}: NOT importable ({type(exc).__name__}: {exc})")
EOF
  "$PY" bench/gpu_check.py deps | sed 's/^/  still missing: /'
  return $failed
}

install_project() {
  if [[ -z "${GPU_CHECK_LINK_ONLY:-}" ]] && "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"; then
    "$PY" -c "import nereid.server.serve" && return 0
  fi
  echo "pip install -e . failed; linking the nereid namespace into $SITE instead"
  mkdir -p "$SITE/nereid"
  for pair in server:server backends:backends proto:proto ensembles:ensembles clients:clients; do
    ln -sfn "$ROOT/${pair%%:*}" "$SITE/nereid/${pair##*:}"
  done
  "$PY" -c "import nereid.server.serve; print('nereid importable from', nereid.server.__path__)"
}

environment() {
  echo "host: $(uname -a)"
  echo "python: $("$PY" --version 2>&1) at $(command -v "$PY")"
  nvidia-smi -L || echo "nvidia-smi: not available"
  "$PY" bench/gpu_check.py env
}

download_wheels() {  # run where pip reaches the index; the GPU machine may have no network
  mkdir -p "$WHEELS"
  local small=(uvicorn httptools orjson grpcio-health-checking grpcio-reflection "protobuf>=7.35.1"
               tritonclient python-rapidjson geventhttpclient gevent greenlet zope.event zope.interface brotli)
  local gpu=()
  if [[ "${1:-}" == "--with-gpu-wheels" ]]; then
    gpu=(tensorrt-cu13 tensorrt-cu13-libs tensorrt-cu13-bindings onnxruntime-gpu)
  fi
  for requirement in "${small[@]}" "${gpu[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
      -d "$WHEELS" "$requirement" || echo "warning: no wheel for $requirement"
  done
  du -sh "$WHEELS"
}

with_tensorrt_libs() {  # onnxruntime's TensorRT provider dlopens libnvinfer: point it at the pip wheel's copy
  local libs
  libs="$("$PY" -c 'import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))' 2>/dev/null || true)"
  if [[ -n "$libs" ]]; then
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
}

run_check() {  # leaves the Python side 30 s inside the phase limit to stop the server and write its report
  with_tensorrt_libs
  "$PY" bench/gpu_check.py run --out "$OUT_DIR" --budget "$(( ${PHASE_LIMIT:-300} - 30 ))"
}

run_pytest() {
  with_tensorrt_libs
  "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT_DIR/gpu_check_pytest.log"
}

case "${1:-}" in
  --phase) "$2"; exit $? ;;  # one phase, run by `phase` below under its own timeout
  --download-wheels) download_wheels "${2:-}"; exit 0 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--download-wheels [--with-gpu-wheels]]" >&2; exit 2 ;;
esac

phase "environment" 60 environment
phase "install missing packages" 240 install_missing
phase "install nereid" 90 install_project
run_limit=$(( $(left) - 150 ))  # keep 150 s for pytest
(( run_limit > 330 )) && run_limit=330
phase "build, serve, compare and time the engine paths" "$run_limit" run_check
phase "pytest tests/gpu" 180 run_pytest

{
  echo
  echo "=== Summary ($(( $(date +%s) - START ))s of ${BUDGET}s) ==="
  printf '%s\n' "${SUMMARY[@]}"
  if [[ -f "$OUT_DIR/gpu_check_report.txt" ]]; then echo "report: $OUT_DIR/gpu_check_report.txt"; fi
} | tee "$OUT_DIR/gpu_check_summary.txt"
exit "$FAILED"
