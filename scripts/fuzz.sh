#!/usr/bin/env bash
# Fuzzes lorakeep's parsers with libFuzzer (clang, ASan + UBSan).
#
#   scripts/fuzz.sh TARGET SECONDS   one target, e.g. scripts/fuzz.sh safetensors_header 600
#   scripts/fuzz.sh all SECONDS      every target in turn, SECONDS each
#   scripts/fuzz.sh --smoke          every target for 10 s (what CI runs, via ctest "fuzz_smoke")
#   scripts/fuzz.sh --list           the targets
#
# Targets: safetensors_header shard_index adapter_config trainer_state manifest run_config
#
# Builds tests/fuzz (a standalone project, no LibTorch) in $LORAKEEP_FUZZ_BUILD (default
# build/fuzz). Each target keeps its corpus in <build>/corpus/TARGET, seeded on every run from
# tests/fixtures (or $LORAKEEP_FIXTURES) and tests/fuzz/seeds. A finding is written to
# <build>/artifacts/ and fails the script. Prints one line per target:
#   fuzz TARGET: N executions in S s, corpus C inputs, 0 findings
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
targets=(safetensors_header shard_index adapter_config trainer_state manifest run_config)
build=${LORAKEEP_FUZZ_BUILD:-$root/build/fuzz}
fixtures=${LORAKEEP_FIXTURES:-$root/tests/fixtures}

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

smoke=0
case ${1:-} in
  --list) printf '%s\n' "${targets[@]}"; exit 0 ;;
  --smoke) selected=("${targets[@]}"); seconds=10; smoke=1 ;;
  all) [[ $# -eq 2 ]] || usage; selected=("${targets[@]}"); seconds=$2 ;;
  "") usage ;;
  *)
    [[ $# -eq 2 ]] || usage
    [[ " ${targets[*]} " == *" $1 "* ]] || { echo "fuzz.sh: no target '$1' (try --list)" >&2; exit 2; }
    selected=("$1"); seconds=$2 ;;
esac
[[ $seconds =~ ^[0-9]+$ ]] || usage
[[ -d $fixtures ]] || { echo "fuzz.sh: no fixtures at '$fixtures' (set LORAKEEP_FIXTURES)" >&2; exit 2; }
if ! command -v clang++ > /dev/null; then
  echo "fuzz.sh: clang++ not found (run scripts/install-deps.sh)" >&2
  # --smoke is a ctest: skipped (77) here, failed under CI=true, which must run it.
  [[ $smoke == 1 && ${CI:-} != true ]] && exit 77
  exit 2
fi

cmake -S "$root/tests/fuzz" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ > /dev/null
cmake --build "$build" -j "$(nproc)" > "$build/build.log" 2>&1 || { cat "$build/build.log" >&2; exit 1; }

# The seeds of each target: real files of that kind.
seed() {
  local target=$1 dir=$2
  mkdir -p "$dir"
  case $target in
    safetensors_header) find "$fixtures" -name '*.safetensors' -size -64k -exec cp -t "$dir" {} + ;;
    shard_index) find "$fixtures" -name '*.index.json' -exec cp -t "$dir" {} + ;;
    adapter_config) find "$fixtures" -name 'adapter_config.json' | while read -r f; do
                      cp "$f" "$dir/$(echo "$f" | md5sum | cut -c1-12).json"; done ;;
    trainer_state|manifest|run_config) ;;
  esac
  if [[ -d $root/tests/fuzz/seeds/$target ]]; then cp "$root/tests/fuzz/seeds/$target"/* "$dir"; fi
}

mkdir -p "$build/artifacts"
status=0
for target in "${selected[@]}"; do
  corpus=$build/corpus/$target
  seed "$target" "$corpus"
  dict=$root/tests/fuzz/json.dict
  [[ $target == run_config ]] && dict=$root/tests/fuzz/yaml.dict
  log=$build/$target.log
  set +e
  "$build/fuzz_$target" "$corpus" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -dict="$dict" -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" > "$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  inputs=$(find "$corpus" -type f | wc -l)
  if ((rc != 0)); then
    status=1
    echo "fuzz $target: FINDING after ${execs:-?} executions; log $log, input in $build/artifacts/" >&2
    grep -E '^(==[0-9]+==ERROR|fuzz:|SUMMARY|.*runtime error)' "$log" | head -5 >&2 || true
  else
    echo "fuzz $target: ${execs:-0} executions in $seconds s, corpus $inputs inputs, 0 findings"
  fi
done
exit $status
