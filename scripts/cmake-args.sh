# Sourced by scripts/test.sh and scripts/demo.sh: the configuration of build/
# (LibTorch 1.13, the test command's first pass), one definition for both, so
# that the demo and the tests share build/'s objects.
#
# Line tables (-g1), not full debug information: LibTorch's templates make
# -g twice as slow to compile, and tests need file:line in traces only.
# shellcheck disable=SC2034  # used by the scripts that source this file
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
            -DLORAKEEP_PYTHON="$root/build/venv/bin/python")
