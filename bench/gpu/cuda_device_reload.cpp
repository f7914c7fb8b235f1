// device_reload on CUDA: "reload onto a device with 1 MiB free"
// (bench/device/device_reload.h) on a real GPU. The 1 MiB is left by a
// balloon: everything else the driver reports free is taken by allocations
// through LibTorch's caching allocator, whose cache is emptied before and
// after, so that the reload finds only what cudaMemGetInfo says. Device bytes
// are the caching allocator's (lorakeep::AllocationProbe). Built and run by
// scripts/gpu-check.sh.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/torch.h>

#include "device_reload.h"

namespace {

std::int64_t free_bytes() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
  return static_cast<std::int64_t>(free);
}

}  // namespace

int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "device_reload: no CUDA device visible to LibTorch\n");
    return 2;
  }
  static std::vector<at::Tensor> balloon;
  lorakeep::bench::BenchDevice dev;
  dev.device = c10::Device(c10::kCUDA, 0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  char text[256];
  std::snprintf(text, sizeof text, "%s, %.1f GiB", prop.name, static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  dev.description = text;
  dev.leave_free = [device = dev.device](std::int64_t bytes) {
    constexpr std::int64_t kBlock = 2 << 20;  // the caching allocator's granule for large blocks
    c10::cuda::CUDACachingAllocator::emptyCache();
    std::int64_t to_take = free_bytes() - bytes;
    while (to_take >= kBlock) {
      const std::int64_t n = std::min<std::int64_t>(to_take, 1LL << 30) / kBlock * kBlock;
      try {
        balloon.push_back(at::empty({n}, at::TensorOptions(at::kByte).device(device)));
      } catch (const c10::Error&) {
        break;  // what remains is the driver's own reserve
      }
      to_take -= n;
    }
    c10::cuda::CUDACachingAllocator::emptyCache();
  };
  dev.lift = [] {
    balloon.clear();
    c10::cuda::CUDACachingAllocator::emptyCache();
  };
  dev.synchronize = [] { torch::cuda::synchronize(); };
  return lorakeep::bench::run_device_reload(argc, argv, dev);
}
