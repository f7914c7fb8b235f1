#!/usr/bin/env bash
# Sets up, builds and runs the main job. Until the example training program
# exists this inspects and verifies the real files in ../shared/fixtures.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh" "$root/build"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$root/build" -j "$(nproc)" --target lorakeep_cli

lorakeep=$root/build/src/lorakeep
fixtures=$root/../shared/fixtures
"$lorakeep" inspect "$fixtures/peft/gpt2_lora_seqcls"
"$lorakeep" inspect "$fixtures/safetensors_jl/sharded/model.safetensors.index.json"
"$lorakeep" verify "$fixtures/peft/regression_0.6.1/lora_mlp"
