// Memory accounting: an allocation probe counts without breaking the raw
// allocations LibTorch's own kernels make.
#include <c10/core/CPUAllocator.h>
#include <torch/types.h>

#include "lorakeep/memory.h"
#include "test_util.h"

namespace lorakeep {

TEST_CASE("an allocation probe leaves the raw allocation users of LibTorch working", "[lora][memory]") {
  AllocationProbe probe;  // installs the counting CPU allocator
  void* raw = c10::GetCPUAllocator()->raw_allocate(1000);
  c10::GetCPUAllocator()->raw_deallocate(raw);
  const torch::Tensor a = torch::randn({64, 64}).to(torch::kBFloat16);
  CHECK(a.matmul(a).sizes() == torch::IntArrayRef({64, 64}));  // oneDNN's BF16 path allocates raw
  CHECK(probe.peak_bytes() >= 64 * 64 * 2);
}

}  // namespace lorakeep
