// The test device's operators: memory management, views and one copy kernel
// written for it; convolutions computed on the CPU (PyTorch gives them no
// fallback); every other operator runs on the CPU through PyTorch's boxed
// CPU fallback (copies of its device arguments in, results out: all through
// the copy kernel).
//
// The copy kernel honours sizes, strides and storage offsets on both sides
// (PyTorch's example extension copies whole storages from offset 0, which is
// wrong for the narrowed views lorakeep writes through), converts dtypes and
// allocates nothing: a host view of each side's memory, then one CPU copy_.
#include <array>
#include <cstring>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/DispatchKeySet.h>
#include <torch/library.h>

#include "test_device.h"

namespace lorakeep::test_device {
namespace {

constexpr c10::DispatchKeySet kKeys{c10::DispatchKey::PrivateUse1};

bool on_device(const at::Tensor& t) { return t.device().type() == c10::DeviceType::PrivateUse1; }

// A CPU tensor over the same bytes as `t` (which may be on the device).
at::Tensor host_view(const at::Tensor& t) {
  if (!on_device(t)) {
    TORCH_CHECK(t.device().is_cpu(), "test device: cannot copy to or from ", t.device());
    return t;
  }
  return at::from_blob(detail::host_address(t.data_ptr()), t.sizes(), t.strides(),
                       at::TensorOptions().dtype(t.scalar_type()).device(at::kCPU));
}

at::Tensor empty_memory_format(at::IntArrayRef size, c10::optional<at::ScalarType> dtype,
                               c10::optional<at::Layout> layout, c10::optional<at::Device> device,
                               c10::optional<bool> pin_memory, c10::optional<at::MemoryFormat> memory_format) {
  TORCH_CHECK(!layout || *layout == at::kStrided, "test device: strided tensors only");
  return at::detail::empty_generic(size, c10::GetAllocator(c10::DeviceType::PrivateUse1), kKeys,
                                   c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(at::IntArrayRef size, at::IntArrayRef stride, c10::optional<at::ScalarType> dtype,
                         c10::optional<at::Layout> layout, c10::optional<at::Device> device,
                         c10::optional<bool> pin_memory) {
  TORCH_CHECK(!layout || *layout == at::kStrided, "test device: strided tensors only");
  return at::detail::empty_strided_generic(size, stride, c10::GetAllocator(c10::DeviceType::PrivateUse1), kKeys,
                                           c10::dtype_or_default(dtype));
}

// Every copy_ that involves the device: host to device, device to host,
// device to device.
at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  if (dst.numel() == 0) return dst;
  host_view(dst).copy_(host_view(self));
  return dst;
}

const at::Tensor& resize(const at::Tensor& self, at::IntArrayRef size, c10::optional<at::MemoryFormat> format) {
  TORCH_CHECK(!format || *format == at::MemoryFormat::Contiguous || *format == at::MemoryFormat::Preserve,
              "test device: resize_ to contiguous only");
  // As PyTorch's: the same sizes change nothing, strides included (the CPU
  // fallback writes an in-place result back through this into a strided view).
  if (self.sizes() == size) return self;
  c10::TensorImpl* impl = self.unsafeGetTensorImpl();
  std::int64_t numel = 1;
  for (const std::int64_t n : size) numel *= n;
  const auto needed = static_cast<std::size_t>((impl->storage_offset() + numel) * self.element_size());
  c10::StorageImpl* storage = impl->storage().unsafeGetStorageImpl();
  if (numel > 0 && needed > storage->nbytes()) {
    TORCH_CHECK(storage->resizable(), "test device: the storage is not resizable");
    c10::DataPtr fresh = storage->allocator()->allocate(needed);
    if (storage->nbytes() > 0) {
      std::memcpy(detail::host_address(fresh.get()), detail::host_address(storage->data_ptr().get()),
                  storage->nbytes());
    }
    storage->set_data_ptr_noswap(std::move(fresh));
    storage->set_nbytes(needed);
  }
  impl->set_sizes_contiguous(size);
  return self;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return copy_from(self, dst, false);
}

at::Tensor view(const at::Tensor& self, at::IntArrayRef size) { return at::native::view(self, size); }

at::Tensor as_strided(const at::Tensor& self, at::IntArrayRef size, at::IntArrayRef stride,
                      c10::optional<std::int64_t> storage_offset) {
  return at::native::as_strided_tensorimpl(self, size, stride, storage_offset);
}

at::Tensor reshape_alias(const at::Tensor& self, at::IntArrayRef size, at::IntArrayRef stride) {
  return at::native::_reshape_alias(self, size, stride);
}

at::Scalar local_scalar_dense(const at::Tensor& self) { return at::_local_scalar_dense(self.cpu()); }

// The set_ overloads (loading optimizer state, swapping storages).
at::Tensor& set_storage_offset(at::Tensor& self, at::Storage source, std::int64_t storage_offset, at::IntArrayRef size,
                               at::IntArrayRef stride) {
  c10::TensorImpl* impl = self.unsafeGetTensorImpl();
  impl->set_storage_keep_dtype(std::move(source));
  if (stride.empty()) {
    impl->set_sizes_contiguous(size);
    impl->set_storage_offset(storage_offset);
  } else {
    impl->set_sizes_and_strides(size, stride, storage_offset);
  }
  return self;
}

at::Tensor& set_storage(at::Tensor& self, at::Storage source) {
  const auto elements = static_cast<std::int64_t>(source.nbytes() / self.element_size());
  return set_storage_offset(self, std::move(source), 0, {elements}, {});
}

at::Tensor& set_tensor(at::Tensor& self, const at::Tensor& source) {
  if (self.is_same(source)) return self;
  return set_storage_offset(self, source.storage(), source.storage_offset(), source.sizes(), source.strides());
}

// Module::to(device) replaces each parameter's data with its copy on the
// device: allowed between strided CPU and device tensors.
bool compatible_shallow_copy_type(const at::Tensor& self, const at::Tensor& from) {
  return self.layout() == at::kStrided && from.layout() == at::kStrided;
}

// Convolutions: PyTorch sends a backend without kernels of its own to
// convolution_overrideable / convolution_backward_overrideable, which the
// boxed fallback cannot serve (on the CPU they throw too). Computed on the
// CPU here, as the fallback computes every other operator.
at::Tensor convolution(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool transposed,
                       at::IntArrayRef output_padding, std::int64_t groups) {
  c10::optional<at::Tensor> host_bias;
  if (bias && bias->defined()) host_bias = bias->cpu();
  return at::convolution(input.cpu(), weight.cpu(), host_bias, stride, padding, dilation, transposed, output_padding,
                         groups)
      .to(input.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> convolution_backward(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                                    at::IntArrayRef dilation, bool transposed,
                                                                    at::IntArrayRef output_padding, std::int64_t groups,
                                                                    std::array<bool, 3> output_mask) {
  const std::vector<std::int64_t> bias_sizes = {transposed ? weight.size(1) * groups : weight.size(0)};
  auto grads = at::convolution_backward(grad_output.cpu(), input.cpu(), weight.cpu(), at::IntArrayRef(bias_sizes),
                                        stride, padding, dilation, transposed, output_padding, groups, output_mask);
  auto to_device = [&](const at::Tensor& t) { return t.defined() ? t.to(input.device()) : t; };
  return {to_device(std::get<0>(grads)), to_device(std::get<1>(grads)), to_device(std::get<2>(grads))};
}

void fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) { at::native::cpu_fallback(op, stack); }

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", TORCH_FN(empty_memory_format));
  m.impl("empty_strided", TORCH_FN(empty_strided));
  m.impl("_copy_from", TORCH_FN(copy_from));
  m.impl("_copy_from_and_resize", TORCH_FN(copy_from_and_resize));
  m.impl("resize_", TORCH_FN(resize));
  m.impl("view", TORCH_FN(view));
  m.impl("as_strided", TORCH_FN(as_strided));
  m.impl("_reshape_alias", TORCH_FN(reshape_alias));
  m.impl("_local_scalar_dense", TORCH_FN(local_scalar_dense));
  m.impl("set_.source_Storage", TORCH_FN(set_storage));
  m.impl("set_.source_Storage_storage_offset", TORCH_FN(set_storage_offset));
  m.impl("set_.source_Tensor", TORCH_FN(set_tensor));
  m.impl("_has_compatible_shallow_copy_type", TORCH_FN(compatible_shallow_copy_type));
  m.impl("convolution_overrideable", TORCH_FN(convolution));
  m.impl("convolution_backward_overrideable", TORCH_FN(convolution_backward));
}

TORCH_LIBRARY_IMPL(aten, AutogradPrivateUse1, m) {
  m.impl("_has_compatible_shallow_copy_type", TORCH_FN(compatible_shallow_copy_type));
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) { m.fallback(torch::CppFunction::makeFromBoxedFunction<&fallback>()); }

}  // namespace
}  // namespace lorakeep::test_device
