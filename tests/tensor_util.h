// Test helpers over tensors. Kept apart from test_util.h: LibTorch's headers
// define a CHECK macro of their own, so they must come before Catch's.
#pragma once

#include <string>
#include <vector>

#include "lorakeep/safetensors.h"
#include "test_model.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

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

// Each parameter's optimizer state, serialized on its own (empty: none yet),
// in parameter order: comparable across optimizers, where the whole archive
// is not (LibTorch 1.x keys it by the parameters' addresses).
std::vector<std::string> optimizer_state_bytes(torch::optim::Optimizer& optimizer);

}  // namespace lorakeep::test
