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

#include <c10/core/Device.h>

namespace lorakeep {

// Peak bytes allocated (and not yet freed) through a device's allocator while
// the probe lives, relative to when it was created.
//
// CPU: the first CPU probe installs a counting wrapper around LibTorch's CPU
// allocator for the rest of the process (one atomic add per allocation when no
// probe is active). CUDA (only where LibTorch has CUDA): the caching
// allocator's own statistics for that device; its peak is reset when the probe
// is created, so concurrent CUDA probes on one device share a baseline.
// Other devices: counts nothing (peak_bytes() returns -1).
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

 private:
  c10::Device device_;
  int slot_ = -1;          // CPU: index into the probe table
  std::int64_t base_ = 0;  // CUDA: allocated bytes at creation
};

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
