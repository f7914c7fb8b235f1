// Test helpers over tensors. Kept apart from test_util.h: LibTorch's headers
// define a CHECK macro of their own, so they must come before Catch's.
#pragma once

#include "lorakeep/safetensors.h"
#include "test_model.h"

namespace lorakeep::test {

// Detached host copies of `tensors` (wherever they live), to compare against
// later.
NamedTensors clone_all(const NamedTensors& tensors);

// Same names, shapes, dtypes and bytes (NaN payloads and the sign of zero
// included, which torch::equal would not see).
bool bitwise_equal(const NamedTensors& a, const NamedTensors& b);

// A detached copy of the adapter of `net` armed with lora_config()
// (test_model.h), to compare against later.
NamedTensors adapter_snapshot(TestNet& net);

}  // namespace lorakeep::test
