// lorakeep/tensor_info.h: what a file says about one tensor, before any data
// is touched. Does not include LibTorch.
//
// Thread-safety: a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lorakeep/dtype.h"

namespace lorakeep {

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<std::int64_t> shape;  // [] is a scalar; a 0 anywhere means no elements
  // Byte range of the data relative to the start of the data section of its
  // file (safetensors' "data_offsets"); 0 for tensors that are not in a
  // safetensors file (a .bin state dict).
  std::uint64_t data_begin = 0;
  std::uint64_t data_end = 0;

  std::uint64_t byte_size() const { return data_end - data_begin; }
  std::int64_t numel() const;
};

// "[3, 5]" for {3, 5}; "[]" for a scalar.
std::string format_shape(const std::vector<std::int64_t>& shape);

}  // namespace lorakeep
