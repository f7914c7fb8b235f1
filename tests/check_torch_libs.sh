#!/usr/bin/env bash
# Every program of a build maps LibTorch once: at most one libc10 and one
# libtorch_cpu, both from TORCH_LIB_DIR, the LibTorch CMake was given. Two
# LibTorch installations side by side (Debian's and a download or pip wheel)
# can otherwise link a program against both, which aborts at start-up
# (DispatchKeySet.cpp INTERNAL ASSERT); see cmake/lorakeepTorch.cmake.
#
#   tests/check_torch_libs.sh BUILD_DIR TORCH_LIB_DIR [--self-test]
#
# --self-test: also checks that a wrong TORCH_LIB_DIR is reported.
set -euo pipefail

build=$1
want=$(readlink -f "$2")

programs=()
while IFS= read -r path; do
  [[ $(head -c 4 "$path" | od -An -c | tr -d ' ') == 177ELF ]] && programs+=("$path")
done < <(find "$build" -type f -perm -u+x -not -path '*/CMakeFiles/*' -not -path '*/site-packages/*' -not -name '*.so*' | sort)
if ((${#programs[@]} == 0)); then
  echo "no program found under '$build'"
  exit 1
fi

# The problems of every program against LibTorch directory $1, one per line.
problems() {
  local dir=$1 path lib resolved found
  for path in "${programs[@]}"; do
    resolved=$(ldd "$path" 2>&1 | awk '$2 == "=>" { print $1, $3 }')
    for lib in libc10.so libtorch_cpu.so; do
      found=$(awk -v lib="$lib" 'index($1, lib) == 1 { print $2 }' <<< "$resolved" | sort -u)
      [[ -z $found ]] && continue
      if [[ $(wc -l <<< "$found") -ne 1 ]]; then
        echo "$path maps $lib $(wc -l <<< "$found") times: $(tr '\n' ' ' <<< "$found")"
      elif [[ $found == not || $(dirname "$(readlink -f "$found")") != "$dir" ]]; then
        echo "$path maps $lib from '$found', not from '$dir'"
      fi
    done
  done
}

found=$(problems "$want")
if [[ -n $found ]]; then
  echo "$found"
  exit 1
fi
echo "${#programs[@]} programs under '$build' map at most one libc10 and one libtorch_cpu, from '$want'"
if [[ ${3:-} == --self-test ]]; then
  if [[ -z $(problems /nonexistent) ]]; then
    echo "self-test: a wrong LibTorch directory was not reported"
    exit 1
  fi
  echo "self-test: a wrong LibTorch directory is reported"
fi
