// Private to the transfer engine: moving host pieces into tensors on an
// accelerator. The CPU path never comes here.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include <ATen/core/Tensor.h>

#include "lorakeep/transfer.h"

namespace lorakeep::detail {

// Applies host pieces to pieces of live tensors on one device. Owns the
// staging it needs, all of it allocated by the factory (before any live
// tensor is written). Not thread-safe.
class DeviceStager {
 public:
  virtual ~DeviceStager() = default;

  // dst_piece (on the device) = / += scale * src_piece (a CPU tensor of any
  // dtype, same shape, at most chunk_bytes in dst_piece's dtype). May return
  // before the device is done, but src_piece is read before it returns: the
  // caller reuses its buffer for the next piece. Sets `written` just before
  // the first operation that writes dst_piece.
  virtual void apply(const at::Tensor& dst_piece, const at::Tensor& src_piece, TransferOp op, double scale,
                     std::atomic<bool>& written) = 0;

  // Waits for the device and orders later work on the device's current
  // stream after every write made here.
  virtual void finish() = 0;
};

// What the pieces bound for one device need.
struct StagingNeeds {
  std::uint64_t piece_bytes = 0;  // largest piece, in the wider of source and target dtype (<= chunk_bytes)
  bool convert = false;           // some source dtype differs from its target's
  bool add = false;               // op is kAdd
};

// The stager for `device`, with all its staging allocated now. CUDA (where
// LibTorch has it): pinned, double-buffered host staging and copies on a side
// stream, so the host converts piece i+1 while the device copies piece i (see
// cuda_stager.cpp for its memory bound). Other devices: synchronous copies
// through one host buffer (only if dtypes differ) and, for kAdd, one device
// buffer. Either way the extra device memory is 0 for kCopy and one piece for
// kAdd.
std::unique_ptr<DeviceStager> make_stager(const c10::Device& device, const StagingNeeds& needs);

// What the stagers share.
//
// The dtype a piece crosses to the device in: the parameter's for a copy
// (converted on the host), the wider of the two for an add (rounded once, on
// the device).
c10::ScalarType piece_type(TransferOp op, const at::Tensor& src_piece, const at::Tensor& dst_piece);

// Writes one piece from the host into dst_piece, `host` (a CPU tensor of
// dst_piece's shape, in piece_type()) holding it: a copy goes straight into
// the live storage; an add goes through `device_buffer` (bytes on the
// device, at least the piece's size) and is added there. Sets `written` just
// before the first write to dst_piece.
void write_piece(const at::Tensor& dst_piece, const at::Tensor& host, const at::Tensor& device_buffer, TransferOp op,
                 double scale, bool non_blocking, std::atomic<bool>& written);

#ifdef LORAKEEP_WITH_CUDA
std::unique_ptr<DeviceStager> make_cuda_stager(const c10::Device& device, const StagingNeeds& needs);
#endif

}  // namespace lorakeep::detail
