// lorakeep/memory.h: measuring memory, for reports and for tests that prove
// the bounds of docs/ARCHITECTURE.md with counted bytes rather than timings.
//
//   lorakeep::AllocationProbe probe;        // counts LibTorch CPU allocations from now on
//   lorakeep::RssProbe rss;                 // process resident-set high-water mark from now on
//   ... load ...
//   probe.peak_bytes();  rss.peak_extra_bytes();
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <c10/core/Device.h>

namespace lorakeep {

// Peak bytes allocated (and not yet freed) through a device's allocator while
// the probe lives, relative to when it was created.
//
// CPU: the first CPU probe installs a counting wrapper around LibTorch's CPU
// allocator for the rest of the process (one atomic add per allocation when no
// probe is active). Other devices: the allocator's own statistics for that
// device, where it keeps any: CUDA's caching allocator (where LibTorch has
// CUDA), a c10::DeviceAllocator (LibTorch 2.8 and later), or the
// DeviceMemoryStats registered for the device type. Their peak is reset when
// the probe is created, so concurrent probes on one device share a baseline.
// A device without statistics counts nothing: peak_bytes() returns -1 and
// unmeasured() says why.
//
// Thread-safety: probes may be created, read and destroyed from any thread;
// allocations from every thread count.
class AllocationProbe {
 public:
  explicit AllocationProbe(c10::Device device = c10::Device(c10::kCPU));
  ~AllocationProbe();
  AllocationProbe(const AllocationProbe&) = delete;
  AllocationProbe& operator=(const AllocationProbe&) = delete;

  // Highest (allocated - freed) since creation, in bytes; -1 if the device
  // cannot be measured.
  std::int64_t peak_bytes() const;
  // Bytes allocated since creation, counting frees of anything.
  std::int64_t current_bytes() const;
  const c10::Device& device() const { return device_; }
  // Empty if the probe counts; otherwise why it cannot.
  const std::string& unmeasured() const { return unmeasured_; }

 private:
  c10::Device device_;
  int slot_ = -1;          // CPU: index into the probe table
  std::int64_t base_ = 0;  // other devices: allocated bytes at creation
  std::string unmeasured_;
};

// The statistics of a device allocator that LibTorch offers no way to read
// (an out-of-tree backend on LibTorch 1.x): AllocationProbe reads them for
// devices of its type. Implementations must be thread-safe.
class DeviceMemoryStats {
 public:
  virtual ~DeviceMemoryStats() = default;
  // Bytes allocated and not yet freed on the device.
  virtual std::int64_t allocated_bytes(c10::DeviceIndex index) const = 0;
  // The highest allocated_bytes() since the last reset_peak().
  virtual std::int64_t peak_allocated_bytes(c10::DeviceIndex index) const = 0;
  virtual void reset_peak(c10::DeviceIndex index) = 0;
};

// Makes `stats` the statistics of every device of `type` (replacing any
// registered before). Not owned: it must outlive every probe. Safe to call
// from static initializers.
void register_device_memory_stats(c10::DeviceType type, DeviceMemoryStats* stats);

// For tests of the seed's bug: while it lives, a CPU allocation that would
// take the bytes allocated since its creation past `max_extra_bytes` fails as
// an out-of-memory would on an accelerator (a c10::Error, "out of memory").
// Not nestable. Thread-safety: as AllocationProbe.
class CpuAllocationLimit {
 public:
  explicit CpuAllocationLimit(std::int64_t max_extra_bytes);
  ~CpuAllocationLimit();
  CpuAllocationLimit(const CpuAllocationLimit&) = delete;
  CpuAllocationLimit& operator=(const CpuAllocationLimit&) = delete;
};

// Resident set size of this process now, in bytes (0 if /proc is unreadable).
std::uint64_t current_rss_bytes();
// VmHWM: the highest resident set size since start or the last reset.
std::uint64_t peak_rss_bytes();
// Resets VmHWM to the current RSS (Linux /proc/self/clear_refs); false if the
// kernel refuses.
bool reset_peak_rss();

// The RSS high-water mark over a scope, relative to the RSS when it was
// created. Resets the process's VmHWM on creation: one at a time.
class RssProbe {
 public:
  RssProbe();
  // max(0, VmHWM - RSS at creation); meaningful only if reset() succeeded.
  std::int64_t peak_extra_bytes() const;
  bool valid() const { return valid_; }

 private:
  std::uint64_t base_ = 0;
  bool valid_ = false;
};

}  // namespace lorakeep
