#include "tensors/device_bytes.h"

namespace lorakeep::detail {

DeviceBytes::DeviceBytes(const std::set<std::string>& devices) {
  if (devices.size() > 1) {
    device_ = "mixed";
    return;
  }
  device_ = devices.empty() ? "cpu" : *devices.begin();
  probe_ = std::make_unique<AllocationProbe>(c10::Device(device_));
}

std::int64_t DeviceBytes::peak() const { return probe_ ? probe_->peak_bytes() : -1; }

std::string DeviceBytes::unmeasured() const {
  if (!probe_) return "the tensors are on several devices";
  return probe_->unmeasured();
}

}  // namespace lorakeep::detail
