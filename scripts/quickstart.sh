#!/usr/bin/env bash
# Sets up and runs the miner on a fresh machine: installs the build tools and the SmolLM2 model,
# builds, and serves it in --dev mode (ephemeral hotkey, no wallet, no chain) on port 8000.
# Then, from another shell:  cargo run --release -- probe http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export PATH="$HOME/.cargo/bin:$PATH"
export MODEL_PATH="${MODEL_PATH:-${LOOSH_MODEL_DIR:-$HOME/.cache/loosh-miner/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
exec cargo run --release -- --dev "$@"
