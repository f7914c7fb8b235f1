#include "transfer/device_stager.h"

#include <ATen/ATen.h>

#include "tensors/pieces.h"

namespace lorakeep {
namespace detail {
namespace {

class GenericStager final : public DeviceStager {
 public:
  GenericStager(const c10::Device& device, const StagingNeeds& needs) {
    if (needs.convert) host_ = HostStaging(needs.piece_bytes).window(0, needs.piece_bytes);
    if (needs.add) {
      device_ = at::empty({static_cast<std::int64_t>(std::max<std::uint64_t>(needs.piece_bytes, 64))},
                          at::TensorOptions(at::kByte).device(device));
    }
  }

  void apply(const at::Tensor& dst, const at::Tensor& src, TransferOp op, double scale,
             std::atomic<bool>& written) override {
    const c10::ScalarType type = piece_type(op, src, dst);
    at::Tensor host = src;
    if (src.scalar_type() != type) {
      host = host_.view(type, dst.sizes());
      host.copy_(src);  // dtype conversion on the host
    }
    write_piece(dst, host, device_, op, scale, /*non_blocking=*/false, written);
  }

  void finish() override {}

 private:
  HostStaging host_;  // allocated up front: a fixed window
  at::Tensor device_;
};

}  // namespace

c10::ScalarType piece_type(TransferOp op, const at::Tensor& src_piece, const at::Tensor& dst_piece) {
  return op == TransferOp::kCopy ? dst_piece.scalar_type()
                                 : c10::promoteTypes(src_piece.scalar_type(), dst_piece.scalar_type());
}

void write_piece(const at::Tensor& dst, const at::Tensor& host, const at::Tensor& device_buffer, TransferOp op,
                 double scale, bool non_blocking, std::atomic<bool>& written) {
  if (op == TransferOp::kCopy) {
    written.store(true);
    dst.copy_(host, non_blocking);  // straight into the live storage
    return;
  }
  // A view of the device buffer in the piece's dtype and shape. (Not
  // at::from_blob: without a target device it asks LibTorch where the
  // pointer lives, which LibTorch 1.x answers only for the CPU and CUDA.)
  const std::int64_t bytes = host.numel() * static_cast<std::int64_t>(host.element_size());
  at::Tensor staged = device_buffer.narrow(0, 0, bytes).view(host.scalar_type()).view(dst.sizes());
  staged.copy_(host, non_blocking);
  written.store(true);
  if (host.scalar_type() == dst.scalar_type()) {
    dst.add_(staged, scale);
  } else {
    staged.mul_(scale).add_(dst);
    dst.copy_(staged);
  }
}

std::unique_ptr<DeviceStager> make_stager(const c10::Device& device, const StagingNeeds& needs) {
#ifdef LORAKEEP_WITH_CUDA
  if (device.is_cuda()) return make_cuda_stager(device, needs);
#endif
  return std::make_unique<GenericStager>(device, needs);
}

}  // namespace detail
}  // namespace lorakeep
