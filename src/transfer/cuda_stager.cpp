// The CUDA leg of the transfer engine. Compiled only where the linked LibTorch
// has CUDA (LORAKEEP_WITH_CUDA); it cannot run on the machines that build
// lorakeep's CI, so its correctness is argued here.
//
// Memory bound. Everything is allocated in the constructor, before the first
// write to a live tensor:
//   host:   two pinned buffers of piece_bytes (<= chunk_bytes) each;
//   device: nothing for kCopy: each H2D copy writes straight into the live
//           parameter's storage; one buffer of piece_bytes for kAdd, reused
//           for every piece (its copy-in and the add that reads it are ordered
//           on the one side stream, so piece i+1 cannot overwrite it before
//           piece i's add ran).
// So the extra device memory is 0 (copy) or one chunk (add), whatever the
// adapter's size: the invariant of docs/ARCHITECTURE.md.
//
// Ordering.
//   1. The side stream first waits for the device's current stream: kernels
//      already queued that read the parameters run before we overwrite them.
//   2. Piece i is converted on the host into pinned buffer i % 2, after the
//      host waited for the event recorded when that buffer's previous copy
//      (piece i - 2) completed; so the host fills one buffer while the device
//      copies from the other, and never overwrites a buffer in flight.
//   3. finish() waits for the side stream, then makes the current stream wait
//      on it as well, so later work sees every write. The destructor waits too
//      (an exception mid-load must not free pinned memory under a copy).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "base/logging.h"
#include "tensors/pieces.h"
#include "transfer/device_stager.h"

namespace lorakeep::detail {
namespace {

class CudaStager final : public DeviceStager {
 public:
  CudaStager(const c10::Device& device, const StagingNeeds& needs)
      : device_(device), stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {
    c10::cuda::CUDAGuard guard(device_);
    const std::uint64_t piece = (std::max<std::uint64_t>(needs.piece_bytes, 64) + 63) / 64 * 64;
    const auto bytes = static_cast<std::int64_t>(piece);
    const HostStaging arena(2 * piece, /*pinned=*/true);
    for (int i = 0; i < 2; ++i) pinned_[i] = arena.window(i * piece, piece);
    if (needs.add) {
      // Allocated while the side stream is current, so the caching allocator
      // ties the block to the stream that uses it.
      c10::cuda::CUDAStreamGuard on_side(stream_);
      device_buffer_ = at::empty({bytes}, at::TensorOptions(at::kByte).device(device_));
    }
    at::cuda::CUDAEvent queued;
    queued.record(c10::cuda::getCurrentCUDAStream(device_.index()));
    queued.block(stream_);
  }

  ~CudaStager() override {
    try {
      stream_.synchronize();
    } catch (const std::exception& e) {
      log_error("waiting for the CUDA copy stream failed: {}", e.what());
    }
  }

  void apply(const at::Tensor& dst, const at::Tensor& src, TransferOp op, double scale,
             std::atomic<bool>& written) override {
    const int slot = static_cast<int>(turn_++ % 2);
    done_[slot].synchronize();  // the copy that last read this buffer is over
    at::Tensor host = pinned_[slot].view(piece_type(op, src, dst), dst.sizes());
    host.copy_(src);  // dtype conversion (or a plain copy) on the host, into pinned memory
    c10::cuda::CUDAStreamGuard on_side(stream_);
    write_piece(dst, host, device_buffer_, op, scale, /*non_blocking=*/true, written);
    done_[slot].record(stream_);
  }

  void finish() override {
    stream_.synchronize();
    at::cuda::CUDAEvent all_done;
    all_done.record(stream_);
    all_done.block(c10::cuda::getCurrentCUDAStream(device_.index()));
  }

 private:
  c10::Device device_;
  c10::cuda::CUDAStream stream_;
  HostStaging pinned_[2];  // two windows of one pinned arena
  at::cuda::CUDAEvent done_[2];
  at::Tensor device_buffer_;
  std::uint64_t turn_ = 0;
};

}  // namespace

std::unique_ptr<DeviceStager> make_cuda_stager(const c10::Device& device, const StagingNeeds& needs) {
  return std::make_unique<CudaStager>(device, needs);
}

}  // namespace lorakeep::detail
