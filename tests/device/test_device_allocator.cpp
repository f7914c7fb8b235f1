// The test device's memory: host blocks, handed out at a fixed offset that
// makes the addresses non-canonical (bit 62 set) so that the host faults on
// any read or write through them; counted (live, peak) and capped.
//
// Its statistics reach lorakeep::AllocationProbe as a real backend's would:
// in LibTorch 2.x it is a c10::DeviceAllocator (getDeviceStats,
// resetPeakStats); 1.x has no such interface, so it registers
// lorakeep::DeviceMemoryStats.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include "lorakeep/memory.h"
#include "test_device.h"

// Only the installed lorakeep headers here (the consumer test compiles this
// file against them): the version checks are spelled out.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#include <c10/core/CachingDeviceAllocator.h>
#define LORAKEEP_TEST_DEVICE_ALLOCATOR_STATS 1
#else
#define LORAKEEP_TEST_DEVICE_ALLOCATOR_STATS 0
#endif
// c10::Allocator::allocate lost its const in 2.3, which added copy_data.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define LORAKEEP_TEST_DEVICE_ALLOCATE_CONST
#define LORAKEEP_TEST_DEVICE_COPY_DATA 1
#else
#define LORAKEEP_TEST_DEVICE_ALLOCATE_CONST const
#define LORAKEEP_TEST_DEVICE_COPY_DATA 0
#endif

namespace lorakeep::test_device {
namespace {

constexpr std::uintptr_t kOffset = std::uintptr_t{1} << 62;
constexpr std::size_t kAlignment = 64;

std::atomic<std::int64_t> g_live{0};
std::atomic<std::int64_t> g_peak{0};
std::atomic<std::int64_t> g_capacity{-1};

void raise_peak(std::int64_t value) {
  std::int64_t seen = g_peak.load();
  while (value > seen && !g_peak.compare_exchange_weak(seen, value)) {
  }
}

// Each block starts with its size, kAlignment bytes before the data.
void release(void* block) {
  if (block == nullptr) return;
  g_live.fetch_sub(static_cast<std::int64_t>(*static_cast<std::uint64_t*>(block)));
  std::free(block);
}

c10::DataPtr allocate_block(std::size_t n) {
  const c10::Device where = device();
  if (n == 0) return c10::DataPtr(nullptr, nullptr, &release, where);
  const auto bytes = static_cast<std::int64_t>(n);
  const std::int64_t live = g_live.fetch_add(bytes) + bytes;
  const std::int64_t cap = g_capacity.load();
  if (cap >= 0 && live > cap) {
    g_live.fetch_sub(bytes);
    TORCH_CHECK_WITH(OutOfMemoryError, false, "test device out of memory: tried to allocate ", n, " bytes with ",
                     live - bytes, " of ", cap, " bytes in use");
  }
  void* block = std::aligned_alloc(kAlignment, (n + 2 * kAlignment - 1) / kAlignment * kAlignment);
  if (block == nullptr) {
    g_live.fetch_sub(bytes);
    TORCH_CHECK_WITH(OutOfMemoryError, false, "test device: the host has no ", n, " bytes to back it");
  }
  raise_peak(live);
  *static_cast<std::uint64_t*>(block) = n;
  void* data = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(block) + kAlignment + kOffset);
  return c10::DataPtr(data, block, &release, where);
}

#if LORAKEEP_TEST_DEVICE_ALLOCATOR_STATS
class Allocator final : public c10::DeviceAllocator {
 public:
  c10::DataPtr allocate(std::size_t n) override { return allocate_block(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(detail::host_address(dest), detail::host_address(src), count);
  }
  bool initialized() override { return true; }
  void emptyCache(c10::MempoolId_t) override {}
  void recordStream(const c10::DataPtr&, c10::Stream) override {}
  c10::CachingDeviceAllocator::DeviceStats getDeviceStats(c10::DeviceIndex) override {
    c10::CachingDeviceAllocator::DeviceStats stats;
    auto& aggregate = stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    aggregate.current = g_live.load();
    aggregate.peak = g_peak.load();
    return stats;
  }
  void resetAccumulatedStats(c10::DeviceIndex) override {}
  void resetPeakStats(c10::DeviceIndex) override { reset_peak(); }
};
#else
class Allocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) LORAKEEP_TEST_DEVICE_ALLOCATE_CONST override { return allocate_block(n); }
#if LORAKEEP_TEST_DEVICE_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(detail::host_address(dest), detail::host_address(src), count);
  }
#endif
};

class Stats final : public DeviceMemoryStats {
 public:
  std::int64_t allocated_bytes(c10::DeviceIndex) const override { return live_bytes(); }
  std::int64_t peak_allocated_bytes(c10::DeviceIndex) const override { return peak_bytes(); }
  void reset_peak(c10::DeviceIndex) override { test_device::reset_peak(); }
};
#endif

struct Registration {
  Registration() {
    static Allocator allocator;
    c10::SetAllocator(c10::DeviceType::PrivateUse1, &allocator);
#if !LORAKEEP_TEST_DEVICE_ALLOCATOR_STATS
    static Stats stats;
    register_device_memory_stats(c10::DeviceType::PrivateUse1, &stats);
#endif
  }
};
const Registration registration;

}  // namespace

std::int64_t live_bytes() { return g_live.load(); }
std::int64_t peak_bytes() { return g_peak.load(); }
void reset_peak() { g_peak.store(g_live.load()); }
void set_capacity(std::int64_t bytes) { g_capacity.store(bytes); }
std::int64_t capacity() { return g_capacity.load(); }

namespace detail {
void* host_address(const void* device_address) {
  if (device_address == nullptr) return nullptr;
  const auto address = reinterpret_cast<std::uintptr_t>(device_address);
  TORCH_CHECK(address & kOffset, "test device: ", device_address, " is not a device address");
  return reinterpret_cast<void*>(address - kOffset);
}
}  // namespace detail

}  // namespace lorakeep::test_device
