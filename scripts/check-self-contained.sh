#!/usr/bin/env bash
# Fails, listing the lines, if a tracked file refers to the "shared" folder
# beside the repository: a clone has no such folder. Exits 77 (ctest: skipped)
# when the source tree is not a git checkout.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
top=$(git -C "$root" rev-parse --show-toplevel 2> /dev/null || true)
if [[ -z $top || $(cd "$top" && pwd -P) != "$root" ]]; then
  echo "check-self-contained: $root is not a git checkout: skipped" >&2
  exit 77
fi

# Made of two pieces so that this script does not match itself.
pattern='\.\./'"shared"
status=0
git -C "$root" grep -n -E -e "$pattern" || status=$?
case $status in
  0) echo "check-self-contained: the tracked files above refer to a folder outside the repository" >&2; exit 1 ;;
  1) echo "check-self-contained: no tracked file refers to a folder beside the repository" ;;
  *) echo "check-self-contained: git grep failed ($status)" >&2; exit 2 ;;
esac
