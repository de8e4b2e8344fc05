#!/usr/bin/env bash
# Install Triton's perf_analyzer for `deepserve bench --perf-analyzer` and `deepserve bench --suite classifiers`.
#
#   usage (as root for the apt step): bash deepserve/bench/tools/install_perf_analyzer.sh [VENV]   default .pa-venv
#
# Why this way: the PyPI perf-analyzer wheels need glibc 2.38 and pip on Debian 12 (glibc 2.36)
# quietly installs a 0.1.0 placeholder instead; tritonclient 2.51's manylinux1 wheel bundles a
# perf_analyzer binary that runs here. It pins protobuf < 5, so it gets its own venv, and it needs
# libb64 (Debian) and libcudart (pip), the latter even for HTTP. deepserve/bench/perf_analyzer.py
# finds .pa-venv/bin/perf_analyzer and puts the libcudart folder on LD_LIBRARY_PATH itself.
set -euo pipefail
VENV=${1:-.pa-venv}
PY=${PYTHON:-python3.11}
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  apt-get install -y -q --no-install-recommends libb64-0d >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends libb64-0d >/dev/null; }
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q 'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12
CUDART=$(echo "$VENV"/lib/python3.11/site-packages/nvidia/cuda_runtime/lib)
LD_LIBRARY_PATH="$CUDART" "$VENV/bin/perf_analyzer" --version
