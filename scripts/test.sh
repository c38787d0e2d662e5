#!/usr/bin/env bash
# Runs the whole test suite: unit tests, protocol vectors, actor-graph integration tests, the
# OpenAI-compatible worker against llama-cpp-python's server, the Python validator interop test,
# and, where the shared chain kit is present (../shared/chain), the chain tests against a real
# subtensor runtime, which this script starts and stops. llama.cpp's threads spin-wait, so tests run
# one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

kit="${LOOSH_SHARED_DIR:-../shared}/chain/start-chain.sh"
if [ -z "${LOOSH_TEST_CHAIN_URL:-}" ] && [ -f "$kit" ]; then
  port="${LOOSH_TEST_CHAIN_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  started="$(bash "$kit" "$port")" || { echo "[test] the chain kit failed to start" >&2; exit 1; }
  read -r url pid <<<"$started"
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  export LOOSH_TEST_CHAIN_URL="$url"
  echo "[test] local subtensor chain at $url (pid $pid)"
elif [ -z "${LOOSH_TEST_CHAIN_URL:-}" ]; then
  echo "[test] no chain kit at $kit: the chain tests will skip"
fi

cargo test --release --workspace -- --test-threads=1
