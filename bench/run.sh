#!/usr/bin/env bash
# Builds lorakeep in Release and runs every benchmark side by side with its
# peers: writes its sections of bench/results.json (reloads, saves, merges,
# async saves, the reload onto a device with 1 MiB free;
# the others stay), then BENCHMARKS.md and bench/scaling.svg from all of them.
#
#   bench/run.sh                    the full matrix (about 18 minutes on 2 cores; device_reload 43 s of it)
#   bench/run.sh --sections merges  one section (or a comma list) alone
#   bench/run.sh --scale            the "scale" section alone (bench/scale.py, 17 to 19 minutes): merges of a
#                                   7B-shaped model, cold; needs 45 GB free (--work DIR elsewhere)
#   bench/run.sh --smoke            tiny sizes, results under build-release/bench-smoke
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh" "$root/build"
cmake -S "$root" -B "$root/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORAKEEP_BUILD_TESTS=OFF \
  -DLORAKEEP_BUILD_EXAMPLES=OFF > /dev/null
cmake --build "$root/build-release" -j "$(nproc)" --target lorakeep_bench lorakeep_device_bench lorakeep_cli

if [[ ${1:-} == --smoke ]]; then
  mkdir -p "$root/build-release/bench-smoke"
  exec python3 "$root/bench/run.py" --build "$root/build-release" --smoke --out "$root/build-release/bench-smoke"
fi
exec python3 "$root/bench/run.py" --build "$root/build-release" "$@"
