#!/usr/bin/env bash
# Sets up, builds and runs the data-parallel example: examples/ddp (ddp_lora)
# with configs/char_lm_ddp.yaml on 2 processes of this machine, started with
# torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
# LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Rank 0 hosts the c10d store;
# the ranks average their gradients with ProcessGroupGloo (or through the
# store, in a build without gloo's headers), save into one run directory and
# reload the best adapter at the end, each into its own model. The last lines:
# "rank R: reloaded adapter xxh3 HEX" per rank, then the run directory.
#
#   scripts/demo-ddp.sh [ddp_lora's options, e.g. --grad-sync store]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh" --demo "$root/build"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$root/build" -j "$(nproc)" --target ddp_lora

cd "$root"
world=2
# A free port for rank 0's store, as torchrun --standalone picks one.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== examples/ddp: $world ranks of ddp_lora --config configs/char_lm_ddp.yaml $*"
pids=()
for ((rank = 0; rank < world; ++rank)); do
  RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=$world LOCAL_WORLD_SIZE=$world MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    build/examples/ddp_lora --config configs/char_lm_ddp.yaml "$@" &
  pids+=($!)
done
# As torchrun does: the first rank to fail takes the others down.
status=0
while ((${#pids[@]})); do
  rc=0
  wait -n -p finished "${pids[@]}" || rc=$?
  left=()
  for pid in "${pids[@]}"; do [[ $pid == "$finished" ]] || left+=("$pid"); done
  pids=("${left[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    kill "${pids[@]}" 2> /dev/null || true
  fi
done
exit $status
