#!/usr/bin/env bash
# Sets up, builds and runs the data-parallel example: examples/ddp (ddp_lora)
# with configs/char_lm_ddp.yaml on 2 processes of this machine, under
# torchrun (Debian's python3-torch), restarts allowed. Rank 0 hosts the c10d
# store; the ranks average their gradients with ProcessGroupGloo (or through
# the store, in a build without gloo's headers), save into one run directory
# and reload the best adapter at the end, each into its own model. The last
# lines: "rank R: reloaded adapter xxh3 HEX" per rank, then the run directory.
# A second run resumes the finished one (and prints the same lines); remove
# runs/char_lm_ddp for a fresh start.
#
#   scripts/demo-ddp.sh [ddp_lora's options, e.g. --grad-sync store]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh" --demo "$root/build"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$root/build" -j "$(nproc)" --target ddp_lora

cd "$root"
world=2
echo "== examples/ddp: torchrun, $world ranks of ddp_lora --config configs/char_lm_ddp.yaml $*"
# torchrun restarts the whole group when a rank dies (at most 3 times), and
# every rank resumes from the newest checkpoint (resume_from_checkpoint: auto
# in the config): kill either rank's process mid-run (pgrep -a ddp_lora;
# kill -9 PID) and the run still ends with the same lines. The workers'
# stdout is theirs; their stderr comes prefixed with [default<rank>]
# (--redirects 2 --tee 2: Debian's torchrun 1.13 cannot parse the default of
# these options under Python 3.11).
exec torchrun --standalone --nproc_per_node=$world --max_restarts=3 --monitor_interval=1 --no_python \
  --redirects 2 --tee 2 --log_dir build/torchrun-logs \
  build/examples/ddp_lora --config configs/char_lm_ddp.yaml "$@"
