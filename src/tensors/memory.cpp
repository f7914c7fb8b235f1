#include "lorakeep/memory.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include "lorakeep/error.h"
#include "tensors/torch_compat.h"

#ifdef LORAKEEP_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif
#if LORAKEEP_TORCH_AT_LEAST(2, 8)
#include <c10/core/CachingDeviceAllocator.h>
#define LORAKEEP_HAS_DEVICE_ALLOCATOR 1
#else
#define LORAKEEP_HAS_DEVICE_ALLOCATOR 0
#endif

namespace lorakeep {
namespace {

constexpr int kMaxProbes = 64;
constexpr std::int64_t kNoLimit = std::numeric_limits<std::int64_t>::max();

struct Slot {
  std::atomic<bool> used{false};
  std::atomic<std::int64_t> base{0};
  std::atomic<std::int64_t> peak{0};
};

// Bytes allocated through the wrapper and not yet freed.
std::atomic<std::int64_t> g_live{0};
std::atomic<int> g_active{0};
Slot g_slots[kMaxProbes];
std::atomic<std::int64_t> g_limit{kNoLimit};
std::atomic<std::int64_t> g_limit_base{0};
std::atomic<bool> g_installed{false};

void raise_peak(std::atomic<std::int64_t>& peak, std::int64_t value) {
  std::int64_t seen = peak.load(std::memory_order_relaxed);
  while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

// Every block starts with this many bytes holding its size: the data
// pointer handed out stays 64-byte aligned, and the DataPtr's context is the
// data pointer itself, as LibTorch's raw_allocate() and raw_deleter() users
// (oneDNN, for one) require.
constexpr std::size_t kHeader = 64;
c10::DeleterFnPtr g_base_free = nullptr;

// Wraps LibTorch's CPU allocator, counting bytes in and out.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) LORAKEEP_ALLOCATE_CONST override {
    const auto bytes = static_cast<std::int64_t>(n);
    const std::int64_t live = g_live.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    const std::int64_t limit = g_limit.load(std::memory_order_relaxed);
    if (limit != kNoLimit && live - g_limit_base.load(std::memory_order_relaxed) > limit) {
      g_live.fetch_sub(bytes, std::memory_order_relaxed);
      TORCH_CHECK(false, "CPU out of memory: tried to allocate ", n, " bytes past the ", limit,
                  "-byte limit (lorakeep::CpuAllocationLimit)");
    }
    if (g_active.load(std::memory_order_relaxed) > 0) {
      for (Slot& s : g_slots) {
        if (s.used.load(std::memory_order_relaxed)) raise_peak(s.peak, live - s.base.load(std::memory_order_relaxed));
      }
    }
    void* block = nullptr;
    try {
      block = base_->raw_allocate(n + kHeader);
    } catch (...) {
      g_live.fetch_sub(bytes, std::memory_order_relaxed);
      throw;
    }
    *static_cast<std::uint64_t*>(block) = n;
    void* data = static_cast<char*>(block) + kHeader;
    return c10::DataPtr(data, data, &CountingAllocator::release, c10::Device(c10::kCPU));
  }

  c10::DeleterFnPtr raw_deleter() const override { return &CountingAllocator::release; }

#if LORAKEEP_ALLOCATOR_HAS_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
#endif

 private:
  static void release(void* data) {
    if (data == nullptr) return;
    void* block = static_cast<char*>(data) - kHeader;
    g_live.fetch_sub(static_cast<std::int64_t>(*static_cast<std::uint64_t*>(block)), std::memory_order_relaxed);
    g_base_free(block);
  }

  c10::Allocator* base_;
};

void install_counting_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    c10::Allocator* base = c10::GetCPUAllocator();
    g_base_free = base->raw_deleter();
    if (g_base_free == nullptr) return;  // an allocator without a raw interface: count nothing
    // Never freed: allocations made through it may outlive every probe.
    static auto* counting = new CountingAllocator(base);
    c10::SetCPUAllocator(counting, /*priority=*/200);
    g_installed = true;
  });
}

std::uint64_t status_kib(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  std::uint64_t value = 0;
  const std::size_t len = std::strlen(field);
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, field, len) == 0 && line[len] == ':') {
      value = std::strtoull(line + len + 1, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return value * 1024;
}

// DeviceMemoryStats by device type (zero-initialized before any static
// initializer runs).
std::atomic<DeviceMemoryStats*> g_device_stats[c10::COMPILE_TIME_MAX_DEVICE_TYPES];

struct DeviceReading {
  std::int64_t current = 0;
  std::int64_t peak = 0;
};

// The allocator statistics of a device other than the CPU (resetting its
// peak first if asked to); false, saying why in *why, if it keeps none that
// lorakeep can read.
bool read_device(const c10::Device& device, bool reset_peak, DeviceReading* out, std::string* why) {
  const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
  const auto type = static_cast<std::size_t>(device.type());
  if (DeviceMemoryStats* stats = type < c10::COMPILE_TIME_MAX_DEVICE_TYPES ? g_device_stats[type].load() : nullptr) {
    if (reset_peak) stats->reset_peak(index);
    out->current = stats->allocated_bytes(index);
    out->peak = stats->peak_allocated_bytes(index);
    return true;
  }
#ifdef LORAKEEP_WITH_CUDA
  if (device.is_cuda()) {
    if (reset_peak) c10::cuda::CUDACachingAllocator::resetPeakStats(index);
    const auto& bytes = c10::cuda::CUDACachingAllocator::getDeviceStats(index).allocated_bytes[0];
    out->current = bytes.current;
    out->peak = bytes.peak;
    return true;
  }
#endif
#if LORAKEEP_HAS_DEVICE_ALLOCATOR
  c10::DeviceAllocator* allocator = nullptr;
  try {
    allocator = dynamic_cast<c10::DeviceAllocator*>(c10::GetAllocator(device.type()));
  } catch (const c10::Error&) {
  }
  if (allocator != nullptr) {
    if (reset_peak) allocator->resetPeakStats(index);
    const auto& bytes = allocator->getDeviceStats(index).allocated_bytes[0];
    out->current = bytes.current;
    out->peak = bytes.peak;
    return true;
  }
  *why = "the " + c10::DeviceTypeName(device.type(), /*lower_case=*/true) +
         " allocator keeps no statistics (it is no c10::DeviceAllocator and registered no "
         "lorakeep::DeviceMemoryStats)";
#else
  *why = "LibTorch " + std::string(detail::torch_version_string()) + " reads no statistics of the " +
         c10::DeviceTypeName(device.type(), /*lower_case=*/true) +
         " allocator, and it registered no lorakeep::DeviceMemoryStats";
#endif
  return false;
}

}  // namespace

void register_device_memory_stats(c10::DeviceType type, DeviceMemoryStats* stats) {
  const auto index = static_cast<std::size_t>(type);
  if (index >= c10::COMPILE_TIME_MAX_DEVICE_TYPES) {
    throw Error(ErrorCode::kInvalidArgument, "register_device_memory_stats: no device type " + std::to_string(index));
  }
  g_device_stats[index].store(stats);
}

AllocationProbe::AllocationProbe(c10::Device device) : device_(device) {
  if (device_.is_cpu()) {
    install_counting_allocator();
    if (!g_installed) {
      unmeasured_ = "LibTorch's CPU allocator offers no raw interface to count through";
      return;
    }
    for (int i = 0; i < kMaxProbes; ++i) {
      bool expected = false;
      if (g_slots[i].used.compare_exchange_strong(expected, true)) {
        const std::int64_t live = g_live.load();
        g_slots[i].base.store(live);
        g_slots[i].peak.store(0);
        slot_ = i;
        g_active.fetch_add(1);
        return;
      }
    }
    throw Error(ErrorCode::kInvalidArgument, "more than 64 allocation probes at once");
  }
  // The allocator's peak is per device: reset it so that it is this probe's
  // (as documented, concurrent probes on one device share it).
  DeviceReading now;
  if (read_device(device_, /*reset_peak=*/true, &now, &unmeasured_)) base_ = now.current;
}

AllocationProbe::~AllocationProbe() {
  if (slot_ >= 0) {
    g_active.fetch_sub(1);
    g_slots[slot_].used.store(false);
  }
}

std::int64_t AllocationProbe::peak_bytes() const {
  if (slot_ >= 0) return g_slots[slot_].peak.load();
  DeviceReading now;
  std::string why;
  if (device_.is_cpu() || !unmeasured_.empty() || !read_device(device_, false, &now, &why)) return -1;
  return std::max<std::int64_t>(0, now.peak - base_);
}

std::int64_t AllocationProbe::current_bytes() const {
  if (slot_ >= 0) return g_live.load() - g_slots[slot_].base.load();
  DeviceReading now;
  std::string why;
  if (device_.is_cpu() || !unmeasured_.empty() || !read_device(device_, false, &now, &why)) return -1;
  return now.current - base_;
}

CpuAllocationLimit::CpuAllocationLimit(std::int64_t max_extra_bytes) {
  install_counting_allocator();
  g_limit_base.store(g_live.load());
  g_limit.store(max_extra_bytes);
}

CpuAllocationLimit::~CpuAllocationLimit() { g_limit.store(kNoLimit); }

std::uint64_t current_rss_bytes() { return status_kib("VmRSS"); }
std::uint64_t peak_rss_bytes() { return status_kib("VmHWM"); }

bool reset_peak_rss() {
  const int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, "5", 1) == 1;
  ::close(fd);
  return ok;
}

RssProbe::RssProbe() {
  valid_ = reset_peak_rss();
  base_ = current_rss_bytes();
}

std::int64_t RssProbe::peak_extra_bytes() const {
  const std::uint64_t peak = peak_rss_bytes();
  return peak > base_ ? static_cast<std::int64_t>(peak - base_) : 0;
}

}  // namespace lorakeep
