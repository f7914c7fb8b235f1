#!/usr/bin/env bash
# Installs everything lorakeep needs on Debian 12 (bookworm), idempotently:
# Debian packages that are missing (one `apt-get update`, only if something
# is missing), the example's pretrained model in build/models, then the
# test-time Python peers (safetensors, PEFT, transformers) in a venv inside
# the build tree.
#
#   scripts/install-deps.sh [BUILD_DIR]                (default: ./build)
#   scripts/install-deps.sh --demo [BUILD_DIR]         what scripts/demo.sh needs:
#       the Debian packages and the model, not the Python peers
#   scripts/install-deps.sh --torch=2.15 [BUILD_DIR]   also LibTorch 2.15, from the
#       PyPI wheel torch==2.15.0 (CUDA 13; about 5 GB with its nvidia-* wheels),
#       in BUILD_DIR/torch-2.15, a venv of its own: only its LibTorch is used
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=$root/build
torch=""
demo=0
for arg in "$@"; do
  case $arg in
    --demo) demo=1 ;;
    --torch=2.15) torch=2.15.0 ;;
    --torch=*) echo "install-deps: LibTorch ${arg#--torch=} is not one this script installs (2.15)" >&2; exit 2 ;;
    -*) echo "usage: scripts/install-deps.sh [--demo | --torch=2.15] [BUILD_DIR]" >&2; exit 2 ;;
    *) build_dir=$arg ;;
  esac
done

packages=(
  # toolchain
  build-essential cmake ninja-build ccache clang libclang-rt-14-dev clang-format
  # the library's dependencies
  libtorch-dev libyaml-cpp-dev libspdlog-dev libboost-filesystem-dev nlohmann-json3-dev libxxhash-dev
  libcli11-dev catch2
  # OpenBLAS: without it Debian's LibTorch multiplies matrices with the
  # reference BLAS, twenty times slower
  libopenblas0-openmp
  # tests, benchmarks and the example: Python peers, /usr/bin/time, the texts the example trains on
  python3 python3-venv python3-numpy python3-torch time fortunes
  # gloo's headers: the data-parallel example averages gradients with c10d's
  # ProcessGroupGloo (Debian's LibTorch has gloo built in, its headers apart)
  libgloo-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  echo "install-deps: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The pretrained model of the BERT example (all-MiniLM-L6-v2, 83 MB), in
# build/models/: the demo fine-tunes it; the tests compare it with Hugging Face.
"$root/scripts/fetch-minilm.sh" "$build_dir"
if ((demo)); then exit 0; fi

# The reference safetensors implementation, for tests and benchmarks only.
# --system-site-packages lets it see Debian's torch and numpy (python3-torch is
# built against that numpy). Every build's tests use this one venv.
venv=$build_dir/venv
if [[ ! -x $venv/bin/python ]]; then
  mkdir -p "$build_dir"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if ! "$venv/bin/python" -c "import safetensors, numpy" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "safetensors==0.8.0" numpy
fi
# PEFT and transformers as peers too: PEFT must load our adapters, and
# transformers' TrainerState must read our trainer_state.json. Pinned to the
# last releases that run on Debian's torch 1.13, without their dependency
# resolution (which would replace that torch).
if ! "$venv/bin/python" -c "import peft, transformers" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "peft==0.10.0" "transformers==4.38.2" "accelerate==0.27.2" "huggingface_hub==0.20.3" "tokenizers==0.15.2" \
    "tqdm==4.66.2" "regex==2023.12.25" "filelock==3.13.1" "pyyaml==6.0.1" "requests==2.31.0" "packaging==23.2" \
    "psutil==5.9.8" "fsspec==2024.2.0" "typing_extensions==4.9.0" "charset_normalizer==3.3.2" "idna==3.6" \
    "urllib3==2.2.1" "certifi==2024.2.2"
fi

# LibTorch 2.15 from its PyPI wheel, in a venv of its own (it must not replace
# the peers' torch 1.13). Nothing imports it: the build uses its headers,
# libraries and share/cmake/Torch, and its nvidia-* wheels.
if [[ -n $torch ]]; then
  tvenv=$build_dir/torch-${torch%.*}
  if [[ ! -x $tvenv/bin/python ]]; then
    /usr/bin/python3 -m venv "$tvenv"
  fi
  if [[ $("$tvenv/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null) != "$torch" ]]; then
    echo "install-deps: installing torch==$torch into $tvenv (about 5 GB)"
    "$tvenv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "torch==$torch"
  fi
fi
