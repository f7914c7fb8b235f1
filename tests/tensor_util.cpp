#include "tensor_util.h"

#include <cstring>
#include <sstream>

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/output-archive.h>

#include "tensors/torch_compat.h"

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

std::vector<std::string> optimizer_state_bytes(torch::optim::Optimizer& optimizer) {
  std::vector<std::string> out;
  for (auto& group : optimizer.param_groups()) {
    for (const at::Tensor& param : group.params()) {
      auto it = optimizer.state().find(detail::optimizer_state_key(optimizer, param));
      if (it == optimizer.state().end()) {
        out.emplace_back();
        continue;
      }
      torch::serialize::OutputArchive archive;
      it->second->serialize(archive);
      std::ostringstream bytes;
      archive.save_to(bytes);
      out.push_back(bytes.str());
    }
  }
  return out;
}

}  // namespace lorakeep::test
