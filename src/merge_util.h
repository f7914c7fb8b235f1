// Private helpers shared by the offline merges (merge.cpp, lora merge).
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "lorakeep/tensor_source.h"

namespace lorakeep::detail {

// Elements per computed piece of an offline merge (256 KiB of F32): small
// enough that a piece and its temporaries stay in the CPU's L2 cache between
// the read into it, the arithmetic and the write out of it. Pieces of 4M
// elements went through main memory at every step: a 2 GiB merge-delta took
// 1.5x the time, and every merge 40-60 MiB more RSS.
inline constexpr std::int64_t kPieceElements = std::int64_t{1} << 16;

// Reusable piece buffers. Every temporary of a merge lives in one of these,
// allocated on first use: allocating fresh piece-sized tensors over and over
// fragments the heap, and glibc then keeps hundreds of MiB resident that the
// program no longer uses.
class Scratch {
 public:
  // A flat tensor of `n` elements of `type` in buffer `slot`. Each slot
  // holds one live value at a time: callers give every temporary its own.
  at::Tensor get(int slot, c10::ScalarType type, std::int64_t n);
  // `src` as `type`: itself if it already is, else converted into `slot`.
  at::Tensor as(const at::Tensor& src, c10::ScalarType type, int slot);

 private:
  at::Tensor buffers_[8];
};

// Elements [begin, begin + count) of tensor `name` of `source` as a flat CPU
// tensor of `type` (its stored dtype), read into `*scratch` (grown as needed,
// then reused): the file is read, never mapped, so the RSS does not grow.
at::Tensor piece_view(const TensorSource& source, const std::string& name, c10::ScalarType type, std::int64_t begin,
                      std::int64_t count, at::Tensor* scratch);

}  // namespace lorakeep::detail
