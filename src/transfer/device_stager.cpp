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

  void apply(const at::Tensor& dst, const at::Tensor& src, TransferOp op, double scale) override {
    // Copies convert to the parameter's dtype on the host; adds happen on
    // the device in the wider of the two dtypes, rounded once.
    const c10::ScalarType type = op == TransferOp::kCopy ? dst.scalar_type()
                                                         : c10::promoteTypes(src.scalar_type(), dst.scalar_type());
    at::Tensor host = src;
    if (src.scalar_type() != type) {
      host = host_.view(type, dst.sizes());
      host.copy_(src);  // dtype conversion on the host
    }
    if (op == TransferOp::kCopy) {
      dst.copy_(host);  // straight into the live storage
      return;
    }
    at::Tensor on_device = at::from_blob(device_.data_ptr(), dst.sizes(),
                                         at::TensorOptions().dtype(type).device(dst.device()));
    on_device.copy_(host);
    if (type == dst.scalar_type()) {
      dst.add_(on_device, scale);
    } else {
      on_device.mul_(scale).add_(dst);
      dst.copy_(on_device);
    }
  }

  void finish() override {}

 private:
  HostStaging host_;  // allocated up front: a fixed window
  at::Tensor device_;
};

}  // namespace

std::unique_ptr<DeviceStager> make_stager(const c10::Device& device, const StagingNeeds& needs) {
#ifdef LORAKEEP_WITH_CUDA
  if (device.is_cuda()) return make_cuda_stager(device, needs);
#endif
  return std::make_unique<GenericStager>(device, needs);
}

}  // namespace detail
}  // namespace lorakeep
