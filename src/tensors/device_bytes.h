// The extra bytes a load or a save takes on its tensors' allocator, as the
// reports give them (TransferReport, SaveReport): counted by an
// AllocationProbe when every tensor lives on one device, otherwise -1 with
// the reason. Like AllocationProbe, it counts every allocation on that
// allocator while it lives, other threads' included.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "lorakeep/memory.h"

namespace lorakeep::detail {

class DeviceBytes {
 public:
  // `devices`: the tensors' devices as Device::str() writes them.
  explicit DeviceBytes(const std::set<std::string>& devices);
  // "cpu", "cuda:0", ...; "mixed" for several devices.
  const std::string& device() const { return device_; }
  // The peak extra bytes so far; -1 when they cannot be counted.
  std::int64_t peak() const;
  // Empty when counted; otherwise why not.
  std::string unmeasured() const;

 private:
  std::string device_;
  std::unique_ptr<AllocationProbe> probe_;  // null for several devices
};

}  // namespace lorakeep::detail
