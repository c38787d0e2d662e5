#!/usr/bin/env bash
# Sets up and runs the miner on a fresh machine: installs the build tools and the SmolLM2 model,
# builds, and serves it in --dev mode (ephemeral hotkey, no wallet, no chain) on port 8000.
# Then, from another shell:  cargo run --release -- probe http://127.0.0.1:8000
#
# A GPU host: the CUDA build (--features cuda) is chosen when `nvcc` is on PATH (the CUDA toolkit;
# the driver alone cannot compile llama.cpp's kernels), or asked for with --cuda (which fails
# without nvcc rather than building for the CPU). --cpu builds for the CPU whatever is installed.
# Any other arguments go to the miner.
set -euo pipefail
cd "$(dirname "$0")/.."
features=auto
args=()
for arg in "$@"; do
  case "$arg" in
    --cuda) features=cuda ;;
    --cpu) features=cpu ;;
    *) args+=("$arg") ;;
  esac
done
if [ "$features" = auto ]; then
  if command -v nvcc >/dev/null 2>&1; then features=cuda; else features=cpu; fi
fi
if [ "$features" = cuda ] && ! command -v nvcc >/dev/null 2>&1; then
  echo "[quickstart] --cuda: nvcc is not on PATH; install the CUDA toolkit (or add /usr/local/cuda/bin to PATH)" >&2
  exit 1
fi
cargo_features=()
if [ "$features" = cuda ]; then
  cargo_features=(--features cuda)
  echo "[quickstart] nvcc found: building with --features cuda (all layers on the GPU)"
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo "[quickstart] a GPU is present but nvcc is not on PATH: building for the CPU; install the CUDA toolkit or pass --cuda" >&2
else
  echo "[quickstart] building for the CPU (no nvcc); pass --cuda on a GPU host with the CUDA toolkit"
fi
if [ -n "${QUICKSTART_DRY_RUN:-}" ]; then
  # Tests: say what would be built and stop.
  echo "cargo build --release ${cargo_features[*]:-}"
  exit 0
fi
scripts/install.sh
export PATH="$HOME/.cargo/bin:$PATH"
export MODEL_PATH="${MODEL_PATH:-${LOOSH_MODEL_DIR:-$HOME/.cache/loosh-miner/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
exec cargo run --release "${cargo_features[@]}" -- --dev "${args[@]}"
