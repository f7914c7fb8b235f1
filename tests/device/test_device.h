// lorakeep's test device: an accelerator that runs anywhere. A PrivateUse1
// backend (PyTorch's "open registration" of an out-of-tree device) whose
// memory lives in host RAM, counted and capped at its allocator, and handed
// out at addresses the host cannot dereference: a host read of device memory
// crashes instead of passing. Every copy to, from and within the device goes
// through one kernel that honours strides and storage offsets; every other
// operator runs on the CPU through PyTorch's boxed CPU fallback, and
// convolutions (which have none) through two kernels that do the same.
//
// Linked as an object library (its registrations are static initializers).
// In LibTorch 2.x naming a PrivateUse1 backend makes at::accelerator prefer
// it over CUDA for the whole process: link it only into programs of its own.
//
// What it proves: that lorakeep's device path runs (every copy, add and view
// it makes on a non-CPU device), and the device bytes it allocates, counted
// exactly. What it cannot: streams and their ordering, pinned memory, the
// CUDA caching allocator's rounding and fragmentation (see
// scripts/gpu-check.sh for those).
#pragma once

#include <cstdint>

#include <c10/core/Device.h>

namespace lorakeep::test_device {

// The test device (it has one, index 0): "privateuseone:0" in LibTorch 1.x,
// "lktest:0" in 2.x.
c10::Device device();

// Bytes allocated on the device and not yet freed.
std::int64_t live_bytes();
// The highest live_bytes() since the last reset_peak().
std::int64_t peak_bytes();
void reset_peak();

// Allocations that would take live_bytes() past `bytes` fail as out of
// memory (c10::OutOfMemoryError), as a full GPU does. -1: no limit.
void set_capacity(std::int64_t bytes);
std::int64_t capacity();

// While it lives, the device has `free_bytes` left: capacity = live + free.
class FreeBytes {
 public:
  explicit FreeBytes(std::int64_t free_bytes) : previous_(capacity()) { set_capacity(live_bytes() + free_bytes); }
  ~FreeBytes() { set_capacity(previous_); }
  FreeBytes(const FreeBytes&) = delete;
  FreeBytes& operator=(const FreeBytes&) = delete;

 private:
  std::int64_t previous_;
};

namespace detail {
// The host address behind a device address (for the device's own kernels).
void* host_address(const void* device_address);
}  // namespace detail

}  // namespace lorakeep::test_device
