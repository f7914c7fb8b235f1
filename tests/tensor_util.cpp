#include "tensor_util.h"

#include <cstring>

#include <ATen/ATen.h>

namespace lorakeep::test {

NamedTensors clone_all(const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, t] : tensors)
    out.emplace_back(name, t.detach().to(at::kCPU, /*non_blocking=*/false, /*copy=*/true));
  return out;
}

bool bitwise_equal(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first) return false;
    const at::Tensor x = a[i].second.cpu().contiguous(), y = b[i].second.cpu().contiguous();
    if (x.sizes() != y.sizes() || x.scalar_type() != y.scalar_type()) return false;
    if (std::memcmp(x.data_ptr(), y.data_ptr(), static_cast<std::size_t>(x.numel()) * x.element_size()) != 0) {
      return false;
    }
  }
  return true;
}

NamedTensors adapter_snapshot(TestNet& net) { return clone_all(adapter_tensors(*net, lora_config())); }

}  // namespace lorakeep::test
