#!/usr/bin/env bash
# Sets up, builds and runs the tests: the README's test command, and what CI
# runs (.ci/run).
#
#   scripts/test.sh               Debian's LibTorch 1.13 (C++17), in build/: every test but the [slow] ones
#   scripts/test.sh --torch=2.15  LibTorch 2.15 from its PyPI wheel (C++20, CUDA path on), in build-2.15/
#   scripts/test.sh --sanitize    LibTorch 1.13 with ASan + UBSan, in build-asan/
#   scripts/test.sh --slow        the [slow] tests too (the 200-kill crash trials)
#
# Tests labelled "expensive" (kill trials, example runs) and "tree" (checks
# of the source tree, not of a build) run in the default pass only; the other
# passes leave them out. Those labelled "peers" (PEFT, transformers,
# safetensors, tokenizers) run in the 1.13 pass against the last releases on
# Debian's torch 1.13 (build/venv) and in the 2.15 pass against today's, on
# the wheel's torch (build/torch-2.15); not in the sanitizer pass.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
slow=0
sanitize=0
torch=1.13
for arg in "$@"; do
  case $arg in
    --slow) slow=1 ;;
    --sanitize) sanitize=1 ;;
    --torch=1.13 | --torch=2.15) torch=${arg#--torch=} ;;
    *) echo "usage: scripts/test.sh [--torch=1.13|2.15] [--sanitize] [--slow]" >&2; exit 2 ;;
  esac
done
if ((sanitize)) && [[ $torch != 1.13 ]]; then
  echo "scripts/test.sh: the sanitizer pass builds against LibTorch 1.13" >&2
  exit 2
fi

# build/'s configuration, shared with scripts/demo.sh; the other passes add
# to it.
source "$root/scripts/cmake-args.sh"
exclude=()
if ((!slow)); then exclude+=(slow); fi
build=$root/build
install_args=("$root/build")
if [[ $torch == 2.15 ]]; then
  build=$root/build-2.15
  install_args+=(--torch=2.15)
  cmake_args+=("-DCMAKE_PREFIX_PATH=$root/build/torch-2.15/lib/python3.11/site-packages/torch/share/cmake"
              "-DLORAKEEP_PYTHON=$root/build/torch-2.15/bin/python")
  exclude+=(expensive tree)
fi
if ((sanitize)); then
  build=$root/build-asan
  # -O1, as AddressSanitizer's documentation advises: under ASan + UBSan, -O2
  # makes each translation unit 30-60% slower to compile (nlohmann/json's
  # and LibTorch's templates) for tests that spend their time in LibTorch.
  # The benchmarks' tests are left out of this pass, so they are not built.
  cmake_args+=(-DLORAKEEP_SANITIZE=ON "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" -DLORAKEEP_BUILD_BENCH=OFF)
  exclude+=(expensive tool peers)  # build checks (package, benchmarks, fuzzers) need no second run
fi

"$root/scripts/install-deps.sh" "${install_args[@]}"
# The GPU check's Debian packages, for its --no-gpu build (ctest gpu_check_no_gpu).
if [[ $torch == 2.15 && ! -f $root/build/gpu-kit/MANIFEST.sha256 ]]; then "$root/scripts/gpu-kit.sh"; fi

configure_log=$(mktemp)
if ! cmake -S "$root" -B "$build" "${cmake_args[@]}" > "$configure_log" 2>&1; then
  cat "$configure_log"
  exit 1
fi
grep "^-- lorakeep:" "$configure_log"  # the LibTorch version, and whether the CUDA path is built
rm -f "$configure_log"
cmake --build "$build" -j "$(nproc)"

ctest_args=(--test-dir "$build" -j "$(nproc)" --output-on-failure --timeout 1800)
if ((${#exclude[@]})); then ctest_args+=(-LE "$(IFS='|'; echo "${exclude[*]}")"); fi
if ((sanitize)); then
  # LibTorch is not built with ASan: its allocator and OpenMP threads leak by
  # design, so leak checking would only report LibTorch.
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1
fi
ctest "${ctest_args[@]}"
