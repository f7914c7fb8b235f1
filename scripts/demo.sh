#!/usr/bin/env bash
# Sets up, builds and runs the main job: examples/char_lm with
# configs/char_lm_lora.yaml (a base model trained on quotations, then
# LoRA-fine-tuned on songs and poems with checkpoints, early stopping and
# load-best-at-end), then examples/apply_delta on its outputs, then the
# end-of-training hook a shell pipeline would call.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh" "$root/build"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$root/build" -j "$(nproc)" --target char_lm apply_delta lorakeep_cli

cd "$root"
echo "== examples/char_lm --config configs/char_lm_lora.yaml"
start=$(date +%s)
build/examples/char_lm --config configs/char_lm_lora.yaml
echo "(the run took $(( $(date +%s) - start )) s)"
echo
echo "== examples/apply_delta: base + delta on the same model"
build/examples/apply_delta --config configs/char_lm_lora.yaml
echo
echo "== the end-of-training hook for pipelines"
echo "\$ lorakeep best runs/char_lm"
build/src/lorakeep best runs/char_lm
echo "\$ lorakeep finalize runs/char_lm --export runs/char_lm/deploy"
build/src/lorakeep finalize runs/char_lm --export runs/char_lm/deploy
