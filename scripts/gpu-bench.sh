#!/usr/bin/env bash
# The engine figures issue 8's goals ask for, in one run of under 4 minutes on a GPU machine:
# for each test model (m8p: peaked logits like a trained model, the headline; m8b: flat, the worst
# case), one challenge through the miner vs llama.cpp direct with argmax, one worker at 1 and 16
# challenges in flight vs llama.cpp's own batched decoding of as many sequences, the step-time
# split, first-token time with a cached 2,000-token system prompt; then `--dev` on the GPU,
# a probe, SIGTERM and the exit code (0 expected).
#
# On the GPU machine, from the project root after `scripts/gpu-pack.sh` (the miner and loosh-bench):
#   GPU_LOG_DIR=$PWD/gpu-logs bash .gpu/device.sh "bash $PWD/scripts/gpu-bench.sh"
# (device.sh runs it in the directory holding ./loosh-miner, m8b.gguf and m8p.gguf).
# On a CPU, to check the script itself: MINER=target/release/loosh-miner BENCH=target/release/loosh-bench
#   DEVICE=cpu MODELS="mid.gguf" QUICK=1 bash scripts/gpu-bench.sh
set -u
MINER=${MINER:-./loosh-miner}
BENCH=${BENCH:-./loosh-bench}
# device.sh unpacks the miner beside the models; the benchmarks come packed beside it.
packed="$(cd "$(dirname "$0")/.." && pwd)/.gpu/loosh-bench.xz"
if [ ! -x "$BENCH" ] && [ -f "$packed" ]; then xz -dc "$packed" >"$BENCH" && chmod +x "$BENCH"; fi
DEVICE=${DEVICE:-gpu0}
MODELS=${MODELS:-m8p.gguf m8b.gguf}
THREADS=${THREADS:-1}
LOG=${GPU_LOG_DIR:-.}/gpu-bench.log
mkdir -p "$(dirname "$LOG")"
# QUICK=1 shrinks every run (CPU check of the script).
if [ "${QUICK:-0}" = 1 ]; then RUNS=1 TOKENS=16 N1=2 N16=8 PAR=4; else RUNS=3 TOKENS=128 N1=12 N16=32 PAR=16; fi

say() { echo "== $*" | tee -a "$LOG"; }
run() { # run LIMIT_SECONDS command...: output to the log; a timeout or failure is reported, not fatal
  local limit=$1; shift
  echo "\$ $*" >>"$LOG"
  timeout "$limit" "$@" 2>&1 | grep -v '^\s*$' | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || say "exit $rc: $*"
}

say "$(date -u +%FT%TZ) device $DEVICE, threads $THREADS, models: $MODELS"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee -a "$LOG"
for m in $MODELS; do
  say "$m: one challenge, miner (top_p 0.95, temperature 0.7) vs llama.cpp direct (argmax)"
  run 90 "$BENCH" inference --model "$m" --device "$DEVICE" --threads "$THREADS" --runs "$RUNS" --max-tokens "$TOKENS"
  say "$m: one worker, 1 sequence, vs llama.cpp batched 1 sequence"
  run 60 "$BENCH" batching --model "$m" --device "$DEVICE" --threads "$THREADS" --parallel 1 --inflight 1 \
    --challenges "$N1" --max-tokens "$TOKENS"
  say "$m: one worker, $PAR challenges in flight, n_parallel $PAR, vs llama.cpp batched $PAR sequences"
  run 60 "$BENCH" batching --model "$m" --device "$DEVICE" --threads "$THREADS" --parallel "$PAR" --inflight "$PAR" \
    --challenges "$N16" --max-tokens "$TOKENS"
done
if "$BENCH" --help 2>/dev/null | grep -q sampling; then
  say "sampler cost per token, old vs new"
  run 60 "$BENCH" sampling
fi

first=${MODELS%% *}
say "--dev on $DEVICE with $first (automatic sizing), a probe, then SIGTERM: exit code 0 expected"
port=$((20000 + RANDOM % 20000))
MODEL_PATH=$first API_HOST=127.0.0.1 API_PORT=$port LLAMA_THREADS=$THREADS LOG_LEVEL=info \
  "$MINER" --dev >"${LOG%.log}-dev.log" 2>&1 &
pid=$!
# Ready once it listens and its worker has loaded the model (in either order).
for _ in $(seq 240); do
  grep -q "serving validators" "${LOG%.log}-dev.log" && grep -q "embedded worker ready" "${LOG%.log}-dev.log" && break
  sleep 0.5
done
grep -E "embedded worker ready|serving validators" "${LOG%.log}-dev.log" | tee -a "$LOG"
run 60 "$MINER" probe "http://127.0.0.1:$port" --max-tokens 16
kill -TERM "$pid"
wait "$pid"
code=$?
tail -n 3 "${LOG%.log}-dev.log" | tee -a "$LOG"
say "SIGTERM exit code: $code"
say "$(date -u +%FT%TZ) done"
