#!/usr/bin/env bash
# Build the wheel, install it in a clean venv, and serve a model from outside the source tree:
# this catches files that an editable install would hide (unlisted packages, missing data).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

.venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . 2>/dev/null \
  || .venv/bin/pip wheel -q --no-deps -w "$work/dist" .
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/dist/nereid-*.whl
mkdir -p "$work/repo"
cp -r "$root/model_repository/add_sub" "$root/model_repository/preprocess" "$work/repo/"

cd "$work"
"$work/venv/bin/nereid" serve --model-repository "$work/repo" --http-address 127.0.0.1 \
  --http-port 0 --grpc-port 0 --metrics-port 0 >"$work/log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 120); do
  port=$(sed -n 's/.*started http service at 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/log" | head -n 1)
  [ -n "$port" ] && break
  sleep 0.5
done
[ -n "$port" ] || { cat "$work/log"; echo "wheel smoke: the server never started"; exit 1; }

ones='[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]'
body="{\"inputs\":[{\"name\":\"INPUT0\",\"shape\":[1,16],\"datatype\":\"FP32\",\"data\":$ones},
       {\"name\":\"INPUT1\",\"shape\":[1,16],\"datatype\":\"FP32\",\"data\":$ones}]}"
out=$(curl -sf "http://127.0.0.1:$port/v2/models/add_sub/infer" -d "$body")
echo "$out" | grep -q '"data":\[2.0,2.0' || { echo "wheel smoke: unexpected add_sub reply: $out"; exit 1; }
text='{"inputs":[{"name":"TEXT","shape":[1,1],"datatype":"BYTES","data":["  Hello   WORLD "]}]}'
out=$(curl -sf "http://127.0.0.1:$port/v2/models/preprocess/infer" -d "$text")
echo "$out" | grep -q '"hello world"' || { echo "wheel smoke: unexpected preprocess reply: $out"; exit 1; }
curl -sf "http://127.0.0.1:$port/status/status.js" | grep -q textContent \
  || { echo "wheel smoke: the status page's script is missing from the wheel"; exit 1; }
kill -TERM "$pid"
wait "$pid"
pid=""
echo "wheel smoke: the installed wheel serves ONNX and Python-backend models"
