#!/usr/bin/env bash
# The one-command GPU proof (docs/gpu-check.md). On a machine with an NVIDIA
# GPU, a CUDA PyTorch for Python (`python3 -c 'import torch'`) and no package
# access: verifies and unpacks the kit of scripts/gpu-kit.sh into a private
# prefix (dpkg -x), builds the lorakeep library against the torch it finds
# (Release, all cores), builds bench/gpu/gpu_check against it, and runs it:
# one table (the seed's bug reproduced and beaten, extra device bytes,
# throughput against cudaMemcpy, apply_delta against the CPU), also as JSON;
# then bench/gpu/device_reload: the naive reload against lorakeep's onto the
# GPU with 1 MiB free, the table BENCHMARKS.md gives for the test device.
#
#   scripts/gpu-check.sh [options]
#     --kit DIR                 the kit (default: build/gpu-kit)
#     --work DIR                everything this script writes (default: build/gpu-check);
#                               kept between runs, so a second build is incremental
#     --json FILE               the table as JSON (default: WORK/gpu.json)
#     --python PY               the Python whose torch to build against (default: python3)
#     --torch-cmake-prefix P    LibTorch's share/cmake (or a ;-list holding it) instead of asking Python
#     --jobs N                  build jobs (default: nproc; env LORAKEEP_GPU_CHECK_JOBS)
#     --adapter-mib N           adapter size (default 1024); --free-mib N: free device memory (default 64)
#     --reload-mib LIST         device_reload's adapter sizes (default 16,64,256,1024)
#     --clean                   start WORK from scratch
#     --no-gpu                  build exactly as on the GPU machine, then stop before the
#                               first CUDA call, printing what would run; exit 0
# Exit: 0 all rows pass (or --no-gpu built), 1 a row failed or a step failed,
# 2 usage; 77 (--no-gpu only) no kit to build from.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kit=$repo/build/gpu-kit
work=$repo/build/gpu-check
json=""
python=""
torch_cmake=""
jobs=${LORAKEEP_GPU_CHECK_JOBS:-$(nproc)}
adapter_mib=1024
free_mib=64
reload_mib=16,64,256,1024
clean=0
no_gpu=0
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    --kit) kit=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --torch-cmake-prefix) torch_cmake=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --adapter-mib) adapter_mib=$2; shift 2 ;;
    --free-mib) free_mib=$2; shift 2 ;;
    --reload-mib) reload_mib=$2; shift 2 ;;
    --clean) clean=1; shift ;;
    --no-gpu) no_gpu=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$work"
work=$(cd "$work" && pwd)
json=${json:-$work/gpu.json}
export PYTHONDONTWRITEBYTECODE=1
t_start=$(date +%s)
say() { printf 'gpu-check [%4ss] %s\n' "$(($(date +%s) - t_start))" "$*"; }
die() { echo "gpu-check: error: $*" >&2; exit 1; }

# --- LibTorch: the Python torch's, unless given ---------------------------
if [[ -z $torch_cmake ]]; then
  if [[ -z $python ]]; then
    python=python3
    # On a build machine (--no-gpu) without a CUDA torch for python3, the
    # 2.x wheel of scripts/install-deps.sh --torch=2.15 serves.
    if ((no_gpu)) && ! python3 -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
      for p in "$repo"/build/torch-*/bin/python; do [[ -x $p ]] && python=$p; done
    fi
  fi
  command -v "$python" >/dev/null || die "no '$python'; pass --python or --torch-cmake-prefix"
  torch_cmake=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null) ||
    die "'$python -c \"import torch\"' fails: install a CUDA PyTorch for it, or pass --torch-cmake-prefix"
  torch_version=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null)
else
  torch_version="(from $torch_cmake)"
fi
torch_dir=""
IFS=';' read -r -a candidates <<<"$torch_cmake"
for c in "${candidates[@]}"; do
  for d in "$c/Torch" "$c/share/cmake/Torch" "$c"; do
    [[ -f $d/TorchConfig.cmake ]] && { torch_dir=$(cd "$d" && pwd); break 2; }
  done
done
[[ -n $torch_dir ]] || die "no TorchConfig.cmake under '$torch_cmake'"
torch_cmake=$(dirname "$torch_dir")
say "LibTorch $torch_version: $torch_dir"

# --- the GPU, before spending minutes on a build ---------------------------
if ((!no_gpu)); then
  gpus=""
  if [[ -n $python ]]; then
    gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || true)
  fi
  if [[ -z $gpus ]] && command -v nvidia-smi >/dev/null; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
  if [[ ${gpus:-0} == 0 ]]; then
    die "no NVIDIA GPU visible here (torch.cuda.device_count() = ${gpus:-unknown}$(command -v nvidia-smi >/dev/null || echo ', no nvidia-smi')); run this on a GPU machine, or pass --no-gpu to build only"
  fi
  say "$gpus CUDA device(s)"
fi

# --- tools -------------------------------------------------------------------
command -v cmake >/dev/null || die "needs cmake (>= 3.18)"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "needs a C++ compiler (g++ >= 11)"
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake_cuda=()
if grep -q 'public/cuda.cmake' "$torch_cmake/Caffe2/Caffe2Config.cmake" 2>/dev/null &&
   grep -q 'set(CAFFE2_USE_CUDA 1)' "$torch_cmake/Caffe2/Caffe2Config.cmake" 2>/dev/null; then
  # A CUDA LibTorch's CMake package enables the CUDA language: it needs nvcc.
  nvcc=$(command -v nvcc || true)
  for d in "${CUDACXX:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
    [[ -z $nvcc && -n $d && -x $d ]] && nvcc=$d
  done
  [[ -n $nvcc ]] || die "this torch is a CUDA build: its TorchConfig.cmake needs the CUDA toolkit's nvcc (none on PATH, CUDACXX, CUDA_HOME or /usr/local/cuda)"
  cmake_cuda=(-DCMAKE_CUDA_COMPILER="$nvcc")
  say "nvcc: $nvcc"
fi

# --- the kit -----------------------------------------------------------------
if [[ ! -f $kit/MANIFEST.sha256 ]]; then
  msg="no kit at '$kit' (make it with scripts/gpu-kit.sh on a Debian 12 machine and copy it here)"
  # Under CI (CI=true, where scripts/test.sh --torch=2.15 makes the kit) a
  # missing kit is a failure, never a skip.
  if ((no_gpu)) && [[ ${CI:-} != true ]]; then echo "gpu-check: skipped: $msg" >&2; exit 77; fi
  die "$msg"
fi
(cd "$kit" && sha256sum --quiet --strict -c MANIFEST.sha256) || die "the kit in '$kit' does not match its MANIFEST.sha256"
for f in "$kit"/*.deb; do
  grep -qF "  $(basename "$f")" "$kit/MANIFEST.sha256" || die "'$f' is not in the kit's manifest"
done
if ((clean)); then rm -rf "$work/prefix" "$work/build" "$work/install" "$work/gpu-build" "$work/run"; fi
prefix=$work/prefix
rm -rf "$prefix"
mkdir -p "$prefix"
for f in "$kit"/*.deb; do
  if command -v dpkg >/dev/null; then
    dpkg -x "$f" "$prefix"
  else  # no dpkg: a .deb is an ar archive holding data.tar.*
    member=$(ar t "$f" | grep '^data\.tar')
    ar p "$f" "$member" | tar -x -C "$prefix" -f - --auto-compress 2>/dev/null ||
      ar p "$f" "$member" | tar -x -C "$prefix" -J -f -
  fi
done
say "kit verified and unpacked: $(ls "$kit"/*.deb | wc -l) packages, $(cat "$kit"/*.deb | wc -c) bytes -> $prefix"

# --- lorakeep, library only ----------------------------------------------------
prefix_path="$prefix/usr;$torch_cmake"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
say "configuring lorakeep (Release, $jobs jobs)"
cmake -S "$repo" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix_path" -DCMAKE_INSTALL_PREFIX="$work/install" "${launcher[@]}" "${cmake_cuda[@]}" \
  -DLORAKEEP_BUILD_TESTS=OFF -DLORAKEEP_BUILD_EXAMPLES=OFF -DLORAKEEP_BUILD_BENCH=OFF -DLORAKEEP_BUILD_CLI=OFF \
  -DLORAKEEP_INSTALL=ON >"$work/configure.log" 2>&1 || { tail -40 "$work/configure.log" >&2; die "configuring lorakeep failed (log: $work/configure.log)"; }
grep -E 'lorakeep: LibTorch' "$work/configure.log" | sed 's/^-- /gpu-check        /'
# Every dependency from the kit, none from the system.
for var in yaml-cpp_DIR spdlog_DIR fmt_DIR Boost_DIR boost_filesystem_DIR nlohmann_json_DIR xxHash_INCLUDE_DIR xxHash_LIBRARY; do
  val=$(sed -n "s|^$var:[A-Z]*=||p" "$work/build/CMakeCache.txt")
  [[ $val == "$prefix"/* ]] || die "$var is '$val', not from the kit in $prefix"
done
say "building lorakeep"
cmake --build "$work/build" -j "$jobs" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; die "building lorakeep failed (log: $work/build.log)"; }
cmake --install "$work/build" >"$work/install.log" 2>&1 || die "installing lorakeep failed (log: $work/install.log)"

# --- the GPU program -------------------------------------------------------------
say "building bench/gpu (gpu_check, device_reload)"
cmake -S "$repo/bench/gpu" -B "$work/gpu-build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/install;$prefix_path" "${launcher[@]}" "${cmake_cuda[@]}" \
  >"$work/gpu-configure.log" 2>&1 || { tail -40 "$work/gpu-configure.log" >&2; die "configuring bench/gpu failed (log: $work/gpu-configure.log)"; }
cmake --build "$work/gpu-build" -j "$jobs" >"$work/gpu-build.log" 2>&1 || { tail -40 "$work/gpu-build.log" >&2; die "building bench/gpu failed (log: $work/gpu-build.log)"; }
say "built in $(($(date +%s) - t_start)) s"

cmd=("$work/gpu-build/gpu_check" --work "$work/run" --json "$json" --adapter-mib "$adapter_mib" --free-mib "$free_mib")
reload_json=$(dirname "$json")/gpu_device_reload.json
reload_cmd=("$work/gpu-build/device_reload" sweep --mib "$reload_mib" --work "$work/run-reload" --json "$reload_json"
  --command "scripts/gpu-check.sh")
if ((no_gpu)); then
  "${cmd[@]}" --dry-run
  [[ -x ${reload_cmd[0]} ]] || die "no ${reload_cmd[0]} after the build"
  say "--no-gpu: built; on a GPU machine this would run:"
  echo "  ${cmd[*]}"
  echo "  ${reload_cmd[*]}"
  say "done, $(($(date +%s) - t_start)) s"
  exit 0
fi
say "running gpu_check (about 1 GiB adapter, written to $work/run)"
rc=0
"${cmd[@]}" || rc=$?
rm -rf "$work/run"
# The same table as BENCHMARKS.md's "reload onto a device with 1 MiB free"
# on the test device, on this GPU.
say "running device_reload (adapters of $reload_mib MiB, naive and lorakeep, 1 MiB free)"
"${reload_cmd[@]}" || rc=1
rm -rf "$work/run-reload"
say "done, $(($(date +%s) - t_start)) s, exit $rc"
if [[ -f $json ]]; then
  echo "to store them as the \"gpu\" and \"gpu_device_reload\" sections of bench/results.json:"
  echo "  python3 bench/results.py --section gpu --from $json"
fi
if [[ -f $reload_json ]]; then echo "  python3 bench/results.py --section gpu_device_reload --from $reload_json"; fi
exit $rc
