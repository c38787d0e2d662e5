#!/usr/bin/env bash
# Runs the whole test suite: unit tests, protocol vectors, actor-graph integration tests and the
# Python validator interop test. llama.cpp's threads spin-wait, so tests run one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --release --workspace -- --test-threads=1
