#!/usr/bin/env bash
# Packs .gpu/ for a GPU machine with the benchmarks too: the shared recipe (../shared/gpu/pack.sh)
# packs the miner, `loosh-miner`; this adds `loosh-bench`, built the same way (llama.cpp as shared
# libraries, which device.sh rebuilds with CUDA there) into the same target directory.
# usage (project root): scripts/gpu-pack.sh [extra cargo args for both, e.g. --features test-hooks]
# then: GPU_LOG_DIR=$OUT bash .gpu/device.sh "bash $PWD/scripts/gpu-bench.sh" (run with carry [".gpu"])
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${GPU_RECIPE:-../shared/gpu/pack.sh}
"$recipe" "$@"
export PATH="$HOME/.cargo/bin:$PATH"
target=${GPU_TARGET_DIR:-$HOME/.cache/loosh-miner/target-dynamic}
CARGO_TARGET_DIR=$target cargo build --release -p loosh-bench --features llama-cpp-2/dynamic-link "$@"
strip -o .gpu/loosh-bench "$target/release/loosh-bench" && xz -T0 -6 -f .gpu/loosh-bench
du -sh .gpu
