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
#       in BUILD_DIR/torch-2.15, a venv of its own, with today's PEFT and
#       transformers as that pass's peers
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
# the old peers' torch 1.13): the build uses its headers, libraries and
# share/cmake/Torch, and its nvidia-* wheels; that pass's peers import it.
if [[ -n $torch ]]; then
  tvenv=$build_dir/torch-${torch%.*}
  if [[ ! -x $tvenv/bin/python ]]; then
    /usr/bin/python3 -m venv "$tvenv"
  fi
  version() { "$tvenv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null; }
  if [[ $(version torch) != "$torch" ]]; then
    echo "install-deps: installing torch==$torch into $tvenv (about 5 GB)"
    "$tvenv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "torch==$torch"
  fi
  # Today's peers on that torch: the newest PEFT and transformers (they need
  # torch >= 2.6), with their whole closure pinned and no dependency
  # resolution, so that nothing replaces the torch above (about 51 MB).
  if [[ $(version peft) != 0.21.2 || $(version transformers) != 5.25.0 ]]; then
    echo "install-deps: installing peft 0.21.2 and transformers 5.25.0 into $tvenv"
    "$tvenv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      "peft==0.21.2" "transformers==5.25.0" "safetensors==0.8.0" "numpy==2.4.6" "accelerate==1.16.0" \
      "huggingface_hub==2.4.0" "tokenizers==0.23.3" "kernels==0.19.1" "hf-xet==1.8.0" "httpx2==2.17.0" \
      "httpcore2==2.17.0" "h11==0.16.0" "anyio==4.16.0" "idna==3.21" "truststore==0.10.5" "click==8.5.1" \
      "typer==0.29.2" "rich==15.0.0" "markdown-it-py==4.3.0" "mdurl==0.1.2" "Pygments==2.21.0" \
      "shellingham==1.5.4" "annotated-doc==0.0.7" "pydantic==2.14.4" "pydantic_core==2.50.5" \
      "annotated-types==0.8.0" "typing-inspection==0.4.5" "typing_extensions==4.16.0" "tomlkit==0.15.3" \
      "packaging==26.4" "PyYAML==6.0.4" "regex==2026.12.2" "tqdm==4.70.1" "psutil==7.2.2" "filelock==4.3.2" \
      "fsspec==2026.9.0"
    "$tvenv/bin/python" -m pip check --disable-pip-version-check >/dev/null
    if [[ $(version torch) != "$torch" ]]; then echo "install-deps: the peers replaced torch in $tvenv" >&2; exit 1; fi
  fi
fi
