#!/usr/bin/env bash
# Lists the C++ files that clang-format (with .clang-format) would change, and
# fails if there is one. Formatting them: clang-format -i FILE...
#
#   scripts/check-format.sh     tracked *.h *.cpp, less tests/fixtures (upstream files)
#
# clang-format: $CLANG_FORMAT, else clang-format-14, else clang-format (other
# versions may format differently). Without one: exit 77 (ctest: skipped),
# except under CI=true.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
tool=${CLANG_FORMAT:-$(command -v clang-format-14 || command -v clang-format || true)}
if [[ -z $tool ]]; then
  echo "check-format: clang-format not found (run scripts/install-deps.sh)" >&2
  [[ ${CI:-} != true ]] && exit 77
  exit 2
fi

top=$(git rev-parse --show-toplevel 2> /dev/null || true)
if [[ -n $top && $(cd "$top" && pwd -P) == "$root" ]]; then
  mapfile -t files < <(git ls-files -- '*.h' '*.hpp' '*.cpp' '*.cc' ':!:tests/fixtures/**')
else
  mapfile -t files < <(find src include tests examples bench -path tests/fixtures -prune -o \
                         -type f \( -name '*.h' -o -name '*.hpp' -o -name '*.cpp' -o -name '*.cc' \) -print | sort)
fi

unformatted=()
for f in "${files[@]}"; do
  "$tool" --style=file "$f" | cmp -s - "$f" || unformatted+=("$f")
done
if ((${#unformatted[@]})); then
  printf '%s\n' "${unformatted[@]}"
  echo "check-format: ${#unformatted[@]} of ${#files[@]} files are not formatted ($("$tool" --version | head -1))" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
