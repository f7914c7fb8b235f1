#!/usr/bin/env bash
# Installs everything lorakeep needs on Debian 12 (bookworm), idempotently:
# Debian packages that are missing (one `apt-get update`, only if something
# is missing), then the test-time Python peer (the reference `safetensors`
# package from PyPI) in a venv inside the build tree.
#
#   scripts/install-deps.sh [BUILD_DIR]     (default: ./build)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$root/build}

packages=(
  # toolchain
  build-essential cmake ninja-build ccache clang libclang-rt-14-dev
  # the library's dependencies
  libtorch-dev libyaml-cpp-dev libspdlog-dev libboost-filesystem-dev nlohmann-json3-dev libxxhash-dev
  libcli11-dev catch2
  # tests, benchmarks and the example: Python peers, /usr/bin/time, the texts the example trains on
  python3 python3-venv python3-numpy python3-torch time fortunes
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

# The reference safetensors implementation, for tests and benchmarks only.
# --system-site-packages lets it see Debian's torch and numpy (python3-torch is
# built against that numpy).
venv=$build_dir/venv
if [[ ! -x $venv/bin/python ]]; then
  mkdir -p "$build_dir"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if ! "$venv/bin/python" -c "import safetensors, numpy" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "safetensors==0.8.0" numpy
fi
