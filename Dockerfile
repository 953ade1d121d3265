# syntax=docker/dockerfile:1
# Nereid's image. CPU (default):   docker build -t nereid:0.1.0 .
#                 GPU (CUDA torch, onnxruntime-gpu, TensorRT):
#   docker build -t nereid:0.1.0-gpu --build-arg EXTRAS=torch,gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Run:  docker run --rm -p 8000-8002:8000-8002 -v "$PWD/model_repository:/models:ro" nereid:0.1.0
# The model repository is read from /models (NEREID_MODEL_REPOSITORY); arguments after the image
# name are `nereid serve` flags (see `docker run --rm nereid:0.1.0 --help`).

ARG PYTHON_VERSION=3.11

# ---- build: a virtual environment with nereid and its extras, copied whole into the runtime ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EXTRAS=torch
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nereid
# torch first, from the CPU index by default, so nothing pulls the multi-GB CUDA build.
RUN /opt/nereid/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY backends ./backends
COPY proto ./proto
COPY ensembles ./ensembles
COPY clients ./clients
RUN /opt/nereid/bin/pip install ".[${EXTRAS}]"

# ---- runtime: slim Python, tini as PID 1 forwarding signals, an unprivileged user ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 nereid \
    && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin nereid
COPY --from=build /opt/nereid /opt/nereid
ENV PATH=/opt/nereid/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NEREID_MODEL_REPOSITORY=/models
USER 1000:1000
WORKDIR /tmp
# HTTP (KServe v2 + OpenAI), gRPC (h2c), Prometheus metrics.
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# SIGTERM starts the drain (readiness false, then listeners close after --drain-delay-secs,
# in-flight work bounded by --exit-timeout-secs); tini passes it to nereid unchanged.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "nereid", "serve"]
CMD []
