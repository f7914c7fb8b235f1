// Private: the one piece engine and the one host staging buffer behind every
// bounded-memory path (reloads into live tensors, the safetensors writer,
// the offline merges). A tensor of any size, on any device, with any
// strides, moves through host memory in pieces of a bounded number of
// elements, each staged in a buffer that is reused from piece to piece.
#pragma once

#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

namespace lorakeep::detail {

// Calls fn(piece, offset) for consecutive pieces of `t` that together cover
// it once, in C order: each piece is a view of `t` of at most max_elements
// elements (one element more only never: a row longer than max_elements is
// split further), and `offset` is the C-order index of its first element in
// `t`. A contiguous tensor splits into flat runs; a strided one along its
// leading dimensions, so every piece is a regular strided view.
//
//   t = [4, 6] contiguous, max 10  =>  (flat [0:10], 0), (flat [10:20], 10), (flat [20:24], 20)
//   t = [6, 4] transposed view, max 10  =>  (rows 0-1, 0), (rows 2-3, 8), (rows 4-5, 16)
// REQUIRES: max_elements >= 1.
void for_each_piece(const at::Tensor& t, std::int64_t max_elements,
                    const std::function<void(const at::Tensor& piece, std::int64_t offset)>& fn);

// A CPU byte buffer that pieces are staged in. Either it grows on demand
// (the smaller buffer freed before the larger one is allocated, so at most
// one exists) or it is a fixed window of an arena allocated up front, for
// paths that must allocate everything before the first write. Copies share
// the buffer. Not thread-safe: give each thread its own window.
class HostStaging {
 public:
  HostStaging() = default;  // empty; grows on first use
  // Allocates `bytes` now (page-locked when `pinned`); grows if asked for more.
  explicit HostStaging(std::uint64_t bytes, bool pinned = false);

  // A fixed window [offset, offset + bytes) of this buffer; it never grows.
  // Empty when bytes is 0.
  HostStaging window(std::uint64_t offset, std::uint64_t bytes) const;

  // A CPU tensor of `type` and `shape` over the first bytes of the buffer.
  // A growing buffer reallocates when it is too small (or when `pinned` is
  // asked of a pageable one); a fixed window that is too small is a bug.
  at::Tensor view(c10::ScalarType type, at::IntArrayRef shape, bool pinned = false);

  std::uint64_t bytes() const;
  // Frees the buffer (a window: forgets it).
  void reset();

 private:
  at::Tensor buffer_;  // kByte, 1-D
  bool fixed_ = false;
};

}  // namespace lorakeep::detail
