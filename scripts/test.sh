#!/usr/bin/env bash
# Sets up, builds and runs the tests: the README's test command, and what CI
# runs (.ci/run).
#
#   scripts/test.sh              everything but the [slow] tests
#   scripts/test.sh --slow       the [slow] tests too (the 200-kill crash trials)
#   scripts/test.sh --sanitize   the whole suite built with ASan + UBSan, in build-asan/
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
slow=0
sanitize=0
for arg in "$@"; do
  case $arg in
    --slow) slow=1 ;;
    --sanitize) sanitize=1 ;;
    *) echo "usage: scripts/test.sh [--slow] [--sanitize]" >&2; exit 2 ;;
  esac
done

build=$root/build
cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
if ((sanitize)); then
  build=$root/build-asan
  cmake_args+=(-DLORAKEEP_SANITIZE=ON -DLORAKEEP_PYTHON="$root/build/venv/bin/python")
fi

"$root/scripts/install-deps.sh" "$root/build"

cmake -S "$root" -B "$build" -G Ninja "${cmake_args[@]}" > /dev/null
cmake --build "$build" -j "$(nproc)"

ctest_args=(--test-dir "$build" -j "$(nproc)" --output-on-failure --timeout 1800)
exclude=()
if ((!slow)); then exclude+=(slow); fi
if ((sanitize)); then exclude+=(tool); fi  # build checks (package, benchmarks, fuzzers) need no second run
if ((${#exclude[@]})); then ctest_args+=(-LE "$(IFS='|'; echo "${exclude[*]}")"); fi
if ((sanitize)); then
  # LibTorch is not built with ASan: its allocator and OpenMP threads leak by
  # design, so leak checking would only report LibTorch.
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1
fi
ctest "${ctest_args[@]}"
