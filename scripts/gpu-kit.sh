#!/usr/bin/env bash
# Packs the Debian 12 (bookworm, amd64) packages that lorakeep's library
# needs to build, for a GPU machine without package access
# (scripts/gpu-check.sh unpacks them with `dpkg -x` into a private prefix).
# Runs on a Debian 12 machine with apt: `apt-get download` only, nothing is
# installed. The kit is one folder: the .deb files and MANIFEST.sha256
# (`sha256sum` format; gpu-check.sh verifies it before unpacking).
#
#   scripts/gpu-kit.sh [--out DIR] [--limit-bytes N]   (default: build/gpu-kit, ignored by git; 16000000)
#
# The library alone needs no CLI11 and no Catch2 (tests, CLI and benchmarks
# stay off in gpu-check.sh); LibTorch comes from the GPU machine's Python
# torch. Fails if the kit exceeds LIMIT_BYTES (16 MB; it is about 12 MB, most
# of it Boost's headers).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/build/gpu-kit
LIMIT_BYTES=$((16 * 1000 * 1000))
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --limit-bytes) LIMIT_BYTES=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "usage: scripts/gpu-kit.sh [--out DIR] [--limit-bytes N]" >&2; exit 2 ;;
  esac
done

# The -dev packages (headers, CMake packages, .so links) and their runtime
# libraries, exactly: `apt-get download` resolves no dependencies, and the
# -dev packages' other Depends (catch2, libstdc++-12-dev) are not needed.
packages=(
  libyaml-cpp-dev libyaml-cpp0.7
  libspdlog-dev libspdlog1.10
  libfmt-dev libfmt9
  libboost1.74-dev                                   # headers and BoostConfig.cmake
  libboost-filesystem1.74-dev libboost-filesystem1.74.0
  libboost-system1.74-dev libboost-system1.74.0      # Boost::filesystem's CMake package needs boost_system's
  nlohmann-json3-dev
  libxxhash-dev libxxhash0
)

if ! command -v apt-get >/dev/null || [[ $(dpkg --print-architecture 2>/dev/null) != amd64 ]]; then
  echo "gpu-kit: needs apt-get on Debian 12 amd64" >&2
  exit 1
fi
if [[ -r /etc/os-release ]] && ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
  echo "gpu-kit: warning: this is not Debian 12 (bookworm); the kit would hold this release's packages" >&2
fi

mkdir -p "$out"
rm -f "$out"/*.deb "$out/MANIFEST.sha256"
(cd "$out" && apt-get download -q "${packages[@]}")

total=$(cat "$out"/*.deb | wc -c)
count=$(ls "$out"/*.deb | wc -l)
if ((count != ${#packages[@]})); then
  echo "gpu-kit: expected ${#packages[@]} .deb files, got $count" >&2
  exit 1
fi
(cd "$out" && sha256sum -- *.deb >MANIFEST.sha256)
{
  echo "# lorakeep gpu-kit: Debian 12 amd64 packages for scripts/gpu-check.sh"
  echo "# made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "# $count files, $total bytes"
  for f in "$out"/*.deb; do echo "# $(dpkg-deb -f "$f" Package) $(dpkg-deb -f "$f" Version)"; done
} >"$out/README.txt"
echo "gpu-kit: $count packages, $total bytes ($(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1e6 }') MB;" \
  "limit $((LIMIT_BYTES / 1000000)) MB) in $out"
if ((total > LIMIT_BYTES)); then
  echo "gpu-kit: the kit is larger than the limit of $LIMIT_BYTES bytes" >&2
  exit 1
fi
echo "gpu-kit: carry it to the GPU machine with the source tree, e.g."
echo "  git archive --prefix=lorakeep/ -o lorakeep-gpu.tar HEAD && tar rf lorakeep-gpu.tar --transform 's,^,lorakeep/,' build/gpu-kit"
echo "then there: tar xf lorakeep-gpu.tar && lorakeep/scripts/gpu-check.sh --json gpu.json"
