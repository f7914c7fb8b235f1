#!/usr/bin/env bash
# Developer check (not run by CI): does lorakeep still compile against a
# current LibTorch 2.x, with and without CUDA? The normal build uses Debian's
# LibTorch 1.13 (CPU only); this script syntax-checks every source file of
# src/ (recursively: src/cli, src/lora, ...) and the public headers against
# the headers of a 2.x wheel, then checks the CUDA-only code (cuda_stager.cpp
# and the LORAKEEP_WITH_CUDA parts of memory.cpp and transfer.cpp) against the
# same headers plus the CUDA toolkit's. No GPU and no linking are needed.
#
# Getting the headers (once; the default PyPI Linux wheel is the CUDA build,
# ~550-900 MB; nothing is installed into any Python environment):
#
#   pip download --no-deps torch==2.15.0 -d /tmp/torch2
#   mkdir -p /tmp/torch2/root
#   unzip -q /tmp/torch2/torch-2.15.0-*.whl 'torch/include/*' 'torch/share/cmake/*' \
#         'torch/version.py' -d /tmp/torch2/root
#
# Usage:
#   scripts/check-torch2.sh [TORCH_INCLUDE_ROOT]
#     TORCH_INCLUDE_ROOT  default $LORAKEEP_TORCH2_INCLUDE, else
#                         /tmp/torch2/root/torch/include; /usr/include checks
#                         against Debian's 1.13, CUDA parts included
#   env: CUDA_INCLUDE (default /usr/local/cuda/include), CXX (default g++),
#        CXX_STD (default c++17, or c++20 where the LibTorch headers demand
#        it, as 2.15's do), JOBS (default nproc), KEEP_LOGS=1 to keep
#        the per-file logs.
#
# Prints "pass"/"FAIL" per file and exits 1 if any file failed. Each
# file is also checked for headers taken from the system LibTorch
# (/usr/include/{ATen,c10,torch,caffe2}): that would mean the 2.x root lacks a
# header and the check silently fell back to 1.13, which counts as a failure.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch_root=${1:-${LORAKEEP_TORCH2_INCLUDE:-/tmp/torch2/root/torch/include}}
cuda_include=${CUDA_INCLUDE:-/usr/local/cuda/include}
cxx=${CXX:-g++}
jobs=${JOBS:-$(nproc)}

if [[ ! -f $torch_root/torch/csrc/api/include/torch/version.h ]]; then
  echo "error: no LibTorch headers under '$torch_root' (see the top of $0 for how to get them)" >&2
  exit 2
fi
version_headers=("$torch_root/torch/csrc/api/include/torch/version.h")
[[ -f $torch_root/torch/headeronly/version.h ]] && version_headers+=("$torch_root/torch/headeronly/version.h")
torch_version=$(sed -n 's/^#define TORCH_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
  "${version_headers[@]}" | paste -sd.)

# The language mode: lorakeep is C++17, but recent LibTorch headers (2.15's,
# for one) refuse anything older than C++20, and their TorchConfig.cmake adds
# cxx_std_20 to every consumer: a CMake build of lorakeep against them is a
# C++20 build.
if [[ -n ${CXX_STD:-} ]]; then
  std=$CXX_STD
elif grep -q 'C++20 or later compatible compiler is required' "$torch_root/ATen/ATen.h"; then
  std=c++20
else
  std=c++17
fi

work=$(mktemp -d /tmp/lorakeep-torch2.XXXXXX)
if [[ ${KEEP_LOGS:-0} != 1 ]]; then trap 'rm -rf "$work"' EXIT; fi

# lorakeep/version.h as CMake would generate it from cmake/version.h.in.
version=$(sed -n 's/^project(lorakeep VERSION \([0-9.]*\).*/\1/p' "$repo/CMakeLists.txt")
IFS=. read -r v_major v_minor v_patch <<<"$version"
mkdir -p "$work/include/lorakeep"
sed -e "s/@PROJECT_VERSION_MAJOR@/$v_major/" -e "s/@PROJECT_VERSION_MINOR@/$v_minor/" \
    -e "s/@PROJECT_VERSION_PATCH@/$v_patch/" -e "s/@PROJECT_VERSION@/$version/" \
    "$repo/cmake/version.h.in" >"$work/include/lorakeep/version.h"

# The public headers, through the one-include header.
printf '#include "lorakeep/lorakeep.h"\n' >"$work/public_headers.cpp"

# The wheel bundles its own fmt in its include root; it would shadow the
# system fmt that the system spdlog (and the libfmt lorakeep links) are built
# for, and spdlog fails to compile against the mismatch. Put the system fmt
# first, as a build against a LibTorch with a system fmt has it.
mkdir -p "$work/sysfmt"
if [[ -d /usr/include/fmt && -d $torch_root/fmt ]]; then ln -s /usr/include/fmt "$work/sysfmt/fmt"; fi

# Same definitions as the CMake build; torch's directories as -isystem and in
# the order of its TorchConfig.cmake (TORCH_INCLUDE_DIRS).
common=(-std="$std" -fsyntax-only -Wall -Wextra
        -DBOOST_ALL_NO_LIB -DFMT_SHARED -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DSPDLOG_SHARED_LIB
        -I"$repo/include" -I"$work/include" -I"$repo/src" -isystem "$work/sysfmt")
# /usr/include (Debian's 1.13, for comparison) must stay a plain system
# directory: as -isystem it would break libstdc++'s #include_next.
if [[ $torch_root != /usr/include ]]; then common+=(-isystem "$torch_root"); fi
common+=(-isystem "$torch_root/torch/csrc/api/include")
cuda=(-DLORAKEEP_WITH_CUDA=1 -isystem "$cuda_include")

# One job per line: "<label>\t<mode>\t<file>".
{
  while IFS= read -r f; do printf '%s\t%s\t%s\n' "${f#"$repo"/}" cpu "$f"; done \
    < <(find "$repo/src" -name '*.cpp' | sort)
  printf '%s\t%s\t%s\n' "include/lorakeep/lorakeep.h" cpu "$work/public_headers.cpp"
  for f in src/cuda_stager.cpp src/memory.cpp src/transfer.cpp; do
    printf '%s\t%s\t%s\n' "$f" cuda "$repo/$f"
  done
} >"$work/jobs"

check_one() {  # label mode file
  local label=$1 mode=$2 file=$3 flags=("${common[@]}")
  [[ $mode == cuda ]] && flags+=("${cuda[@]}")
  local log="$work/logs/${mode}_${label//\//_}"
  local status=pass
  if ! "$cxx" "${flags[@]}" -MD -MF "$log.d" -MT x "$file" >"$log.log" 2>&1; then
    status=FAIL
  elif [[ $torch_root != /usr/include ]] && grep -Eq '(^| )/usr/include/(ATen|c10|torch|caffe2)/' "$log.d"; then
    status=FAIL
    { echo "headers taken from the system LibTorch:"
      tr ' \\' '\n\n' <"$log.d" | grep -E '^/usr/include/(ATen|c10|torch|caffe2)/' | head -5; } >>"$log.log"
  fi
  echo "$status" >"$log.status"
}
export -f check_one
export work cxx torch_root
mkdir -p "$work/logs"
# Arrays cannot be exported; pass them through a file the workers source.
declare -p common cuda >"$work/flags.sh"

echo "LibTorch $torch_version headers: $torch_root"
echo "CUDA headers: $cuda_include"
echo "language mode: -std=$std${CXX_STD:+ (from CXX_STD)}"
tr '\t' '\n' <"$work/jobs" | xargs -d '\n' -n 3 -P "$jobs" \
  bash -c 'source "$work/flags.sh"; check_one "$@"' _

failed=0
printf '%-6s %-6s %s\n' result mode file
while IFS=$'\t' read -r label mode _; do
  log="$work/logs/${mode}_${label//\//_}"
  status=$(cat "$log.status")
  printf '%-6s %-6s %s\n' "$status" "$mode" "$label"
  if [[ $status == FAIL ]]; then
    failed=$((failed + 1))
    grep -E 'error|headers taken|^/usr/include' "$log.log" | head -20 | sed 's/^/         /' || true
  fi
done <"$work/jobs"

total=$(wc -l <"$work/jobs")
echo "$((total - failed))/$total passed against LibTorch $torch_version (-std=$std)"
if [[ ${KEEP_LOGS:-0} == 1 ]]; then echo "logs: $work/logs"; fi
[[ $failed -eq 0 ]]
