// The public face of the transfer engine (lorakeep/transfer.h): load_into and
// apply_delta are a LoadPlan (transfer/apply_phase.h) made and applied at
// once; the plan phase is in transfer/plan_phase.cpp, the apply phase in
// transfer/apply_phase.cpp.
#include "lorakeep/transfer.h"

#include <cstdint>
#include <cstdio>
#include <string>

#include "base/text.h"
#include "transfer/apply_phase.h"

namespace lorakeep {

std::string TransferReport::summary() const {
  const std::string device_peak =
      peak_device_bytes >= 0 ? detail::format_bytes(static_cast<std::uint64_t>(peak_device_bytes))
                             : "n/a" + (device_bytes_unmeasured.empty() ? "" : " (" + device_bytes_unmeasured + ")");
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "loaded %zu tensors (%s) from '%s' in %.3f s (%.2f GB/s, checksums %.3f s); extra %s allocator peak "
                "%s (a full temporary copy: %s); extra RSS peak %s",
                tensors, detail::format_bytes(bytes).c_str(), source.c_str(), seconds, gb_per_s, verify_seconds,
                device.c_str(), device_peak.c_str(), detail::format_bytes(naive_device_bytes).c_str(),
                peak_rss_bytes < 0 ? "n/a" : detail::format_bytes(static_cast<std::uint64_t>(peak_rss_bytes)).c_str());
  return buf;
}

TransferReport load_into(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options) {
  detail::LoadPlan plan(targets, source, options);
  return plan.apply();
}

TransferReport load_into(torch::nn::Module& module, const TensorSource& source, const LoadOptions& options) {
  NamedTensors targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  return load_into(targets, source, options);
}

TransferReport apply_delta(torch::nn::Module& base, const TensorSource& delta, double scale, LoadOptions options) {
  options.op = TransferOp::kAdd;
  options.scale = scale;
  return load_into(base, delta, options);
}

}  // namespace lorakeep
