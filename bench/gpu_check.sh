#!/usr/bin/env bash
# The GPU check: one call on a machine with one GPU proves the GPU path and writes its page.
#
#   bash bench/gpu_check.sh                      # GPU: own venv (CUDA torch + `gpu` extra), ~8 min
#   bash bench/gpu_check.sh --find-links WHEELS  # the same, offline, from a folder of wheels
#   bash bench/gpu_check.sh --cpu --no-venv      # dry run of every step on the CPU, tiny sizes (CI)
#   options: --store DIR (a store with digits-cnn [and minilm]: no build), --out DIR, --keep
#
# Steps: 1 venv, 2 environment (GPU, providers), 3 the `gpu`-marked tests, 4 a model store
# (digits-cnn, minilm), 5 the server started twice: the TensorRT engine cache must be filled by
# the first start and hit by the second (faster load, same files), 6 `deepserve bench` sweep at
# 1/8/32 clients beside the in-process ceiling (digits-cnn; minilm fp16 at 128 tokens; the
# ResNet-50-shaped bench-resnet50 fp16 at 3x224x224, deepserve/bench/gpu_models.py), 7 the
# page: bench/results/gpu/REPORT.md + summary.json (--cpu: bench/out/gpu-check-cpu/, not a result).
#
# --cpu runs the same steps with tiny sizes and says which checks it skips because they need
# CUDA (the tests run only as a collection, the TensorRT cache check, minilm unless --store has it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=gpu MAKE_VENV=1 STORE="" OUT="" FIND_LINKS="" KEEP=0
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
CUDA_INDEX=${CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
# the TensorRT libraries onnxruntime-gpu's TensorRT provider loads (TensorRT 10 for ORT 1.31)
TENSORRT_PIP=${TENSORRT_PIP:-tensorrt-cu12-libs>=10,<11}

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --no-venv) MAKE_VENV=0 ;;
    --store) STORE=$2; shift ;;
    --out) OUT=$2; shift ;;
    --find-links) FIND_LINKS=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
# the work folder (venv, store, logs) goes on success unless --keep; a failure keeps it to read
cleanup() { local rc=$?; if [[ $rc == 0 && $KEEP == 0 ]]; then rm -rf "$WORK"; else echo "work files: $WORK"; fi; }
trap cleanup EXIT
if [[ $MODE == gpu ]]; then
  OUT=${OUT:-$ROOT/bench/results/gpu}
  DEVICE=cuda LEVELS=1,8,32 BENCH_TIME=(--duration 5 --warmup 1 --windows 2) MODELS=(digits-cnn minilm)
else
  OUT=${OUT:-$ROOT/bench/out/gpu-check-cpu}
  DEVICE=cpu LEVELS=1 BENCH_TIME=(--quick --duration 0.5 --warmup 0.2 --windows 1 --ceiling-batches 3)
  MODELS=(digits-cnn)
fi
mkdir -p "$OUT" "$WORK/raw"
export XDG_CACHE_HOME=$WORK/cache  # a fresh TensorRT engine cache (deepserve/handlers/trt_plan.py)
TRT_CACHE=$XDG_CACHE_HOME/deepserve/trt
SKIPPED="$WORK/skipped.txt"; : >"$SKIPPED"
T0=$SECONDS

step() { printf '\n== [%3ds] %s\n' $((SECONDS - T0)) "$*"; }
skip() { echo "SKIPPED: $*" | tee -a "$SKIPPED"; }
fail() { echo "gpu_check.sh: FAILED: $*" >&2; exit 1; }

step "1 venv"
if [[ $MAKE_VENV == 1 ]]; then
  python3 -m venv "$WORK/venv"
  PY=$WORK/venv/bin/python
  PIP=("$PY" -m pip install -q)
  [[ -n $FIND_LINKS ]] && PIP+=(--no-index --find-links "$FIND_LINKS")
  TORCH_INDEX=()  # the CUDA (or CPU) wheel of the pinned torch; from --find-links when offline
  [[ -z $FIND_LINKS ]] && TORCH_INDEX=(--index-url "$CUDA_INDEX")
  [[ -z $FIND_LINKS && $MODE == cpu ]] && TORCH_INDEX=(--index-url https://download.pytorch.org/whl/cpu)
  "${PIP[@]}" "$TORCH_PIN" "${TORCH_INDEX[@]}"
  if [[ $MODE == gpu ]]; then
    "${PIP[@]}" -e "$ROOT[gpu,train,export,bench,minilm]" "$TENSORRT_PIP" \
      pytest pytest-asyncio pytest-timeout httpx asgi-lifespan
  else
    "${PIP[@]}" -e "$ROOT[serve,train,export,bench]" pytest pytest-asyncio pytest-timeout httpx asgi-lifespan
  fi
else
  PY=${PYTHON:-$(command -v python)}
  echo "--no-venv: using $PY"
fi
DEEPSERVE=("$PY" -m deepserve)
# onnxruntime-gpu's TensorRT provider dlopens libnvinfer: the pip wheel's folder must be on the path
TRT_LIBS=$("$PY" -c 'import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))' 2>/dev/null || true)
[[ -n $TRT_LIBS ]] && export LD_LIBRARY_PATH=$TRT_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step "2 environment"
"$PY" - "$DEVICE" >"$WORK/env.json" <<'EOF'
import importlib.metadata as md, json, subprocess, sys
import onnxruntime as ort
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return ""
env = {"device": sys.argv[1], "providers": ort.get_available_providers(), "onnxruntime": ort.__version__,
       "onnxruntime_gpu": version("onnxruntime-gpu"), "torch": version("torch"), "gpu": ""}
try:
    env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                 "--format=csv,noheader"], capture_output=True, text=True, check=True).stdout.strip()
except (OSError, subprocess.CalledProcessError):
    pass
try:
    import torch
    env["torch_cuda"] = torch.cuda.is_available()
except ImportError:
    env["torch_cuda"] = False
print(json.dumps(env))
EOF
cat "$WORK/env.json"
if [[ $MODE == gpu ]]; then
  grep -q CUDAExecutionProvider "$WORK/env.json" || fail "onnxruntime has no CUDAExecutionProvider: is onnxruntime (CPU) installed beside onnxruntime-gpu?"
  grep -q TensorrtExecutionProvider "$WORK/env.json" || skip "TensorRT provider not in this onnxruntime: the engine-cache check cannot run"
fi

step "3 gpu-marked tests"
if [[ $MODE == gpu ]]; then
  (cd "$ROOT" && "$PY" -m pytest -q -m gpu tests/handlers -p no:cacheprovider --junitxml "$WORK/gpu-tests.xml") \
    | tee "$WORK/gpu-tests.txt" || fail "gpu tests (log: $WORK/gpu-tests.txt)"
else
  (cd "$ROOT" && "$PY" -m pytest -q -m gpu tests/handlers -p no:cacheprovider --collect-only) | tee "$WORK/gpu-tests.txt"
  grep -q "test_tensorrt_engine_cache_is_hit_on_the_second_start" "$WORK/gpu-tests.txt" \
    || fail "the TensorRT engine-cache test is not collected under -m gpu"
  skip "gpu tests only collected, not run: they need CUDA"
fi

step "4 model store"
QUICK=(); [[ $MODE == cpu ]] && QUICK=(--quick)
if [[ -z $STORE ]]; then
  STORE=$WORK/store
  "${DEEPSERVE[@]}" store build --store "$STORE" "${QUICK[@]}" --only "${MODELS[@]}"
fi
[[ -d $STORE/digits-cnn ]] || fail "$STORE has no digits-cnn (deepserve store build --only digits-cnn)"
if [[ $MODE == cpu && -d $STORE/minilm ]]; then MODELS+=(minilm); fi
[[ $MODE == cpu && ! " ${MODELS[*]} " =~ " minilm " ]] && skip "minilm: not built in --cpu (about 20 s); pass --store with one"
# the ResNet-50 shape is swept, not part of the two starts: its TensorRT engine is built by the
# sweep's own server (--cpu: bottlenecks at tiny widths, 32x32; bench-resnet50 in the page)
"$PY" -m deepserve.bench.gpu_models --store "$STORE" "${QUICK[@]}"
SWEEP_MODELS=("${MODELS[@]}" bench-resnet50)

step "5 two server starts (TensorRT engine cache)"
"$PY" - "$STORE" "$DEVICE" "$WORK" "$TRT_CACHE" "${MODELS[@]}" >"$WORK/starts.json" <<'EOF'
"""Start `deepserve serve` twice; per start: each model's load seconds and provider (from /metrics)."""
import json, os, re, socket, subprocess, sys, time, urllib.request
from pathlib import Path

store, device, work, trt_cache, models = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()

def start(n):
    port = free_port()
    env = os.environ | {"DEEPSERVE_DEVICE": device, "DEEPSERVE_LOAD_MODELS": json.dumps(models)}
    log = open(work / f"server-{n}.log", "w")
    cmd = [sys.executable, "-m", "deepserve", "serve", "--store", store, "--http-port", str(port),
           "--grpc-port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0, url = time.perf_counter(), f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"server start {n} exited with {proc.returncode}; log: {log.name}")
            if time.perf_counter() - t0 > 300:
                sys.exit(f"server start {n} not ready in 300 s; log: {log.name}")
            try:
                if urllib.request.urlopen(url + "/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        ready = time.perf_counter() - t0
        metrics = get(url + "/metrics")
    finally:
        proc.terminate()
        proc.wait(30)
    load = {m: float(v) for m, v in re.findall(r'deepserve_model_load_seconds\{model="([^"]+)",version="\d+"\} (\S+)', metrics)}
    provider = dict(re.findall(r'deepserve_model_provider_info\{device="[^"]+",model="([^"]+)",provider="([^"]+)",version="\d+"\} 1', metrics))
    files = sorted(str(p.relative_to(trt_cache)) for p in trt_cache.rglob("*") if p.is_file()) if trt_cache.is_dir() else []
    return {"ready_s": ready, "load_s": load, "provider": provider, "cache_files": files}

print(json.dumps([start(1), start(2)]))
EOF
TRT_LISTED=0; grep -q TensorrtExecutionProvider "$WORK/env.json" && TRT_LISTED=1
"$PY" - "$WORK/starts.json" "$MODE" "$SKIPPED" "$TRT_LISTED" <<'EOF' || fail "engine cache check (logs: $WORK/server-*.log)"
import json, sys
first, second = json.load(open(sys.argv[1]))
mode = sys.argv[2]
for model, provider in first["provider"].items():
    print(f"{model}: {provider}; load {first['load_s'][model]:.2f} s, then {second['load_s'][model]:.2f} s")
if not first["provider"]:
    sys.exit("no deepserve_model_provider_info series in /metrics")
trt = [m for m, p in first["provider"].items() if p == "TensorrtExecutionProvider"]
if mode == "cpu":
    assert all(p == "CPUExecutionProvider" for p in first["provider"].values()), first["provider"]
    open(sys.argv[3], "a").write("SKIPPED: TensorRT engine cache hit: needs CUDA and TensorRT\n")
    print("SKIPPED: TensorRT engine cache hit: needs CUDA and TensorRT")
elif sys.argv[4] == "0":  # recorded as skipped in step 2; the sweep still measures CUDA
    print("SKIPPED: TensorRT engine cache hit: this onnxruntime has no TensorRT provider")
elif not trt:
    sys.exit(f"no model runs on TensorRT: {first['provider']} (server-1.log says why)")
else:
    assert first["cache_files"], "the first start wrote no engine into the cache"
    assert second["cache_files"] == first["cache_files"], "the second start built new engines"
    slower = [m for m in trt if second["load_s"][m] >= first["load_s"][m]]
    assert not slower, f"second load not faster (engine cache missed?): {slower}"
    print(f"engine cache hit: {len(first['cache_files'])} files reused by the second start")
EOF

step "6 throughput sweep"
for model in "${SWEEP_MODELS[@]}"; do
  extra=()
  [[ $model == minilm ]] && extra=(--seq-len 128)
  if [[ $MODE == gpu && $model != digits-cnn ]]; then  # fp16 asked for, so a failed parity stops it
    extra+=(--precision fp16 --server-env "DEEPSERVE_MODELS={\"$model\":{\"precision\":\"fp16\"}}")
  fi
  "${DEEPSERVE[@]}" bench "$model" --store "$STORE" --device "$DEVICE" --server-env "DEEPSERVE_DEVICE=$DEVICE" \
    --protocol http --format binary --concurrency "$LEVELS" "${BENCH_TIME[@]}" "${extra[@]}" \
    --out "$WORK/raw/$model" >"$WORK/raw/$model.txt" 2>&1 || { tail -20 "$WORK/raw/$model.txt"; fail "bench $model"; }
  tail -3 "$WORK/raw/$model.txt"
done

step "7 results page"
"$PY" - "$MODE" "$WORK" "$OUT" "$SKIPPED" "${SWEEP_MODELS[@]}" <<'EOF'
import json, sys, time
from pathlib import Path
mode, work, out, skipped, models = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5:]
env = json.loads((work / "env.json").read_text())
starts = json.loads((work / "starts.json").read_text())
title = "GPU check" if mode == "gpu" else "GPU check: DRY RUN on the CPU (tiny sizes; no GPU figure)"
lines = [f"# {title}", "", f"Made by `bash bench/gpu_check.sh{' --cpu' if mode == 'cpu' else ''}` on "
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
         f"- GPU: {env['gpu'] or 'none'}; torch {env['torch']} (CUDA: {env['torch_cuda']}); "
         f"onnxruntime {env['onnxruntime']}, providers {', '.join(env['providers'])}", "",
         "## Engine cache: two starts", "", "| model | provider | 1st load s | 2nd load s |", "|---|---|---|---|"]
for m, p in starts[0]["provider"].items():
    lines.append(f"| {m} | {p} | {starts[0]['load_s'][m]:.2f} | {starts[1]['load_s'][m]:.2f} |")
lines += ["", f"Engine cache files after the first start: {len(starts[0]['cache_files'])}, after the second: "
          f"{len(starts[1]['cache_files'])}.", "", "## Throughput (HTTP, binary tensors)", "",
          "| model | clients | items/s | p50 ms | p99 ms | % of in-process ceiling | ceiling items/s (runtime) |",
          "|---|---|---|---|---|---|---|"]
summary = {"mode": mode, "env": env, "starts": starts, "sweep": {}}
for m in models:
    res = json.loads((work / "raw" / m / "results.json").read_text())
    ceiling = res.get("ceiling") or {}
    summary["sweep"][m] = [{"clients": r["level"], "items_per_s": r["items_per_s"], "p50_ms": r["latency"]["p50_ms"],
                            "p99_ms": r["latency"]["p99_ms"], "pct_of_ceiling": r.get("pct_of_ceiling")}
                           for r in res["results"]]
    for r in summary["sweep"][m]:
        pct = "" if r["pct_of_ceiling"] is None else f"{r['pct_of_ceiling']:.0f}%"
        lines.append(f"| {m} | {r['clients']:.0f} | {r['items_per_s']:,.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {pct} | {ceiling.get('items_per_s', 0):,.1f} ({ceiling.get('runtime', '')}) |")
skips = Path(skipped).read_text().splitlines()
lines += ["", "## Skipped", ""] + ([f"- {s.removeprefix('SKIPPED: ')}" for s in skips] or ["- nothing"])
out.mkdir(parents=True, exist_ok=True)
(out / "REPORT.md").write_text("\n".join(lines) + "\n")
(out / "summary.json").write_text(json.dumps(summary | {"skipped": skips}, indent=2) + "\n")
print(f"page: {out / 'REPORT.md'}")
EOF
step "done in $((SECONDS - T0)) s"
