#include "tensors/pieces.h"

#include <algorithm>

#include <ATen/ATen.h>

namespace lorakeep::detail {

void for_each_piece(const at::Tensor& t, std::int64_t max_elements,
                    const std::function<void(const at::Tensor& piece, std::int64_t offset)>& fn) {
  // Recursion over views: `offset` is where `dst`'s elements start in C order.
  const std::function<void(const at::Tensor&, std::int64_t)> split = [&](const at::Tensor& dst, std::int64_t offset) {
    const std::int64_t n = dst.numel();
    if (n == 0) return;
    if (dst.is_contiguous()) {
      const at::Tensor flat = dst.view({-1});
      for (std::int64_t e = 0; e < n; e += max_elements)
        fn(flat.narrow(0, e, std::min(max_elements, n - e)), offset + e);
      return;
    }
    if (n <= max_elements) {
      fn(dst, offset);
      return;
    }
    const std::int64_t rows = dst.size(0);
    const std::int64_t row = n / rows;
    if (row > max_elements) {
      for (std::int64_t i = 0; i < rows; ++i) split(dst.select(0, i), offset + i * row);
      return;
    }
    const std::int64_t block = max_elements / row;
    for (std::int64_t i = 0; i < rows; i += block) split(dst.narrow(0, i, std::min(block, rows - i)), offset + i * row);
  };
  split(t, 0);
}

namespace {

at::Tensor allocate(std::uint64_t bytes, bool pinned) {
  return at::empty({static_cast<std::int64_t>(std::max<std::uint64_t>(bytes, 64))},
                   at::TensorOptions(at::kByte).pinned_memory(pinned));
}

}  // namespace

HostStaging::HostStaging(std::uint64_t bytes, bool pinned) : buffer_(allocate(bytes, pinned)) {}

HostStaging HostStaging::window(std::uint64_t offset, std::uint64_t bytes) const {
  HostStaging w;
  w.fixed_ = true;
  if (bytes > 0) w.buffer_ = buffer_.narrow(0, static_cast<std::int64_t>(offset), static_cast<std::int64_t>(bytes));
  return w;
}

at::Tensor HostStaging::view(c10::ScalarType type, at::IntArrayRef shape, bool pinned) {
  std::uint64_t need = c10::elementSize(type);
  for (std::int64_t d : shape) need *= static_cast<std::uint64_t>(d);
  if (need > bytes() || (pinned && !fixed_ && !buffer_.is_pinned())) {
    TORCH_INTERNAL_ASSERT(!fixed_, "a staging window of ", bytes(), " bytes was asked for ", need);
    buffer_ = at::Tensor();  // free the smaller buffer first
    buffer_ = allocate(need, pinned);
  }
  return at::from_blob(buffer_.data_ptr(), shape, at::TensorOptions().dtype(type));
}

std::uint64_t HostStaging::bytes() const { return buffer_.defined() ? static_cast<std::uint64_t>(buffer_.numel()) : 0; }

void HostStaging::reset() { buffer_ = at::Tensor(); }

}  // namespace lorakeep::detail
