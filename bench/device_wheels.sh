#!/usr/bin/env bash
# Prepares, on a machine with network, what bench/device_check.sh needs on a bare GPU machine that
# has its own Python, torch, transformers and sentence-transformers but no network: the wheels of
# the other packages ragopt, the gpu tests and the benchmarks import there, and the autorag-ko data
# the benchmarks read. Both go to .device/ (ignored by git), which the GPU run carries.
#
#   bench/device_wheels.sh                          # cp312 manylinux x86-64 wheels (the H200 machines)
#   bench/device_wheels.sh --python-version 3.11    # the same set for CPython 3.11 (to test the install here)
#   DEVICE_DIR=/tmp/x bench/device_wheels.sh        # somewhere else
#
# Only what those machines lack, one version each (two versions of one package stop the install).
# semchunk: the recursive and sentence chunkers, which ragopt.study imports. Left out on purpose:
# faiss-cpu (imported only above exact_search_max passages), kiwipiepy and its 80 MB model and
# python-mecab-ko (imported only by the kiwi and mecab BM25 tokenizers: the study benchmark uses
# whitespace and character bigrams), plotly (report.html only), and test-only packages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python_version=3.12
if [[ ${1:-} == --python-version ]]; then
    python_version=${2:?give a version, e.g. 3.11}
fi
device=${DEVICE_DIR:-$root/.device}
wheels=$device/wheels-cp${python_version/./}
record=$device/record-stack
data=$device/data/autorag-ko
source_data=${RAGOPT_AUTORAG_KO:-$root/../shared/data/autorag-ko}

# What the machine lacks (its package list: /work/.library/device/KINDS.md), pinned to the
# versions the tests pass with here. FlagEmbedding imports datasets (dill, multiprocess) at import;
# optuna needs alembic, Mako, SQLAlchemy and colorlog; pydantic its core and two small helpers,
# and typing-extensions >= 4.16 (installed there only where the machine's is older).
packages=(
    FlagEmbedding==1.4.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    bm25s==0.3.16 semchunk==4.1.1
    optuna==5.1.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 colorlog==6.12.0
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing-extensions==4.16.0
)
# The H100 record's transformers and sentence-transformers (bench/RESULTS.md, 2026-11-22), for one
# encoding variant of bench/bench_encode_variants.py run in a process of its own: whether the
# newer libraries alone explain the slower encoding. Pure-Python wheels, never installed over the
# machine's own.
record_packages=(transformers==5.23.0 sentence-transformers==6.2.0)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done

rm -rf "$wheels"
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp "${platforms[@]}" -d "$wheels" "${packages[@]}"
count=$(find "$wheels" -name '*.whl' | wc -l)
if (( count != ${#packages[@]} )); then
    echo "expected ${#packages[@]} wheels, got $count in $wheels" >&2
    exit 1
fi

rm -rf "$record"
mkdir -p "$record"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$record" "${record_packages[@]}"

if [[ ! -f $source_data/qa.parquet || ! -f $source_data/corpus.parquet ]]; then
    echo "no autorag-ko data at $source_data (set RAGOPT_AUTORAG_KO to its folder)" >&2
    exit 1
fi
mkdir -p "$data"
cp "$source_data/qa.parquet" "$source_data/corpus.parquet" "$data/"
chmod -R u+w "$device"

du -sh "$wheels" "$record" "$data"
echo "total to carry: $(du -sh "$device" | cut -f1) (the device tool carries 64 MiB with the working tree)"
