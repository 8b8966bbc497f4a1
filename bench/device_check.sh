#!/usr/bin/env bash
# One command on a bare GPU machine that has its own Python, torch, transformers and
# sentence-transformers but no network: installs ragopt's other dependencies from the wheels that
# bench/device_wheels.sh put in .device/, prints the machine and the library versions, runs the
# `gpu` tests (tests/test_gpu.py), bench_models.py throughput on the whole autorag-ko set in a
# process of its own, bench_finetune.py gpu (training throughput), the 5 x 3 study without
# pruning and bench_encode_variants.py. Every Python warning is printed in full with its stack
# (bench/warnhook). Each step has a time limit, and all of them together DEVICE_CHECK_BUDGET
# seconds (default 450): one hang cannot eat the run. DEVICE_CHECK_STEPS (comma-separated step
# names, e.g. "throughput,finetune") runs only those steps after the install and the versions.
# Logs and JSON go to $OUT (the device tool brings it back), else bench/out/device-check.
#
#   bench/device_wheels.sh                          # here, once: wheels and data into .device/
#   bench/device_check.sh                           # there: carry .device
#   DEVICE_CHECK_STEPS=finetune bench/device_check.sh   # there: one step
#   bench/device_check.sh --cpu-smoke               # here: every step on a CPU with the tiny stand-in
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
mode=gpu
[[ ${1:-} == --cpu-smoke ]] && mode=cpu
python=${PYTHON:-python3}
out=${OUT:-$root/bench/out/device-check}
mkdir -p "$out"
budget=${DEVICE_CHECK_BUDGET:-450}
only=${DEVICE_CHECK_STEPS:-}
start=$SECONDS
exec > >(tee "$out/check.log") 2>&1
logger=$!
steps=()

# step NAME LIMIT LOG COMMAND...: run COMMAND (a shell function of this script too) with a time
# limit of LIMIT seconds or what is left of the budget, its output also in LOG unless LOG is -
step() {
    local name=$1 limit=$2 log=$3 left began rc
    shift 3
    if [[ -n $only && $name != install && $name != versions && ,$only, != *,$name,* ]]; then
        echo "=== $name: skipped (not in DEVICE_CHECK_STEPS=$only)"
        steps+=("$name: skipped")
        return
    fi
    left=$((budget - (SECONDS - start)))
    (( limit > left )) && limit=$left
    if (( limit < 15 )); then
        echo "=== $name: skipped (${left}s of the budget left)"
        steps+=("$name: skipped")
        return
    fi
    echo "=== $name (at most ${limit}s, $((SECONDS - start))s into the check)"
    began=$SECONDS
    if declare -F "$1" >/dev/null; then
        set -- bash -c "$(declare -f "$1"); $1"
    fi
    if [[ $log == - ]]; then
        timeout --signal=INT --kill-after=20 "$limit" "$@"
        rc=$?
    else
        timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    fi
    (( rc == 124 )) && echo "=== $name: stopped at its time limit of ${limit}s"
    steps+=("$name: exit $rc in $((SECONDS - began))s")
}

version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
device=${DEVICE_DIR:-$root/.device}
wheels=$device/wheels-cp$version
data=$device/data/autorag-ko
if [[ ! -d $wheels || ! -f $data/corpus.parquet ]]; then
    echo "no $wheels or $data: run bench/device_wheels.sh (--python-version for this Python) and carry .device"
    exit 2
fi
site=${DEVICE_SITE:-/tmp/ragopt-site}
record=${DEVICE_RECORD_SITE:-/tmp/ragopt-record}
work=$(mktemp -d /tmp/ragopt-bench.XXXX)
export python root mode device wheels site record

# Install the wheels of packages this Python lacks or has older, never over its own newer ones.
install() {
    local chosen
    chosen=$("$python" - "$wheels" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path

from packaging.version import Version

PINNED_TOGETHER = [{"pydantic", "pydantic_core"}, {"datasets", "dill", "multiprocess"}]
"""Packages that pin each other's exact versions: carried together or not at all."""

chosen = {}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or Version(have) < Version(version):
        chosen[name.lower()] = wheel
    else:
        print(f"this machine's {name} {have} is at least the carried {version}", file=sys.stderr)
for group in PINNED_TOGETHER:
    if group & set(chosen):
        chosen.update({w.name.split("-")[0].lower(): w for w in Path(sys.argv[1]).glob("*.whl")
                       if w.name.split("-")[0].lower() in group})
print("\n".join(str(w) for w in chosen.values()))
EOF
    ) || return 1
    echo "installing: $(echo "$chosen" | xargs -n1 basename 2>/dev/null | tr '\n' ' ')"
    rm -rf "$site" "$record"
    if [[ -n $chosen ]]; then
        # shellcheck disable=SC2086  # one wheel path per word
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" $chosen || return 1
    fi
    if compgen -G "$device/record-stack/*.whl" >/dev/null; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$record" \
            "$device"/record-stack/*.whl || return 1
    fi
}
step install 90 - install
export PYTHONPATH=$root/bench/warnhook:$site:$root${PYTHONPATH:+:$PYTHONPATH}
export PYTHONWARNINGS=always PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export RAGOPT_RECORD_STACK=$record

versions() {
    [[ $mode == gpu ]] && nvidia-smi
    "$python" - <<'EOF'
import importlib
import platform
from importlib import metadata

import torch

print(f"python {platform.python_version()} at {__import__('sys').executable}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
for name in ("transformers", "sentence-transformers", "FlagEmbedding", "tokenizers", "huggingface-hub", "safetensors",
             "accelerate", "peft", "datasets", "numpy", "scipy", "pandas", "pyarrow", "pydantic", "optuna", "bm25s",
             "SQLAlchemy", "pytest", "pytest-xdist"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name}: MISSING")
tested = {"transformers": "5.25.0", "sentence-transformers": "6.3.0"}
for name, version in tested.items():
    if metadata.version(name) != version:
        print(f"NOTE: {name} {metadata.version(name)} here; the tests and benchmarks were written against {version}")
modules = ["ragopt.study", "ragopt.serving.serve", "ragopt.serving.pipeline", "ragopt.stages.retrievers.dense", "ragopt.stages.retrievers.bge_m3",
           "ragopt.stages.retrievers.bm25", "ragopt.stages.rerankers.flag_reranker", "ragopt.stages.rerankers.cross_encoder",
           "ragopt.stages.rerankers.flag_llm_reranker", "ragopt.tune.train", "ragopt.tune.pool", "FlagEmbedding",
           "bench_models", "bench_encode_variants", "bench_finetune"]
__import__("sys").path.insert(0, "bench")
for module in modules:
    importlib.import_module(module)
print(f"imported: {', '.join(modules)}")
EOF
}
step versions 60 "$out/versions.txt" versions

if [[ $mode == gpu ]]; then
    tests=(-m gpu)
    throughput=(--archs xlmr-large --passages 720 --pairs 5700)
    finetune=()
    variants=()
    study=(--trials 200)
else  # the tiny stand-in and a few items: every code path, in a few minutes on two cores
    tests=(-m "gpu or not gpu")
    throughput=(--archs tiny-xlmr --passages 24 --pairs 48 --device cpu)
    finetune=(--arch tiny-xlmr --rows 32 --device cpu)
    variants=(--arch tiny-xlmr --passages 32 --pairs 64 --device cpu)
    study=(--study-arch tiny-xlmr --trials 3 --device cpu)
fi
step "gpu tests" 180 "$out/gpu-tests.log" "$python" -m pytest "${tests[@]}" -p no:cacheprovider -p no:warnings \
    -n 0 -s -rA tests/test_gpu.py
step throughput 180 - "$python" bench/bench_models.py throughput "${throughput[@]}" --batch-size 64 \
    --data "$data" --work "$work" --json "$out/throughput.json"
step finetune 150 - "$python" bench/bench_finetune.py gpu "${finetune[@]}" --data "$data" --json "$out/finetune.json"
step study 240 - "$python" bench/bench_models.py study "${study[@]}" --pruners none --data "$data" \
    --json "$out/study.json"
step variants 210 - "$python" bench/bench_encode_variants.py "${variants[@]}" --data "$data" --work "$work" \
    --json "$out/variants.json"
rm -rf "$work"

summary() {
    echo "=== steps (${budget}s budget, $((SECONDS - start))s used)"
    printf '  %s\n' "${steps[@]}"
    "$python" - "$out" <<'EOF'
import json
import sys
from pathlib import Path

import pandas as pd

pd.set_option("display.width", 250)
pd.set_option("display.max_colwidth", 120)
for name in ("throughput", "finetune", "variants", "study"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if path.exists():
        found = json.loads(path.read_text())
        rows = pd.DataFrame(found["rows"]).drop(columns=["stages"], errors="ignore")
        print(f"--- {name}\n{rows.to_string(index=False)}")
        for row in found["rows"]:
            if "stages" in row:
                print(pd.DataFrame(row["stages"]).to_string(index=False))
env = next((p for p in (Path(sys.argv[1]) / f"{n}.json" for n in ("throughput", "finetune")) if p.exists()), None)
if env is not None:
    print(f"--- environment\n{json.dumps(json.loads(env.read_text())['environment'])}")
EOF
}
summary 2>&1 | tee "$out/summary.txt"
exec >&- 2>&-
wait "$logger"
