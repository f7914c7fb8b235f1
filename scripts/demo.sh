#!/usr/bin/env bash
# Sets up, builds and runs the main job: examples/bert (bert_lora) with
# configs/bert_fortunes.yaml: all-MiniLM-L6-v2 LoRA-fine-tuned in LibTorch to
# tell four of Debian's fortunes files apart, with checkpoints, rotation,
# early stopping on eval_accuracy and load-best-at-end, the PEFT adapter
# exported; then the end-of-training hook a shell pipeline would call, and
# merge-lora of the adapter into the model's own weights file.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh" --demo "$root/build"
# build/ configured exactly as scripts/test.sh's first pass: the tests then
# reuse the demo's objects.
source "$root/scripts/cmake-args.sh"
cmake -S "$root" -B "$root/build" "${cmake_args[@]}" > /dev/null
cmake --build "$root/build" -j "$(nproc)" --target bert_lora lorakeep_cli

cd "$root"
start=$(date +%s)
echo "== examples/bert: bert_lora train --config configs/bert_fortunes.yaml"
build/examples/bert_lora train --config configs/bert_fortunes.yaml
echo
echo "== the end-of-training hook for pipelines"
echo "\$ lorakeep best runs/bert_fortunes"
build/src/lorakeep best runs/bert_fortunes
echo "\$ lorakeep merge-lora --base build/models/all-MiniLM-L6-v2/model.safetensors --adapter runs/bert_fortunes/final_adapter --base-prefix bert. --out runs/bert_fortunes/merged"
rm -rf runs/bert_fortunes/merged
build/src/lorakeep merge-lora --base build/models/all-MiniLM-L6-v2/model.safetensors \
  --adapter runs/bert_fortunes/final_adapter --base-prefix bert. --out runs/bert_fortunes/merged
echo
echo "the demo ran for $(( $(date +%s) - start )) s after the build; the adapter: runs/bert_fortunes/final_adapter"
