# syntax=docker/dockerfile:1
# deepserve: one image that serves the model store over HTTP (8000) and gRPC (8001).
#
#   GPU (default):  docker build -t REGISTRY/deepserve:0.1.0 .
#   CPU:            docker build --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg SERVE_EXTRA=serve \
#                     -t REGISTRY/deepserve:0.1.0-cpu .
#   Own store:      --build-arg BAKE_STORE=0, then mount a model store at /models (read-only is enough)
#
# Stages: `build` makes a self-contained Python 3.11 and the runtime venv, which holds only what
# serving ONNX models needs (no torch); `store` trains and exports the default model store in a venv
# of its own (torch, training and export code); the final stage copies the interpreter, the runtime
# venv and the store onto the runtime base image, so no pip cache, uv, sources, tests or torch end
# up in it.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG BUILD_IMAGE=ubuntu:24.04

# ---------------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
# the runtime venv's extra, exactly one ONNX Runtime: `gpu` (onnxruntime-gpu + NVML) or `serve` (CPU)
ARG SERVE_EXTRA=gpu
# python-build-standalone from uv: Ubuntu 24.04 ships 3.12, the image runs 3.11 (what CI tests
# with torch), and this interpreter has no system library dependencies beyond glibc, so it runs
# on any base image
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deepserve/ deepserve/
# Serving needs no torch: the build fails if a dependency pulls it (or the training stack) in.
# `python -I`: without it the source tree in /src would shadow the installed package.
RUN uv pip install ".[${SERVE_EXTRA},tracing]" \
    && python -I -c "import importlib.util as u, sys; \
bad = [m for m in ('torch', 'sklearn', 'matplotlib', 'onnx') if u.find_spec(m)]; \
sys.exit(f'the runtime venv must not hold {bad}' if bad else 0)" \
    && python -I -c "import deepserve.service.__main__, onnxruntime"

# ---------------------------------------------------------------------------------------------
FROM build AS store
# 1: train + export the default models into /models at build time; 0: an empty /models to mount over
ARG BAKE_STORE=1
# the store trains on the build machine's CPU: torch's CPU build, in a venv that stays in this stage
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/store-venv \
    PATH=/opt/store-venv/bin:$PATH
# torch first from its own index, so the project's `torch==2.13.0` pin is already satisfied
# (2.13.0+cpu matches it) and uv does not replace it with the CUDA wheel from PyPI
RUN mkdir -p /models \
    && if [ "${BAKE_STORE}" = "1" ]; then \
         uv venv --python 3.11 /opt/store-venv \
         && uv pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
         && uv pip install ".[serve,train,export,minilm]" \
         && deepserve store build --store /models; \
       fi

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG UID=10001
LABEL org.opencontainers.image.title="deepserve" \
      org.opencontainers.image.description="KServe v2 (HTTP + gRPC), TorchServe- and OpenAI-style model server" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${UID}" deepserve \
    && useradd --system --uid "${UID}" --gid deepserve --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin deepserve
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# root-owned and read-only for the server user: a compromised server cannot rewrite its models
COPY --from=store /models /models
# the source revision, shown by deepserve_build_info: docker build --build-arg REVISION=$(git rev-parse HEAD)
ARG REVISION=""
LABEL org.opencontainers.image.revision="${REVISION}"
# caches go to /tmp (an emptyDir in k8s): the root filesystem is read-only there
ENV PATH=/opt/venv/bin:$PATH \
    DEEPSERVE_REVISION=${REVISION} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    DEEPSERVE_MODEL_STORE=/models \
    DEEPSERVE_HOST=0.0.0.0 \
    DEEPSERVE_HTTP_PORT=8000 \
    DEEPSERVE_GRPC_PORT=8001
# numeric, so Kubernetes can verify runAsNonRoot against the image
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001
# no curl in the image: the standard library asks the readiness endpoint (non-2xx raises, exit 1)
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DEEPSERVE_HTTP_PORT', '8000') + '/v2/health/ready', timeout=4)"]
ENTRYPOINT ["deepserve", "serve"]
