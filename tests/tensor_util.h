// Test helpers over tensors. Kept apart from test_util.h: LibTorch's headers
// define a CHECK macro of their own, so they must come before Catch's.
#pragma once

#include "lorakeep/safetensors.h"

namespace lorakeep::test {

// Detached copies of `tensors`, to compare against later.
NamedTensors clone_all(const NamedTensors& tensors);

// Same names, shapes, dtypes and bytes (NaN payloads and the sign of zero
// included, which torch::equal would not see).
bool bitwise_equal(const NamedTensors& a, const NamedTensors& b);

}  // namespace lorakeep::test
